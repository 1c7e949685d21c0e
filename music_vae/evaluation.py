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
from music_vae.dataset import SEED, read_sample, subset
from music_vae.files import UsageError, atomic_write, figure_pixels, png_writer, text_writer
from music_vae.latent import ENCODE_BATCH, encode
from music_vae.model import ops
from music_vae.samples import SkipFile, midi_to_song

EVALUATION_SAMPLES = 1000  # data samples the songs are compared with, and held-out ones reconstructed
TRAINING_CHUNK = 256  # training samples read at a time to find each song's nearest: 38 MB as uint8


def evaluate_songs(
    encoder, decoder, song_paths, *, data_paths, held_out, training, rule, settings, samples=EVALUATION_SAMPLES,
    seed=SEED,
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
        Samples the model has not trained on, reconstructed for precision and recall.
    training : list of Path or None
        The samples the model trained on, every one searched for each song's nearest
        (originality); None where they are not known.
    rule : NoteRule
        The run's rule for which cells of a decoded song are notes.
    settings : DataSettings
        The pitch window and measures of the run's songs.

    Returns
    -------
    dict
        music_metrics.compare's results, plus ``latent`` (active units, KL per
        dimension and their sum, in nats), ``reconstruction`` (precision, recall, F1;
        None without held-out samples), ``originality`` (see originality; None
        without ``training``) and what was compared.
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
    results["originality"] = originality(generated, held_out_songs, training) if training else None
    results["compared"] = {
        "songs": [str(path) for path in song_paths], "data_samples": len(data_paths), "held_out_samples": len(held_out),
    }
    return results


def reconstruction_scores(encoder, decoder, songs, rule):
    """Onset precision, recall and F1 of the decoded z_mean of each of ``songs``, with its
    notes picked as the run picks a song's notes."""
    correct = true_notes = predicted_notes = 0
    for start in range(0, len(songs), ENCODE_BATCH):
        batch = songs[start : start + ENCODE_BATCH]
        z_mean, _ = encode(encoder, batch)
        decoded = ops.convert_to_numpy(decoder(ops.convert_to_tensor(z_mean), training=False))
        for song, values in zip(batch, decoded):
            kept, song_threshold = rule.apply(values)
            predicted = kept >= song_threshold
            correct += np.count_nonzero(predicted & (song != 0))
            true_notes += np.count_nonzero(song)
            predicted_notes += np.count_nonzero(predicted)
    return {**music_metrics.scores_of_counts(correct, true_notes, predicted_notes), "samples": len(songs)}


def originality(generated, held_out_songs, training):
    """How near each generated song comes to a song it was trained on: the Jaccard index of
    its nearest training sample, and the same for held-out songs, which no model has seen,
    as the reference (real songs of one collection share some notes too).

    Parameters
    ----------
    generated : dict
        Song name -> (measures, 9216) onsets.
    held_out_songs : list of np.ndarray
        Samples training never saw; up to DIVERSITY_SONGS of them are searched for.
    training : list of Path
        Every training sample, read TRAINING_CHUNK at a time.

    Returns
    -------
    dict
        ``songs`` (name -> {"jaccard", "nearest": the training sample's file name}),
        ``generated`` and ``held_out`` (music_metrics.copy_summary of each, or None), and
        ``training_samples`` searched.
    """
    reference = held_out_songs[: music_metrics.DIVERSITY_SONGS]
    rows = [*generated.values(), *reference]
    if not rows:
        return None
    readable = []

    def chunks():
        for start in range(0, len(training), TRAINING_CHUNK):
            chunk = []
            for path in training[start : start + TRAINING_CHUNK]:
                try:
                    chunk.append(read_sample(path))
                    readable.append(path)
                except (OSError, ValueError) as error:  # gone since training began: it cannot be copied either
                    print(f"warning: skipped {path}: {error}", file=sys.stderr)
            if chunk:
                yield np.stack(chunk)

    jaccard, nearest = music_metrics.nearest_copies(np.stack(rows), chunks())
    ours = jaccard[: len(generated)]
    return {
        "songs": {
            name: {"jaccard": round(float(value), 4), "nearest": Path(readable[index]).name if index >= 0 else None}
            for name, value, index in zip(generated, ours, nearest)
        },
        "generated": music_metrics.copy_summary(ours),
        "held_out": music_metrics.copy_summary(jaccard[len(generated) :]),
        "training_samples": len(readable),
    }


def evaluation_image(results):
    """Generated and real distribution of every feature side by side, with their
    overlap, and the KL of each latent dimension, as an RGBA uint8 picture."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(20, 7), dpi=100)
    for number, (feature, (label, _)) in enumerate(music_metrics.FEATURES.items(), start=1):
        axes = figure.add_subplot(2, 5, number)
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
        if number == 1:
            axes.legend(fontsize=8)
    axes = figure.add_subplot(2, 5, 10)
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
    saved = finite({key: value for key, value in results.items() if key != "data_features"})
    image = evaluation_image(results)
    atomic_write(Path(folder) / "evaluation.json", text_writer(json.dumps(saved, indent=1, allow_nan=False)))
    atomic_write(Path(folder) / "evaluation.png", png_writer(image))
    return saved, image


def finite(value):
    """``value`` with NaN (a feature a silent song has none of) as None: JSON has no NaN."""
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
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
    in_range, latent, scores = results["in_range"], results["latent"], results["reconstruction"]
    low, high = in_range["data_notes_10_90"]
    rows = [
        ("mean overlap with the data", _number(results["mean_overlap"])),
        (
            "diversity between the songs (the data's)",
            f"{_number(results['diversity'])} ({_number(results['data_diversity'])})",
        ),
        (f"songs with {low:.0f}-{high:.0f} notes, the data's 10-90% range", f"{in_range['songs']} of {in_range['of']}"),
        ("silent songs", ", ".join(results["silent_songs"]) or "none"),
        (f"active latent units (mean KL > {music_metrics.ACTIVE_KL})", f"{latent['active_units']} of {latent['of']}"),
        # The mean KL bounds what the code can tell about a song: at 4 nats it tells at
        # most about e**4 = 55 songs apart, however many units pass the threshold.
        ("KL per song, all units (nats)", f"{latent['kl_per_song']:.2f}"),
    ]
    if scores:
        values = [
            f"{name} {_number(scores[key])}"
            for name, key in (("precision", "precision"), ("recall", "recall"), ("F1", "f1"))
        ]
        rows.append((f"reconstruction of {scores['samples']} held-out samples", ", ".join(values)))
    else:
        rows.append(("reconstruction", "no held-out samples"))
    originality = results.get("originality")  # None, or absent from an evaluation.json of an earlier version
    if originality and originality["generated"]:
        ours, theirs = originality["generated"], originality["held_out"]

        def beside(text):  # the held-out songs' figure, the reference
            return f"{text(ours)} (held-out songs: {text(theirs)})" if theirs else text(ours)

        rows += [
            (
                f"near copies of a training sample (Jaccard >= {music_metrics.COPY_JACCARD})",
                beside(lambda copies: f"{copies['copies']} of {copies['songs']}"),
            ),
            (
                f"nearest of {originality['training_samples']} training samples, Jaccard mean / max",
                beside(lambda copies: f"{_number(copies['mean'])} / {_number(copies['max'])}"),
            ),
        ]
    else:
        rows.append(("originality", "the training samples were not at hand"))
    return rows


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
        nearest = (results.get("originality") or {}).get("songs", {})
        width = max(len(name) for name in results["songs"]) + 2
        lines += [
            "",
            "  " + "song".ljust(width) + "".join(f"{short:>9}" for _, short in music_metrics.FEATURES.values())
            + ("  nearest training sample (Jaccard)" if nearest else ""),
        ]
        for name, values in results["songs"].items():
            cells = "".join(f"{_number(values[feature]):>9}" for feature in music_metrics.FEATURES)
            if name in nearest:
                cells += f"  {nearest[name]['nearest']} ({_number(nearest[name]['jaccard'])})"
            lines.append("  " + name.ljust(width) + cells)
    return "\n".join(lines)


def evaluation_scalars(results):
    """The evaluation's main numbers, for TensorBoard."""
    scalars = {f"overlap_{feature}": values["overlap"] for feature, values in results["features"].items()}
    scalars.update(
        mean_overlap=results["mean_overlap"], diversity=results["diversity"],
        active_units=results["latent"]["active_units"], kl_per_song=results["latent"]["kl_per_song"],
    )
    scalars["songs_in_range"] = results["in_range"]["songs"] / max(results["in_range"]["of"], 1)
    for key in ("precision", "recall", "f1"):
        scalars[f"reconstruction_{key}"] = (results["reconstruction"] or {}).get(key)
    copies = (results.get("originality") or {}).get("generated")
    if copies:
        scalars.update(nearest_training_jaccard=copies["mean"], near_copy_share=copies["copies"] / copies["songs"])
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
