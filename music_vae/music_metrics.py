"""Numbers for what the paper could only describe: how much a song repeats itself ("the
same music in all measures"), how alike the songs are ("songs sounded very similar"),
and how far their features lie from those of the training data.

Songs are onset arrays in the sample format (music_vae/samples.py): (measures, 9216), cell
``pitch * 96 + step`` non-zero where a note starts. Everything here is numpy;
music_vae/evaluation.py puts it together with the model.

The distance between the generated and the real songs is the overlapping area of Yang and
Lerch, "On the evaluation of generative models in music" (Neural Computing and
Applications, 2018), applied to the distributions of each feature's values (they apply it
to distances between songs as well): the area shared by the two Gaussian kernel
densities (Scott's bandwidth, as scipy's ``gaussian_kde``), 1 where they are the same, 0
where they share nothing.

Scale and groove consistency are MusPy's (Dong et al., ISMIR 2020 late-breaking demo),
computed here on the onsets: the share of notes in the song's best-fitting major or minor
scale, and one minus the mean share of the 96 step positions whose onset differs between
neighbouring measures. Originality is the Jaccard index of a song and its nearest training
sample: 1 for a copy.
"""

import numpy as np

from music_vae.samples import LOWEST_PITCH, MEASURES_PER_SAMPLE, PITCHES, STEPS_PER_MEASURE

SIXTEENTH_STEPS = STEPS_PER_MEASURE // 16  # 6 steps: one sixteenth note in 4/4
REPEAT_JACCARD = 0.8  # two measures whose onsets overlap this much count as a repeat
ACTIVE_KL = 0.01  # nats: a latent dimension whose mean KL is above this carries information
DIVERSITY_SONGS = 200  # real songs compared pair by pair: 20,000 pairs, 120 MB of cells
COPY_JACCARD = 0.5  # a song that shares this much with a training sample is (near) a copy of it
MAJOR_SCALE = np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1], bool)  # pitch classes from the root
MINOR_SCALE = np.roll(MAJOR_SCALE, -9)  # natural minor: the major scale from its sixth degree
# The 24 major and minor scales as a (24, 12) 0/1 matrix: row r's pitch classes.
SCALES = np.array([np.roll(scale, root) for scale in (MAJOR_SCALE, MINOR_SCALE) for root in range(12)], np.float64)

# The per-song features: name -> (label with its unit, short column heading).
FEATURES = {
    "notes_per_measure": ("notes per measure", "notes/m"), "empty_measures": ("empty measures", "empty"),
    "pitch_range": ("pitch range (semitones)", "range"),
    "pitch_class_entropy": ("pitch-class entropy (bits)", "entropy"),
    "polyphony": ("polyphony (onsets per onset step)", "poly"),
    "sixteenth_grid": ("onsets on the 16th-note grid (share)", "grid16"),
    "repeated_measures": ("repeated measure pairs (share)", "repeats"),
    "scale_consistency": ("in the best major/minor scale (share)", "scale"),
    "groove_consistency": ("groove consistency (1 - onset change)", "groove"),
}


def onset_cells(song):
    """``song`` as a (measures, pitches, steps) bool array of onsets."""
    song = np.asarray(song)
    return (song != 0).reshape(len(song), PITCHES, STEPS_PER_MEASURE)


def jaccard_matrix(rows):
    """Jaccard index |A & B| / |A | B| of every pair of rows of a 2-D 0/1 array, as an
    (n, n) array; two empty rows are equal sets, with index 1."""
    rows = (np.asarray(rows) != 0).astype(np.float32)
    shared = rows @ rows.T  # exact: counts stay far below float32's 2**24
    sizes = np.diag(shared)
    return _jaccard(shared, sizes, sizes)


def _jaccard(shared, sizes, other_sizes):
    """Jaccard indices from the (n, m) counts of shared cells and the sets' sizes."""
    union = sizes[:, None] + other_sizes[None, :] - shared
    return np.divide(shared, union, out=np.ones_like(shared, np.float64), where=union > 0)


def nearest_copies(songs, references):
    """For every song, the Jaccard index of the reference song it shares most with, and
    that one's position among the references.

    Parameters
    ----------
    songs : array_like
        (n, ...) onsets; each song is taken as one flat set of cells.
    references : iterable of array_like
        Chunks of (m_i, ...) reference songs (a training set, read a chunk at a time).

    Returns
    -------
    jaccard : np.ndarray
        (n,) float64; 0 where there is no reference.
    nearest : np.ndarray
        (n,) int64 positions in the references taken in order; -1 where there is none.
    """
    songs = np.asarray(songs).reshape(len(songs), -1) != 0
    best, nearest = np.zeros(len(songs)), np.full(len(songs), -1, np.int64)
    # Only the cells where some song has a note can be shared: a few thousand of 147,456.
    cells = np.flatnonzero(songs.any(axis=0))
    ours, sizes = songs[:, cells].astype(np.float32), songs.sum(axis=1).astype(np.float32)
    seen = 0
    for chunk in references:
        chunk = np.asarray(chunk).reshape(len(chunk), -1) != 0
        shared = ours @ chunk[:, cells].astype(np.float32).T
        jaccard = _jaccard(shared, sizes, chunk.sum(axis=1).astype(np.float32))
        better = jaccard.max(axis=1, initial=0) > best
        best[better] = jaccard.max(axis=1, initial=0)[better]
        nearest[better] = seen + jaccard.argmax(axis=1)[better]
        seen += len(chunk)
    return best, nearest


def copy_summary(jaccard):
    """Mean and highest Jaccard index of songs with their nearest training sample, and the
    number of songs at COPY_JACCARD or more (near copies); None for no song."""
    jaccard = np.asarray(jaccard, np.float64)
    if not len(jaccard):
        return None
    return {
        "mean": float(jaccard.mean()), "max": float(jaccard.max()),
        "copies": int(np.count_nonzero(jaccard >= COPY_JACCARD)), "songs": len(jaccard),
    }


def song_features(song, lowest_pitch=LOWEST_PITCH):
    """The FEATURES of one song, as a dict of floats.

    Parameters
    ----------
    song : np.ndarray
        (measures, 9216) onsets.
    lowest_pitch : int
        MIDI note of pitch row 0, for the pitch classes.

    Returns
    -------
    dict
        Pitch range, pitch-class entropy, polyphony, the 16th-grid share, scale and groove
        consistency are NaN for a silent song, which has none. Repeated measure pairs are the share of the song's
        pairs of measures whose onsets have a Jaccard index of at least REPEAT_JACCARD
        (two silent measures repeat each other).
    """
    cells = onset_cells(song)
    measures = len(cells)
    measure_index, rows, steps = np.nonzero(cells)
    pairs = jaccard_matrix(cells.reshape(measures, -1))[np.triu_indices(measures, k=1)]
    features = {
        "notes_per_measure": len(rows) / measures,
        "empty_measures": float(measures - np.count_nonzero(cells.any(axis=(1, 2)))),
        "repeated_measures": float(np.mean(pairs >= REPEAT_JACCARD)) if len(pairs) else float("nan"),
        "pitch_range": float("nan"), "pitch_class_entropy": float("nan"), "polyphony": float("nan"),
        "sixteenth_grid": float("nan"), "scale_consistency": float("nan"), "groove_consistency": float("nan"),
    }
    if len(rows):
        class_shares = np.bincount((rows + lowest_pitch) % 12, minlength=12) / len(rows)
        classes = class_shares[class_shares > 0]
        onset_steps = np.unique(measure_index * STEPS_PER_MEASURE + steps)
        positions = cells.any(axis=1)  # (measures, steps): where each measure has an onset
        changes = np.count_nonzero(positions[1:] != positions[:-1]) / (STEPS_PER_MEASURE * (measures - 1))
        features.update(
            pitch_range=float(rows.max() - rows.min()),
            pitch_class_entropy=float(-(classes * np.log2(classes)).sum() + 0.0),  # + 0.0: no -0.0
            polyphony=len(rows) / len(onset_steps),
            sixteenth_grid=float(np.mean(steps % SIXTEENTH_STEPS == 0)),
            scale_consistency=float(np.max(SCALES @ class_shares)),
            groove_consistency=1 - changes if measures > 1 else float("nan"),
        )
    return features


def diversity(songs):
    """Mean of 1 - Jaccard index over all pairs of the first DIVERSITY_SONGS ``songs``: 0
    where they are all the same, 1 where no two share a note. None for fewer than two."""
    songs = list(songs)[:DIVERSITY_SONGS]
    if len(songs) < 2:
        return None
    flat = np.stack([np.ravel(song) for song in songs])
    return float(np.mean(1 - jaccard_matrix(flat)[np.triu_indices(len(flat), k=1)]))


def overlapping_area(generated, real, points=2001):
    """Overlapping area of the kernel densities of two samples of one feature.

    Parameters
    ----------
    generated, real : array_like
        Values of the feature; NaN values (undefined for a silent song) are left out.
    points : int
        Points of the grid the densities are compared on.

    Returns
    -------
    float or None
        The integral of min(p_generated, p_real): 1 for the same values, near 0 for
        values far apart. None where either side has no value.
    """
    samples = [np.asarray(values, np.float64) for values in (generated, real)]
    samples = [values[np.isfinite(values)] for values in samples]
    if any(len(values) == 0 for values in samples):
        return None
    low = min(values.min() for values in samples)
    high = max(values.max() for values in samples)
    # Scott's rule. A constant sample (songs with exactly the data's mean note count, say)
    # would have a kernel of zero width: it takes the other sample's, or where both are
    # constant, a width the grid still resolves.
    scott = [values.std(ddof=1 if len(values) > 1 else 0) * len(values) ** -0.2 for values in samples]
    floor = (high - low or 1.0) / 200
    bandwidths = [max(own or other, floor) for own, other in zip(scott, scott[::-1])]
    grid = np.linspace(low - 4 * max(bandwidths), high + 4 * max(bandwidths), points)
    densities = []
    for values, bandwidth in zip(samples, bandwidths):
        density = np.exp(-0.5 * ((grid[:, None] - values[None, :]) / bandwidth) ** 2).sum(axis=1)
        densities.append(density / density.sum())  # each sums to 1 on the grid
    return float(min(np.minimum(*densities).sum(), 1.0))


def onset_scores(true, predicted):
    """Precision, recall and F1 of predicted onsets, over all cells of all songs.

    Parameters
    ----------
    true, predicted : array_like
        Onsets of the same shape; non-zero is a note.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1`` (None where undefined: no predicted or no true
        note) and the counts ``true_notes``, ``predicted_notes``, ``correct_notes``.
    """
    true, predicted = np.asarray(true) != 0, np.asarray(predicted) != 0
    return scores_of_counts(np.count_nonzero(true & predicted), np.count_nonzero(true), np.count_nonzero(predicted))


def scores_of_counts(correct, true_notes, predicted_notes):
    """``onset_scores`` from the counts, summed over batches of songs."""
    correct, true_notes, predicted_notes = int(correct), int(true_notes), int(predicted_notes)
    return {
        "precision": correct / predicted_notes if predicted_notes else None,
        "recall": correct / true_notes if true_notes else None,
        "f1": 2 * correct / (true_notes + predicted_notes) if true_notes + predicted_notes else None,
        "true_notes": true_notes, "predicted_notes": predicted_notes, "correct_notes": correct,
    }


def kl_per_dimension(z_mean, z_log_var):
    """Mean KL(N(mu, sigma) || N(0, 1)) of each latent dimension over a set of songs.

    Parameters
    ----------
    z_mean, z_log_var : array_like
        (songs, latent) encoder outputs.

    Returns
    -------
    np.ndarray
        (latent,) nats. A dimension with more than ACTIVE_KL is an active unit; the others
        are ignored by the decoder (posterior collapse).
    """
    z_mean, z_log_var = np.asarray(z_mean, np.float64), np.asarray(z_log_var, np.float64)
    return np.mean(0.5 * (np.square(z_mean) + np.exp(z_log_var) - 1 - z_log_var), axis=0)


def compare(generated, real, lowest_pitch=LOWEST_PITCH):
    """Judge generated songs against real ones.

    Parameters
    ----------
    generated : dict
        Song name -> (measures, 9216) onsets.
    real : list of np.ndarray
        Samples of the data.
    lowest_pitch : int

    Returns
    -------
    dict
        ``songs`` (name -> features), ``silent_songs``, ``diversity`` of the generated
        songs and ``data_diversity`` (the same, over the first DIVERSITY_SONGS real ones), ``in_range`` (songs
        whose note count lies within the data's 10-90% range, and that range),
        ``features`` (feature -> generated and real mean and standard deviation, and
        ``overlap``), ``mean_overlap``, and ``data_features`` (feature -> the value of
        every real song, for pictures).
    """
    songs = {name: song_features(song, lowest_pitch) for name, song in generated.items()}
    data = [song_features(song, lowest_pitch) for song in real]
    features = {}
    for feature in FEATURES:
        ours = np.array([values[feature] for values in songs.values()], np.float64)
        theirs = np.array([values[feature] for values in data], np.float64)
        features[feature] = {
            "generated_mean": _finite_mean(ours), "generated_sd": _finite_sd(ours), "data_mean": _finite_mean(theirs),
            "data_sd": _finite_sd(theirs), "overlap": overlapping_area(ours, theirs),
        }
    overlaps = [values["overlap"] for values in features.values() if values["overlap"] is not None]
    measures = len(next(iter(generated.values()))) if generated else MEASURES_PER_SAMPLE
    low, high = np.percentile([values["notes_per_measure"] * measures for values in data], [10, 90]) if data else (0, 0)
    note_counts = [values["notes_per_measure"] * measures for values in songs.values()]
    return {
        "songs": songs,
        "silent_songs": [name for name, values in songs.items() if values["notes_per_measure"] == 0],
        "diversity": diversity(list(generated.values())),
        "data_diversity": diversity(real),
        "in_range": {
            "songs": int(sum(low <= count <= high for count in note_counts)), "of": len(note_counts),
            "data_notes_10_90": [float(low), float(high)],
        },
        "features": features,
        "mean_overlap": float(np.mean(overlaps)) if overlaps else None,
        "data_features": {feature: [values[feature] for values in data] for feature in FEATURES},
    }


def _finite_mean(values):
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def _finite_sd(values):
    values = values[np.isfinite(values)]
    return float(values.std()) if len(values) else None
