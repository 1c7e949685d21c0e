"""Moods as directions in a run's latent space, learned from labelled MIDI files, and whether
steering along them changes the music the way the labels do.

A direction is MusicVAE's attribute vector (Roberts et al., "A Hierarchical Latent Vector
Model for Learning Long-Term Structure in Music", ICML 2018): the mean code of the songs
labelled +1 minus the mean code of those labelled -1. VGMIDI's labels (Ferreira and
Whitehead, "Learning to Generate Music with Sentiment", ISMIR 2019) give valence (negative
to positive) and arousal (calm to intense) of 180 of its pieces; any CSV with a ``file``
column and +1/-1 columns gives its own directions. A song is steered by adding a multiple
of its direction's unit vector, counted in standard deviations of the labelled codes
along it.

With a few hundred labelled windows the directions are noisy, so each is judged by what
does not come from the model: four features of the notes (MOOD_FEATURES), in the labelled
pieces and in songs steered from -2 to +2, with bootstrap intervals over the labelled
files. A direction *moves* a feature where steering changes it beyond its interval, the
same way as the +1 pieces differ from the -1 pieces; a label *works* where it moves one of
its own features (OWN_FEATURES: the issue's for valence and arousal; any, for a user's label).
"""

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from music_vae.files import UsageError, atomic_write, text_writer
from music_vae.latent import encode
from music_vae.samples import STEPS_PER_MEASURE, SkipFile, midi_to_samples
from music_vae.songs import decode, fixed_noise

MOODS_FILE = "moods.json"  # in the run folder
FOLDS = 5  # of the labelled files, for the classifier's cross-validation
RIDGE = 1.0  # the classifier's L2 penalty, on standardized codes
BOOTSTRAPS = 100  # resamplings of the labelled files, for the intervals
STEERED_SONGS = 64  # songs drawn from the run's density and steered, for each amount
AMOUNTS = (-2.0, -1.0, 0.0, 1.0, 2.0)  # standard deviations along a direction
INTERVAL = (2.5, 97.5)  # percentiles of the bootstrap: a 95% interval
SIXTEENTH_STEPS = STEPS_PER_MEASURE // 16  # a sixteenth note in 4/4; a 16th of the measure in other meters
KEY_CLASSES = 3  # pitch classes a song needs to be in a key: one or two fit a major and a minor key alike
# Krumhansl and Kessler's probe-tone ratings (1982) of the 12 pitch classes from the tonic:
# a song's key is the major or minor profile, at any tonic, that its pitch classes correlate with best.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
KEY_PROFILES = np.array([np.roll(profile, tonic) for profile in (MAJOR_PROFILE, MINOR_PROFILE) for tonic in range(12)])
MOOD_FEATURES = {  # name -> what it is; each the ratio of two sums over songs, so that songs can be pooled
    "major_share": "notes in songs whose key is major (share)",
    "mean_pitch": "mean pitch of the notes (MIDI)",
    "notes_per_measure": "notes per measure",
    "short_onsets": "onsets a sixteenth or less after the one before (share)",
}
# The features a label of VGMIDI's is about, the issue's: a direction "moves" a label where it moves one of
# these; a label of the user's own is judged on all four.
OWN_FEATURES = {"valence": ("major_share", "mean_pitch"), "arousal": ("notes_per_measure", "short_onsets")}


# --------------------------------------------------------------------------------------
# The labels and the labelled windows
# --------------------------------------------------------------------------------------


def read_labels(path):
    """The labels of a CSV file with a ``file`` column and one column per label, each cell
    +1, -1 or empty (not labelled): (file names, {label: (files,) float array of +1, -1 and 0}).

    Raises
    ------
    UsageError
        The file cannot be read, has no row, no ``file`` or no label column, a column without
        a name or twice, a row without a file or a file twice, or a value other than +1 or -1.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            header = [name.strip() for name in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UsageError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    if "file" not in header:
        raise UsageError(f"{path} has no 'file' column (its first line: {', '.join(header) or 'empty'})")
    if "" in header:
        raise UsageError(f"{path}: column {header.index('') + 1} has no name (a comma too many in the first line?)")
    twice = [name for name in header if header.count(name) > 1]
    if twice:
        raise UsageError(f"{path} has two columns named {twice[0]!r}")
    names = [name for name in header if name != "file"]
    if not names:
        raise UsageError(f"{path} has no label column beside 'file'")
    if not rows:
        raise UsageError(f"{path} has no row of labels")
    files, labels = [], {name: np.zeros(len(rows)) for name in names}
    for number, (line, row) in enumerate(rows):
        cells = dict(zip(header, (cell.strip() for cell in row)))
        if not cells.get("file"):
            raise UsageError(f"{path}, line {line}: no file named")
        if cells["file"] in files:
            raise UsageError(f"{path}, line {line}: {cells['file']} is labelled twice")
        files.append(cells["file"])
        for name in names:
            text = cells.get(name, "")
            try:
                value = float(text) if text else 0.0
            except ValueError:
                raise UsageError(f"{path}, line {line}: {name} is {text!r}, not a number") from None
            if value not in (1.0, -1.0) and text:
                raise UsageError(f"{path}, line {line}: {name} is {text}; a label is +1, -1 or empty")
            labels[name][number] = value
    return files, labels


def labelled_windows(files, folder, settings):
    """The 16-measure windows (as data_loader.py cuts them) of each of ``files`` in ``folder``:
    (windows (count, measures, 9216) uint8, the index in ``files`` of each window's file,
    [(file, why) of the files that give none]).

    Raises
    ------
    UsageError
        Files are missing from ``folder``, or none gives a window.
    """
    folder = Path(folder)
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        listed = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UsageError(f"{len(missing)} of the labelled files are not in {folder}: {listed}")
    windows, owners, skipped = [], [], []
    for index, name in enumerate(files):
        try:
            samples = midi_to_samples(folder / name, settings).samples
        except (SkipFile, OSError) as error:
            skipped.append((name, str(error)))
            continue
        windows.append(samples)
        owners += [index] * len(samples)
    if not windows:
        measures = settings.measures
        raise UsageError(f"none of the {len(files)} labelled files in {folder} gives a window of {measures} measures")
    return np.concatenate(windows), np.array(owners), skipped


# --------------------------------------------------------------------------------------
# Directions
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Direction:
    """A label's direction in the latent space.

    Attributes
    ----------
    name : str
        The label's column.
    unit : np.ndarray
        (latent,) float32 of length 1: from the mean code of the -1 windows to that of the +1.
    deviation : float
        Standard deviation of the labelled codes along ``unit``: one step of steering.
    """

    name: str
    unit: np.ndarray
    deviation: float

    @classmethod
    def fit(cls, name, codes, labels):
        """The direction of ``codes`` (windows, latent) labelled ``labels`` (windows,) +1, -1 or 0.

        Raises
        ------
        UsageError
            No window is labelled +1, or none -1.
        """
        for value, sign in ((1, "+1"), (-1, "-1")):
            if not np.any(labels == value):
                raise UsageError(f"no window of the labelled files is {sign} in {name}: a direction needs both")
        codes = np.asarray(codes, np.float64)
        difference = codes[labels == 1].mean(axis=0) - codes[labels == -1].mean(axis=0)
        unit = difference / max(np.linalg.norm(difference), 1e-12)
        deviation = float(np.std(codes[labels != 0] @ unit))
        return cls(name, unit.astype(np.float32), max(deviation, 1e-6))

    def steer(self, latents, amount):
        """``latents`` (count, latent) moved ``amount`` standard deviations along the direction."""
        return (np.asarray(latents, np.float32) + np.float32(amount * self.deviation) * self.unit).astype(np.float32)


def steer(latents, directions, amounts):
    """``latents`` moved along each of ``directions`` by its amount in ``amounts`` ({name: sd})."""
    for name, amount in amounts.items():
        latents = directions[name].steer(latents, amount)
    return latents


def file_bootstrap(owners, labels, rng):
    """Window weights (windows,) of one bootstrap of the labelled files: each file drawn with
    replacement as often as it is counted, its windows with it."""
    labelled = np.unique(owners[labels != 0])
    drawn = np.bincount(rng.choice(labelled, len(labelled)), minlength=owners.max() + 1)
    return drawn[owners]


# --------------------------------------------------------------------------------------
# How well the code knows a label: logistic regression, cross-validated by file
# --------------------------------------------------------------------------------------


def logistic_regression(x, y, ridge=RIDGE, iterations=50):
    """Weights (features + 1,) of an L2-penalised logistic regression of ``y`` (0/1) on ``x``
    (count, features), its classes weighted equally (the labels are uneven), by Newton's
    method; the last weight is the intercept, which is not penalised."""
    x = np.hstack([x, np.ones((len(x), 1))])
    balance = np.where(y == 1, 0.5 / max(np.mean(y == 1), 1e-12), 0.5 / max(np.mean(y == 0), 1e-12))
    penalty = ridge * np.eye(x.shape[1])
    penalty[-1, -1] = 0
    weights = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-np.clip(x @ weights, -30, 30)))
        gradient = x.T @ (balance * (p - y)) + penalty @ weights
        hessian = (x * (balance * p * (1 - p))[:, None]).T @ x + penalty + 1e-9 * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return weights


def grouped_folds(owners, labels, folds, seed):
    """The fold of each window (windows,): its file's, the files of each label dealt in turn
    to ``folds`` folds in a shuffled order, so that no file is on both sides of a split."""
    rng = np.random.default_rng(seed)
    fold_of_file = {}
    for value in (1, -1):
        files = np.unique(owners[labels == value])
        for position, file in enumerate(rng.permutation(files)):
            fold_of_file[file] = position % folds
    return np.array([fold_of_file.get(owner, -1) for owner in owners])


def classifier_scores(codes, labels, owners, seed, folds=FOLDS):
    """How well a logistic regression on the codes predicts a label, its folds by file:
    {"accuracy", "balanced_accuracy", "majority" (the accuracy of always saying the larger
    class of the training folds), "windows", "folds"} over the labelled windows; None where a
    class has fewer than two files."""
    labelled = labels != 0
    if min(len(np.unique(owners[labels == value])) for value in (1, -1)) < 2:
        return None  # a class of one file is in one fold only: it would be judged on no file of its own
    x, y = np.asarray(codes, np.float64)[labelled], (labels[labelled] == 1).astype(float)
    fold = grouped_folds(owners[labelled], labels[labelled], folds, seed)
    predicted, majority = np.zeros(len(y)), np.zeros(len(y))
    for number in range(folds):
        test, train = fold == number, fold != number
        if not test.any() or len(np.unique(y[train])) < 2:
            predicted[test], majority[test] = np.nan, np.nan
            continue
        mean, sd = x[train].mean(axis=0), x[train].std(axis=0) + 1e-9
        weights = logistic_regression((x[train] - mean) / sd, y[train])
        scores = np.hstack([(x[test] - mean) / sd, np.ones((test.sum(), 1))]) @ weights
        predicted[test] = scores > 0
        majority[test] = float(np.mean(y[train]) >= 0.5)
    judged = np.isfinite(predicted)
    right = predicted[judged] == y[judged]
    recalls = [np.mean(right[y[judged] == value]) for value in (0, 1) if np.any(y[judged] == value)]
    return {
        "accuracy": float(np.mean(right)), "balanced_accuracy": float(np.mean(recalls)),
        "majority": float(np.mean(majority[judged] == y[judged])), "windows": int(judged.sum()), "folds": folds,
    }


# --------------------------------------------------------------------------------------
# Features that do not come from the model
# --------------------------------------------------------------------------------------


def feature_counts(songs, lowest_pitch):
    """Per song (count, 7): notes, notes in a major key (all or none, by the song's key), notes
    in a key (a song of fewer than KEY_CLASSES pitch classes has none), the sum of their MIDI pitches, measures,
    onsets a sixteenth or less after the one before, onsets after another: the sums whose
    ratios are MOOD_FEATURES."""
    rows, classes = [], []
    for song in songs:
        measure, pitch, step = np.nonzero(np.asarray(song).reshape(len(song), -1, STEPS_PER_MEASURE))
        gaps = np.diff(np.unique(measure * STEPS_PER_MEASURE + step))
        classes.append(np.bincount((pitch + lowest_pitch) % 12, minlength=12))
        short = np.sum(gaps <= SIXTEENTH_STEPS)
        rows.append([len(pitch), 0, 0, np.sum(pitch + lowest_pitch), len(song), short, len(gaps)])
    rows, classes = np.array(rows, np.float64).reshape(-1, 7), np.array(classes, np.float64).reshape(-1, 12)
    keyed = np.count_nonzero(classes, axis=1) >= KEY_CLASSES
    centred = classes - classes.mean(axis=1, keepdims=True)
    profiles = KEY_PROFILES - KEY_PROFILES.mean(axis=1, keepdims=True)
    # The correlation with each profile, but for a positive factor of the song's own: its best is the key.
    major = np.argmax(centred @ (profiles / np.linalg.norm(profiles, axis=1, keepdims=True)).T, axis=1) < 12
    rows[:, 1] = np.where(keyed & major, rows[:, 0], 0)
    rows[:, 2] = np.where(keyed, rows[:, 0], 0)
    return rows


def features_of_counts(counts, weights=None):
    """MOOD_FEATURES of songs whose feature_counts are ``counts``, each counted ``weights`` times."""
    totals = (np.ones(len(counts)) if weights is None else np.asarray(weights, np.float64)) @ counts
    notes, major, keyed, pitches, measures, short, gaps = totals

    def ratio(top, bottom):
        return float(top / bottom) if bottom else math.nan  # no notes: no pitch, no key

    return {
        "major_share": ratio(major, keyed), "mean_pitch": ratio(pitches, notes),
        "notes_per_measure": ratio(notes, measures), "short_onsets": ratio(short, gaps),
    }


def difference(plus, minus):
    """Each of MOOD_FEATURES of ``plus`` minus that of ``minus`` (feature dicts)."""
    return {name: plus[name] - minus[name] for name in MOOD_FEATURES}


def interval(values):
    """The 95% bootstrap interval [low, high] of each feature of ``values`` (a list of feature
    dicts, one a resampling)."""
    return {name: [float(np.nanpercentile([value[name] for value in values], q)) for q in INTERVAL]
            for name in MOOD_FEATURES}


def data_features(counts, labels, owners, seed, boots=BOOTSTRAPS):
    """The features of the +1 and the -1 windows, their difference, and its bootstrap
    interval over the labelled files: which way the label goes in the data."""
    plus, minus = features_of_counts(counts, labels == 1), features_of_counts(counts, labels == -1)
    rng, resampled = np.random.default_rng(seed), []
    for _ in range(boots):
        weights = file_bootstrap(owners, labels, rng)
        resampled.append(difference(
            features_of_counts(counts, weights * (labels == 1)), features_of_counts(counts, weights * (labels == -1))
        ))
    return {"plus": plus, "minus": minus, "difference": difference(plus, minus), "interval": interval(resampled)}


def steered_features(decoder, rule, base, direction, lowest_pitch, amounts=AMOUNTS):
    """{amount: MOOD_FEATURES} of the songs of latent vectors ``base`` steered by ``amounts``
    along ``direction``, their notes picked by ``rule``."""
    return {amount: features_of_counts(song_counts(decoder, rule, direction.steer(base, amount), lowest_pitch))
            for amount in amounts}


def song_counts(decoder, rule, latents, lowest_pitch):
    """feature_counts of the notes (by ``rule``) of the songs of ``latents``."""
    songs = []
    for values in decode(decoder, latents):
        kept, passing = rule.apply(values)
        songs.append(kept >= passing)
    return feature_counts(songs, lowest_pitch)


def steering_effect(decoder, rule, base, whole, steered, codes, labels, owners, lowest_pitch, seed,
                    boots=BOOTSTRAPS):
    """How steering along ``whole``, the Direction of ``codes`` (windows, latent) labelled
    ``labels``, changes the songs of latent vectors ``base``, whose features at each amount
    are ``steered`` (steered_features): {"amount": the far end of AMOUNTS, "change": each
    feature at +amount minus at -amount, "interval": its bootstrap interval (the direction
    fitted again on each resampling of the labelled files, the songs the same), "cosine": the
    median cosine between those directions and ``whole`` (1: the files agree on it)}."""
    far = max(AMOUNTS)

    def change_along(direction):
        high = features_of_counts(song_counts(decoder, rule, direction.steer(base, far), lowest_pitch))
        low = features_of_counts(song_counts(decoder, rule, direction.steer(base, -far), lowest_pitch))
        return difference(high, low)

    rng, resampled, cosines = np.random.default_rng(seed), [], []
    for _ in range(boots):
        repeated = np.repeat(np.arange(len(labels)), file_bootstrap(owners, labels, rng))
        if np.any(labels[repeated] == 1) and np.any(labels[repeated] == -1):  # else it has no direction: left out
            direction = Direction.fit(whole.name, codes[repeated], labels[repeated])
            resampled.append(change_along(direction))
            cosines.append(float(direction.unit @ whole.unit))
    return {"amount": far, "change": difference(steered[far], steered[-far]), "interval": interval(resampled),
            "cosine": float(np.median(cosines))}


def moved_features(name, data, effect, fixed=()):
    """The features of label ``name`` (OWN_FEATURES, or all) that steering moves beyond its
    bootstrap interval (0 outside it) the same way as the +1 pieces differ from the -1 pieces
    (0 outside the data's interval too); ``effect`` is steering_effect's, and the ``fixed``
    features (the note rule sets them) move nothing."""
    moved = []
    for feature in OWN_FEATURES.get(name, tuple(MOOD_FEATURES)):
        low, high = effect["interval"][feature]
        data_low, data_high = data["interval"][feature]
        data_sign = 1 if data_low > 0 else -1 if data_high < 0 else 0
        beyond = low > 0 if data_sign > 0 else high < 0
        if feature not in fixed and data_sign and beyond and np.sign(effect["change"][feature]) == data_sign:
            moved.append(feature)
    return moved


def steered_base(density, seed, temperature=1.0, songs=STEERED_SONGS):
    """The latent vectors (songs, latent) of the songs that are steered to judge a direction:
    drawn from the run's ``density`` at its ``temperature``, as generate draws them."""
    return density.latents(fixed_noise(songs, len(density.mean), seed + 5), temperature)  # seed + 2: calibration


# --------------------------------------------------------------------------------------
# The directions of a run: learned, saved, loaded
# --------------------------------------------------------------------------------------


def learn_directions(encoder, decoder, base, rule, files, labels, folder, settings, seed, boots=BOOTSTRAPS,
                     progress=print):
    """Every label's Direction, and a JSON-ready report of how reliable each is (its counts,
    its classifier's scores, the features of its labelled pieces and of the songs of latent
    vectors ``base`` steered along it, the bootstrap intervals, and the features it moves).
    ``progress(text)`` hears each step.

    Raises
    ------
    UsageError
        As labelled_windows, or a label has no +1 or no -1 window (said before the long work).
    """
    windows, owners, skipped = labelled_windows(files, folder, settings)
    for name, why in skipped:
        progress(f"skipped {name}: {why}")
    for name, file_labels in labels.items():
        for value in (1, -1):
            if not np.any(file_labels[owners] == value):
                raise UsageError(f"no window of the labelled files is {value:+d} in {name}: a direction needs both")
    codes, _ = encode(encoder, list(windows))
    counts = feature_counts(windows, settings.lowest_pitch)
    # The per-song rule gives every song the data's note count: notes per measure cannot move.
    fixed = ("notes_per_measure",) if rule.threshold is None and rule.method == "per-song" else ()
    directions, report = {}, {}
    for name, file_labels in labels.items():
        window_labels = file_labels[owners]
        direction = Direction.fit(name, codes, window_labels)
        data = data_features(counts, window_labels, owners, seed, boots)
        steered = steered_features(decoder, rule, base, direction, settings.lowest_pitch)
        effect = steering_effect(
            decoder, rule, base, direction, steered, codes, window_labels, owners, settings.lowest_pitch, seed, boots
        )
        sides = (("+1", 1), ("-1", -1))
        report[name] = {
            "unit": direction.unit.tolist(), "deviation": direction.deviation,
            "files": {sign: len(np.unique(owners[window_labels == value])) for sign, value in sides},
            "windows": {sign: int(np.sum(window_labels == value)) for sign, value in sides},
            "classifier": classifier_scores(codes, window_labels, owners, seed),
            "data": data,
            "steered": {str(amount): values for amount, values in steered.items()},
            "effect": effect, "fixed_by_note_rule": list(fixed),
            "moves": moved_features(name, data, effect, fixed),
        }
        directions[name] = direction
        progress(summary_line(name, report[name]))
    return directions, {"skipped": skipped, "windows": len(windows), "directions": report}


def summary_line(name, report):
    """One line of a direction's report: its counts, its classifier against the majority, and what it moves."""
    classifier = report["classifier"]
    own = "/".join(OWN_FEATURES.get(name, ("any feature",)))
    moves = ", ".join(report["moves"]) or f"none of {own} beyond the bootstrap interval"
    predicts = "too few files on one side to cross-validate" if classifier is None else (
        f"the code predicts it with accuracy {classifier['accuracy']:.2f} (balanced "
        f"{classifier['balanced_accuracy']:.2f}) against {classifier['majority']:.2f} for the majority class"
    )
    return (
        f"{name}: {report['files']['+1']} files +1 / {report['files']['-1']} -1 "
        f"({report['windows']['+1']} / {report['windows']['-1']} windows); {predicts}; steering moves {moves}"
    )


def save_directions(run_path, report):
    """Write RUN_DIR/moods.json."""
    atomic_write(Path(run_path) / MOODS_FILE, text_writer(json.dumps(report, indent=1)))


def load_directions(run_path, epochs_done, latent):
    """({name: Direction}, the report) of RUN_DIR/moods.json; ({}, None) where the run has none.

    Raises
    ------
    UsageError
        The file cannot be read, or was learned from other models than the run's now
        (``epochs_done`` epochs, ``latent`` dimensions): a resumed run needs them learned again.
    """
    path = Path(run_path) / MOODS_FILE
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        directions = {
            name: Direction(name, np.asarray(values["unit"], np.float32), float(values["deviation"]))
            for name, values in report["directions"].items()
        }
        learned_at = report["epochs_done"]
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UsageError(f"cannot read {path} ({type(error).__name__}: {error}): learn them again with moods") from None
    if learned_at != epochs_done or any(direction.unit.shape != (latent,) for direction in directions.values()):
        raise UsageError(
            f"the mood directions in {path} were learned from the models of epoch {learned_at}, and the run has "
            f"{epochs_done} epochs now: learn them again with music_generator.py moods"
        )
    return directions, report


def steering_text(steering):
    """{name: standard deviations} as "valence +1.0 sd, arousal -2.0 sd"."""
    return ", ".join(f"{name} {amount:+.1f} sd" for name, amount in steering.items())


def steering_notes(directions, report, steering, run_name):
    """``steering`` ({name: sd}) checked against the run's ``directions``, and a note for each
    direction that moved none of its features when it was learned.

    Raises
    ------
    UsageError
        A name the run has no direction of.
    """
    for name in steering:
        if name not in directions:
            has = f"it has {', '.join(sorted(directions))}" if directions else (
                "it has none: learn them with music_generator.py moods --run RUN --labels CSV")
            raise UsageError(f"run {run_name} has no mood direction {name!r}; {has}")
    return [
        f"note: {name} moved none of {'/'.join(OWN_FEATURES.get(name, ('its features',)))} beyond the bootstrap "
        f"interval when it was learned ({MOODS_FILE}); it is applied as asked"
        for name in steering if not report["directions"][name]["moves"]
    ]
