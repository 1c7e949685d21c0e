"""Judge a run: its songs against the data (music_metrics), its latent units, and how well
it reconstructs songs it never trained on; the results as a table, JSON and a picture.

The songs are read back from their MIDI files, so that what is judged is what is heard.
"""

import collections
import json
import math
import sys
from pathlib import Path

import numpy as np

from music_vae import music_metrics
from music_vae.backend import ops
from music_vae.dataset import SEED, measure_places, read_sample, subset
from music_vae.files import UsageError, atomic_write, figure_pixels, png_writer, text_writer
from music_vae.latent import ENCODE_BATCH, encode
from music_vae.samples import SkipFile, midi_to_song

EVALUATION_SAMPLES = 1000  # data samples the songs are compared with, and held-out ones reconstructed
TRAINING_CHUNK = 256  # training samples read at a time to find each song's copies: 38 MB as uint8
REFERENCE_SONGS = 200  # held-out songs searched for copies too, as the reference


def evaluate_songs(
    encoder, decoder, song_paths, *, data_paths, held_out, training, rule, settings, samples=EVALUATION_SAMPLES,
    seed=SEED, data_folder=None,
):
    """Judge generated MIDI songs against the data, and the model on it.

    Parameters
    ----------
    encoder, decoder : keras.Model
    song_paths : list of Path
        Generated MIDI files; each is read back into onsets (what is heard).
    data_paths : list of Path
        Samples of the data; up to ``samples`` of them, drawn with ``seed``, are used.
    held_out : list of Path
        Samples the model has not trained on (a run's test split, or its validation split
        where it has none): up to ``samples`` of them are reconstructed, and they are the
        reference of originality.
    training : list of Path or None
        The samples the model trained on, every measure searched for the songs' copies
        (originality), and as many as ``held_out`` reconstructed; None where they are not
        known.
    rule : NoteRule
        The run's rule for which cells of a decoded song are notes.
    settings : DataSettings
        The pitch window and measures of the run's songs.
    data_folder : str or Path, optional
        The training samples' folder, whose index.csv says which MIDI file and measures
        each sample holds (see dataset.measure_places); without it, each is a file.

    Returns
    -------
    dict
        music_metrics.compare's results, plus ``latent`` (active units, KL per
        dimension and their sum, in nats), ``reconstruction`` and
        ``training_reconstruction`` (see reconstruction_scores; None without such
        samples), ``originality`` (see originality; None without ``training``) and what
        was compared.
    """
    generated = {}
    stems = collections.Counter(path.stem for path in song_paths)
    for path in song_paths:
        try:
            generated[str(path) if stems[path.stem] > 1 else path.stem] = midi_to_song(path, settings)
        except (SkipFile, OSError) as error:
            print(f"warning: skipped {path}: {error}", file=sys.stderr)
    data_paths = subset(data_paths, samples, seed)
    real = [read_sample(path) for path in data_paths]
    results = music_metrics.compare(generated, real, settings.lowest_pitch)
    z_mean, z_log_var = encode(encoder, real)
    kl = music_metrics.kl_per_dimension(z_mean, z_log_var)
    results["latent"] = {
        "active_units": int(np.sum(kl > music_metrics.ACTIVE_KL)), "of": len(kl),
        "kl_per_song": round(float(np.sum(kl)), 4), "kl_per_dimension": [round(float(value), 5) for value in kl],
    }
    held_out = subset(held_out, samples, seed)
    held_out_songs = [read_sample(path) for path in held_out]
    results["reconstruction"] = reconstruction_scores(encoder, decoder, held_out_songs, rule) if held_out else None
    results["training_reconstruction"] = None
    results["originality"] = None
    if training:
        training_songs = [read_sample(path) for path in subset(training, max(len(held_out), 1), seed)]
        results["training_reconstruction"] = reconstruction_scores(encoder, decoder, training_songs, rule)
        results["originality"] = originality(generated, held_out_songs, training, data_folder)
    results["compared"] = {
        "songs": [str(path) for path in song_paths], "data_samples": len(data_paths), "held_out_samples": len(held_out),
    }
    return results


def reconstruct(encoder, decoder, songs, rule):
    """The songs the model makes of ``songs`` (a non-empty list of (measures, 9216) onsets):
    each encoded to its latent mean and decoded, its notes picked as the run picks a song's.
    Returns (values, notes): (count, measures, 9216) float32 decoder outputs, and the cells
    of each that are notes as uint8 0/1."""
    values, notes = [], []
    for start in range(0, len(songs), ENCODE_BATCH):
        z_mean, _ = encode(encoder, songs[start : start + ENCODE_BATCH])
        decoded = ops.convert_to_numpy(ops.cast(decoder(ops.convert_to_tensor(z_mean), training=False), "float32"))
        for song in decoded:
            kept, threshold = rule.apply(song)
            values.append(song)
            notes.append((kept >= threshold).astype(np.uint8))
    return np.stack(values), np.stack(notes)


def reconstruction_scores(encoder, decoder, songs, rule):
    """How much of ``songs`` their reconstructions (see reconstruct) rebuild: onset
    precision, recall and F1 over all of them (music_metrics.onset_scores), exact, and
    ``within_1_step`` with a step of tolerance; and the number of ``samples``."""
    exact, near = [0, 0, 0], [0, 0, 0]
    for start in range(0, len(songs), ENCODE_BATCH):
        batch = songs[start : start + ENCODE_BATCH]
        _, notes = reconstruct(encoder, decoder, batch, rule)
        for counts, tolerance in ((exact, 0), (near, 1)):
            scores = music_metrics.onset_scores(np.stack(batch), notes, tolerance)
            for position, key in enumerate(("correct_notes", "true_notes", "predicted_notes")):
                counts[position] += scores[key]
    within = music_metrics.scores_of_counts(*near)
    return {
        **music_metrics.scores_of_counts(*exact), "samples": len(songs),
        "within_1_step": {key: within[key] for key in ("precision", "recall", "f1")},
    }


def originality(generated, held_out_songs, training, data_folder=None):
    """How much of each generated song replays its training songs, measure by measure (see
    music_metrics.replayed_measures: at any place and in any key near their own), and the
    same for held-out songs, which no model has seen, as the reference: real songs of one
    collection share some measures and phrases too.

    Parameters
    ----------
    generated : dict
        Song name -> (measures, 9216) onsets.
    held_out_songs : list of np.ndarray
        Samples training never saw; up to REFERENCE_SONGS of them are searched for copies.
    training : list of Path
        Every training sample, read TRAINING_CHUNK at a time.
    data_folder : str or Path, optional
        Their folder, whose index.csv places each sample's measures in its MIDI file.

    Returns
    -------
    dict
        ``songs`` (name -> {"measures": judged, "copied": those that replay a training
        measure, "phrase_copy": bool}), ``generated`` and ``held_out``
        (music_metrics.replay_summary of each, or None), and ``training_samples`` searched.
    """
    rows = [*generated.values(), *held_out_songs[:REFERENCE_SONGS]]
    if not rows:
        return None
    places = measure_places(training, data_folder) if data_folder else np.arange(len(training), dtype=np.int64) << 32
    readable = []

    def chunks():
        for start in range(0, len(training), TRAINING_CHUNK):
            chunk, chunk_places = [], []
            for path, place in zip(training[start : start + TRAINING_CHUNK], places[start : start + TRAINING_CHUNK]):
                try:
                    chunk.append(read_sample(path))
                except (OSError, ValueError) as error:  # gone since training began: it cannot be copied either
                    print(f"warning: skipped {path}: {error}", file=sys.stderr)
                    continue
                readable.append(path)
                chunk_places.append(place + np.arange(len(chunk[-1])))
            if chunk:
                yield np.concatenate(chunk), np.concatenate(chunk_places)

    copied, copies = music_metrics.replayed_measures(np.stack(rows), chunks())
    ours = len(generated)
    phrases = set(music_metrics.phrase_copies(copies))
    songs = {
        name: {
            "measures": int(np.count_nonzero(np.isfinite(measures))), "copied": int(np.count_nonzero(measures == 1)),
            "phrase_copy": position in phrases,
        }
        for position, (name, measures) in enumerate(zip(generated, copied))
    }
    theirs = copies[copies[:, 0] >= ours] - [ours, 0, 0, 0]
    return {
        "songs": songs, "generated": music_metrics.replay_summary(copied[:ours], copies[copies[:, 0] < ours]),
        "held_out": music_metrics.replay_summary(copied[ours:], theirs), "training_samples": len(readable),
    }


def evaluation_image(results):
    """Generated and real distribution of every feature side by side, with their
    overlap, and the KL of each latent dimension, as an RGBA uint8 picture."""
    from matplotlib.figure import Figure

    columns = 4
    rows = len(music_metrics.FEATURES) // columns + 1  # and the KL
    figure = Figure(figsize=(16, 3.5 * rows), dpi=100)
    for position, (feature, (label, _)) in enumerate(music_metrics.FEATURES.items(), start=1):
        axes = figure.add_subplot(rows, columns, position)
        real = np.array(results["data_features"][feature], np.float64)
        ours = np.array([values[feature] for values in results["songs"].values()], np.float64)
        real, ours = real[np.isfinite(real)], ours[np.isfinite(ours)]
        edges = histogram_edges(np.concatenate([real, ours]))
        axes.hist(real, bins=edges, density=True, color="0.6", label="data")
        axes.hist(ours, bins=edges, density=True, histtype="step", linewidth=2, color="tab:red", label="generated")
        overlap = results["features"][feature]["overlap"]
        axes.set_title(
            f"{label}\noverlap {overlap:.2f}" if overlap is not None else f"{label}\noverlap: no values", fontsize=10
        )
        axes.set_yticks([])
        if position == 1:
            axes.legend(fontsize=8)
    axes = figure.add_subplot(rows, columns, rows * columns)
    latent = results["latent"]
    kl = np.sort(latent["kl_per_dimension"])[::-1]
    axes.bar(np.arange(len(kl)), kl, width=1.0, color="tab:blue")
    axes.axhline(music_metrics.ACTIVE_KL, color="tab:red", linewidth=1)
    axes.set_yscale("symlog", linthresh=music_metrics.ACTIVE_KL)
    active = f"{latent['active_units']} of {len(kl)} active (> {music_metrics.ACTIVE_KL})"
    axes.set_title(f"KL per latent dimension, sorted\n{active}, {latent['kl_per_song']:.1f} nats in all", fontsize=10)
    return figure_pixels(figure)


def histogram_edges(values, bins=20):
    """``bins`` + 1 edges of equal bins over ``values``; around them where they are one
    value up to rounding (the entropies of a song and its transposition can differ in their
    last bit), a range numpy cannot split into bins."""
    low, high = (values.min(), values.max()) if len(values) else (0.0, 1.0)
    if high - low <= 1e-9 * max(1.0, abs(high)):
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, bins + 1)


def write_evaluation(folder, results):
    """``folder/evaluation.json`` (everything but the data's per-song values) and
    ``evaluation.png``; returns (the JSON's content, the picture)."""
    saved = json_safe({key: value for key, value in results.items() if key != "data_features"})
    image = evaluation_image(results)
    atomic_write(Path(folder) / "evaluation.json", text_writer(json.dumps(saved, indent=1, allow_nan=False)))
    atomic_write(Path(folder) / "evaluation.png", png_writer(image))
    return saved, image


def json_safe(value):
    """``value`` with NaN (a feature a silent song has none of) as None: JSON has no NaN."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _number(value, digits=2):
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def feature_rows(results):
    """The features as (label, generated mean ± sd, data mean ± sd, overlap) rows of text."""
    rows = []
    for feature, (label, _) in music_metrics.FEATURES.items():
        if feature not in results["features"]:  # an evaluation.json of an earlier version
            continue
        values = results["features"][feature]
        generated = f"{_number(values['generated_mean'])} ± {_number(values['generated_sd'])}"
        data = f"{_number(values['data_mean'])} ± {_number(values['data_sd'])}"
        rows.append((label, generated, data, _number(values["overlap"])))
    return rows


def summary_rows(results):
    """The evaluation's numbers over songs, as (label, value) pairs."""
    latent = results["latent"]
    rows = [
        ("mean overlap with the data", _number(results["mean_overlap"])),
        (
            "diversity between the songs (the data's)",
            f"{_number(results['diversity'])} ({_number(results['data_diversity'])})",
        ),
        ("silent songs", ", ".join(results["silent_songs"]) or "none"),
        (f"active latent units (mean KL > {music_metrics.ACTIVE_KL})", f"{latent['active_units']} of {latent['of']}"),
        # The mean KL bounds what the code can tell about a song: at 4 nats it tells at
        # most about e**4 = 55 songs apart, however many units pass the threshold.
        ("KL per song, all units (nats)", f"{latent['kl_per_song']:.2f}"),
    ]
    for key, whose in (("reconstruction", "held-out"), ("training_reconstruction", "training")):
        scores = results.get(key)  # absent from an evaluation.json of an earlier version
        if scores:
            rows.append((f"reconstruction of {scores['samples']} {whose} samples", reconstruction_text(scores)))
    if not results.get("reconstruction"):
        rows.append(("reconstruction", "no held-out samples"))
    originality = results.get("originality")  # None, or one of an earlier version
    if originality and originality["generated"] and "copied_share" in originality["generated"]:
        ours, theirs = originality["generated"], originality["held_out"]

        def beside(text):  # the held-out songs' figure, the reference
            return f"{text(ours)} (held-out songs: {text(theirs)})" if theirs else text(ours)

        rows += [
            (
                f"copied measures (J >= {music_metrics.COPY_JACCARD}, any place, +-{music_metrics.TRANSPOSITIONS} "
                "semitones)",
                beside(lambda summary: f"{summary['copied_share']:.1%} of {summary['measures']}"),
            ),
            (
                f"songs with a phrase copy ({music_metrics.PHRASE_MEASURES} copied measures in a row)",
                beside(lambda summary: f"{summary['phrase_copies']} of {summary['songs']}"),
            ),
            ("training samples searched for copies", str(originality["training_samples"])),
        ]
    else:
        rows.append(("originality", "the training samples were not at hand"))
    return rows


def reconstruction_text(scores):
    """Reconstruction scores as "precision P, recall R, F1 F (within a step: F1 F)"."""
    names = (("precision", "precision"), ("recall", "recall"), ("F1", "f1"))
    text = ", ".join(f"{name} {_number(scores[key])}" for name, key in names)
    if "within_1_step" in scores:
        text += f" (within a step: F1 {_number(scores['within_1_step']['f1'])})"
    return text


def evaluation_table(results):
    """The evaluation as plain-text tables: features, summary, then song by song."""
    compared = results["compared"]
    lines = [f"{len(results['songs'])} songs against {compared['data_samples']} data samples", ""]
    lines.append(f"  {'feature':40}{'generated':>16}{'data':>16}{'overlap':>9}")
    lines += [
        f"  {label:40}{generated:>16}{data:>16}{overlap:>9}"
        for label, generated, data, overlap in feature_rows(results)
    ]
    lines.append("")
    lines += [f"  {label:54} {value}" for label, value in summary_rows(results)]
    if results["songs"]:
        copies = (results.get("originality") or {}).get("songs", {})
        width = max(len(name) for name in results["songs"]) + 2
        lines += [
            "",
            "  " + "song".ljust(width) + "".join(f"{short:>9}" for _, short in music_metrics.FEATURES.values())
            + ("  copied measures" if copies else ""),
        ]
        for name, values in results["songs"].items():
            cells = "".join(f"{_number(values.get(feature)):>9}" for feature in music_metrics.FEATURES)
            if "copied" in copies.get(name, {}):
                song = copies[name]
                phrase = ", a phrase copy" if song["phrase_copy"] else ""
                cells += f"  {song['copied']} of {song['measures']}{phrase}"
            lines.append("  " + name.ljust(width) + cells)
    return "\n".join(lines)


def evaluation_scalars(results):
    """The evaluation's main numbers, for TensorBoard."""
    scalars = {f"overlap_{feature}": values["overlap"] for feature, values in results["features"].items()}
    scalars.update(
        mean_overlap=results["mean_overlap"], diversity=results["diversity"],
        active_units=results["latent"]["active_units"], kl_per_song=results["latent"]["kl_per_song"],
    )
    for prefix, key in (("reconstruction", "reconstruction"), ("training_reconstruction", "training_reconstruction")):
        for name in ("precision", "recall", "f1"):
            scalars[f"{prefix}_{name}"] = (results.get(key) or {}).get(name)
    copies = (results.get("originality") or {}).get("generated")
    if copies:
        scalars.update(copied_measure_share=copies["copied_share"], phrase_copy_songs=copies["phrase_copies"])
    return {name: float(value) for name, value in scalars.items() if value is not None}


def find_songs(folder, pattern):
    """The MIDI files that ``pattern`` matches: in ``folder`` (a run's generated/midi), or
    where it says when it is absolute."""
    path = Path(pattern)
    try:
        if path.is_absolute():
            found = Path(path.anchor).glob(str(path.relative_to(path.anchor)))
        else:
            found = Path(folder).glob(pattern)
        songs = sorted(song for song in found if song.is_file())
    except (ValueError, IndexError, NotImplementedError):  # "", ".", "/" and other non-patterns
        raise UsageError(f"--songs {pattern!r} is not a pattern of MIDI files, such as 'final_*.mid'") from None
    if not songs:
        raise UsageError(f"no songs match {pattern!r} in {folder}")
    return songs
