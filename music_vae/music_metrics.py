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
neighbouring measures.

Originality is judged measure by measure, so that a training phrase replayed in another key
or from another bar line is still found: each measure's most similar training measure, at
any place in any training file and at any transposition of up to TRANSPOSITIONS semitones
(Jaccard index, 1 for a copy); and phrase copies, PHRASE_MEASURES measures in a row that
replay as many measures in a row of one training file at one transposition.
"""

import fractions

import numpy as np
from scipy import sparse

from music_vae.samples import LOWEST_PITCH, PITCHES, STEPS_PER_MEASURE, piano_roll

SIXTEENTH_STEPS = STEPS_PER_MEASURE // 16  # 6 steps: one sixteenth note in 4/4
REPEAT_JACCARD = 0.8  # two measures whose onsets overlap this much count as a repeat
ACTIVE_KL = 0.01  # nats: a latent dimension whose mean KL is above this carries information
DIVERSITY_SONGS = 200  # real songs compared pair by pair: 20,000 pairs, 120 MB of cells
COPY_JACCARD = 0.8  # a measure that shares this much with a training measure replays it
COPY_SHARE = fractions.Fraction(COPY_JACCARD).limit_denominator(1000)  # exact, to compare whole numbers of cells
COPY_MIN_ONSETS = 4  # a measure with fewer onsets (one chord, a held note) is too plain to count as a copy
TRANSPOSITIONS = 6  # a copy may be moved this many semitones up or down
PHRASE_MEASURES = 4  # this many copied measures in a row, of one training file in a row: a phrase copy
LEAP_SEMITONES = 7  # a move of the top line larger than a fifth is a leap
MAJOR_SCALE = np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1], bool)  # pitch classes from the root
MINOR_SCALE = np.roll(MAJOR_SCALE, -9)  # natural minor: the major scale from its sixth degree
# The 24 major and minor scales as a (24, 12) 0/1 matrix: row r's pitch classes.
SCALES = np.array([np.roll(scale, root) for scale in (MAJOR_SCALE, MINOR_SCALE) for root in range(12)], np.float64)

# The per-song features: name -> (label with its unit, short column heading).
FEATURES = {
    "notes_per_measure": ("notes per measure", "notes/m"),
    "notes_per_measure_spread": ("spread of notes per measure (sd)", "spread"),
    "empty_measures": ("empty measures", "empty"),
    "pitch_range": ("pitch range (semitones)", "range"),
    "pitch_class_entropy": ("pitch-class entropy (bits)", "entropy"),
    "polyphony": ("polyphony (onsets per onset step)", "poly"),
    "sixteenth_grid": ("onsets on the 16th-note grid (share)", "grid16"),
    "repeated_measures": ("repeated measure pairs (share)", "repeats"),
    "scale_consistency": ("in the best major/minor scale (share)", "scale"),
    "groove_consistency": ("groove consistency (1 - onset change)", "groove"),
    "top_line_leaps": ("top-line moves beyond a fifth (share)", "leaps"),
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


def transposed_measures(measures, semitones):
    """Measures moved by ``semitones`` pitch rows, as a sparse matrix.

    Parameters
    ----------
    measures : np.ndarray or scipy.sparse matrix
        (k, 9216) onsets.
    semitones : int
        Up (positive) or down.

    Returns
    -------
    scipy.sparse.csr_matrix
        (k, 9216) float32 0/1. A measure that the move would take out of the pitch window is
        left empty: it has no such transposition.
    """
    rows, cells = measures.nonzero()
    moved = cells + semitones * STEPS_PER_MEASURE
    outside = rows[(moved < 0) | (moved >= PITCHES * STEPS_PER_MEASURE)]
    kept = ~np.isin(rows, outside)
    values = np.ones(np.count_nonzero(kept), np.float32)
    return sparse.csr_matrix((values, (rows[kept], moved[kept])), shape=np.shape(measures))


def replayed_measures(songs, training, block=8192):
    """Which measures of ``songs`` replay a measure of the training files (a Jaccard index
    of COPY_JACCARD or more), at any place in them and at any transposition of up to
    TRANSPOSITIONS semitones.

    Parameters
    ----------
    songs : array_like
        (n, measures, 9216) onsets.
    training : iterable of (np.ndarray, np.ndarray)
        Chunks of training measures: (k, 9216) onsets, and each one's place, (k,) int64:
        its file's number * 2**32 + its number in that file, so that the measures of a file
        in a row have places in a row.
    block : int
        Transposed measures compared with a chunk at a time.

    Returns
    -------
    copied : np.ndarray
        (n, measures) float64: 1 for a measure that replays a training measure, 0 for one
        that does not, NaN for one with fewer than COPY_MIN_ONSETS onsets, which is not judged.
    copies : np.ndarray
        (c, 4) int64 rows (song, measure, semitones, place): every training measure that a
        judged measure replays, and how far the replay moved it (up where positive).

    Notes
    -----
    Only pairs that can reach the threshold are compared (prefix filtering, Chaudhuri et al.,
    ICDE 2006; Bayardo et al., WWW 2007): with the cells in one fixed order, two measures A
    and B with a Jaccard index of t or more share a cell among the first |A| - ceil(t |A|) + 1
    of A and the first |B| - ceil(t |B|) + 1 of B. Ordering the cells rarest first (as the
    first chunk of training measures counts them) leaves few such candidates; the pairs
    found are exactly those a comparison of every pair finds (a test checks it).
    """
    songs = np.asarray(songs)
    count, measures = songs.shape[:2]
    flat = songs.reshape(count * measures, -1) != 0
    judged = np.flatnonzero(flat.sum(axis=1) >= COPY_MIN_ONSETS)
    shifts = np.arange(-TRANSPOSITIONS, TRANSPOSITIONS + 1)
    # Row r: measure judged[r % len(judged)] moved by shifts[r // len(judged)].
    judged_measures = sparse.csr_matrix(flat[judged])
    queries = sparse.vstack([transposed_measures(judged_measures, shift) for shift in shifts], format="csr")
    query_sizes = np.diff(queries.indptr)
    jaccard = COPY_SHARE  # the least Jaccard index of a copy, a Fraction
    counts = prefixes = None
    copies = []
    for chunk, places in training:
        chunk = sparse.csr_matrix(np.asarray(chunk).reshape(len(chunk), -1) != 0, dtype=np.float32)
        if counts is None:  # any one order of the cells finds every copy; the rarest first, the fewest candidates
            counts = np.asarray(chunk.sum(axis=0)).ravel()
            prefixes = rarest_cells(queries, counts)
        chunk_prefixes = rarest_cells(chunk, counts).T.tocsr()
        sizes = np.diff(chunk.indptr)
        for start in range(0, queries.shape[0], block):
            candidates = (prefixes[start : start + block] @ chunk_prefixes).tocoo()
            rows, columns = start + candidates.row, candidates.col
            shared = np.asarray(queries[rows].multiply(chunk[columns]).sum(axis=1)).ravel().astype(np.int64)
            hits = shared * jaccard.denominator >= jaccard.numerator * (query_sizes[rows] + sizes[columns] - shared)
            rows, columns = rows[hits], columns[hits]
            measure = judged[rows % len(judged)]
            found = (measure // measures, measure % measures, -shifts[rows // len(judged)], places[columns])
            copies.append(np.stack(found, axis=1))
    copies = np.concatenate(copies).astype(np.int64) if copies else np.zeros((0, 4), np.int64)
    copied = np.full(count * measures, np.nan)
    copied[judged] = 0.0
    copied[copies[:, 0] * measures + copies[:, 1]] = 1.0
    return copied.reshape(count, measures), copies


def rarest_cells(measures, counts):
    """Of every row of ``measures`` (a sparse 0/1 matrix), its rarest cells by ``counts``
    (9216,), as many as a measure that shares COPY_JACCARD of its cells must share one of:
    |A| - ceil(COPY_JACCARD |A|) + 1. A sparse matrix of ``measures``' shape."""
    jaccard = COPY_SHARE  # the least Jaccard index of a copy, a Fraction
    coordinates = measures.tocoo()
    order = np.lexsort((counts[coordinates.col], coordinates.row))  # by row, then the rarest first
    rows, cells = coordinates.row[order], coordinates.col[order]
    sizes = np.diff(measures.indptr)
    shared = -(-sizes * jaccard.numerator // jaccard.denominator)  # ceil(COPY_JACCARD |A|), in whole cells
    needed = sizes - shared + 1
    position = np.arange(len(rows)) - np.repeat(measures.indptr[:-1], sizes)
    kept = position < needed[rows]
    values = np.ones(np.count_nonzero(kept), np.float32)
    return sparse.csr_matrix((values, (rows[kept], cells[kept])), shape=measures.shape)


def phrase_copies(copies, length=PHRASE_MEASURES):
    """The songs that hold a phrase copy: ``length`` measures in a row that replay as many
    measures in a row of one training file, all at one transposition.

    Parameters
    ----------
    copies : np.ndarray
        (c, 4) rows (song, measure, semitones, place), as replayed_measures gives them.

    Returns
    -------
    list of int
        The songs' numbers, ascending.
    """
    found = set(map(tuple, np.asarray(copies).tolist()))
    return sorted(
        {
            song
            for song, measure, semitones, place in found
            if all((song, measure + step, semitones, place + step) in found for step in range(1, length))
        }
    )


def replay_summary(copied, copies):
    """What replayed_measures found for a set of songs: the songs and the measures judged,
    the share of those that replay a training measure, and the songs with a phrase copy;
    None for no song."""
    copied = np.asarray(copied, np.float64)
    if not len(copied):
        return None
    judged = copied[np.isfinite(copied)]
    return {
        "songs": len(copied), "measures": len(judged),
        "copied_share": float(judged.mean()) if len(judged) else 0.0,
        "phrase_copies": len(phrase_copies(copies)),
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
        consistency are NaN for a silent song, which has none, and the top line's leaps for
        a song of fewer than two onset steps. The spread of notes per measure is the standard
        deviation of its measures' note counts: 0 where every measure has as many notes, as
        no real phrase does. Repeated measure pairs are the share of the song's pairs of
        measures whose onsets have a Jaccard index of at least REPEAT_JACCARD (two silent
        measures repeat each other). The top line is the highest onset of every onset step;
        its leaps are the share of its moves larger than LEAP_SEMITONES.
    """
    cells = onset_cells(song)
    measures = len(cells)
    measure_index, rows, steps = np.nonzero(cells)
    pairs = jaccard_matrix(cells.reshape(measures, -1))[np.triu_indices(measures, k=1)]
    features = {
        "notes_per_measure": len(rows) / measures,
        "notes_per_measure_spread": float(np.std(np.bincount(measure_index, minlength=measures))),
        "empty_measures": float(measures - np.count_nonzero(cells.any(axis=(1, 2)))),
        "repeated_measures": float(np.mean(pairs >= REPEAT_JACCARD)) if len(pairs) else float("nan"),
        "pitch_range": float("nan"), "pitch_class_entropy": float("nan"), "polyphony": float("nan"),
        "sixteenth_grid": float("nan"), "scale_consistency": float("nan"), "groove_consistency": float("nan"),
        "top_line_leaps": float("nan"),
    }
    if len(rows):
        class_shares = np.bincount((rows + lowest_pitch) % 12, minlength=12) / len(rows)
        classes = class_shares[class_shares > 0]
        onset_steps = np.unique(measure_index * STEPS_PER_MEASURE + steps)
        positions = cells.any(axis=1)  # (measures, steps): where each measure has an onset
        changes = np.count_nonzero(positions[1:] != positions[:-1]) / (STEPS_PER_MEASURE * (measures - 1))
        top_line = np.full(measures * STEPS_PER_MEASURE, -1)
        np.maximum.at(top_line, measure_index * STEPS_PER_MEASURE + steps, rows)
        moves = np.abs(np.diff(top_line[top_line >= 0]))
        features.update(
            pitch_range=float(rows.max() - rows.min()),
            pitch_class_entropy=float(-(classes * np.log2(classes)).sum() + 0.0),  # + 0.0: no -0.0
            polyphony=len(rows) / len(onset_steps),
            sixteenth_grid=float(np.mean(steps % SIXTEENTH_STEPS == 0)),
            scale_consistency=float(np.max(SCALES @ class_shares)),
            groove_consistency=1 - changes if measures > 1 else float("nan"),
            top_line_leaps=float(np.mean(moves > LEAP_SEMITONES)) if len(moves) else float("nan"),
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


def onset_scores(true, predicted, tolerance=0):
    """Precision, recall and F1 of predicted onsets, over all cells of all songs.

    Parameters
    ----------
    true, predicted : array_like
        Onsets of songs, (measures, 9216) or (songs, measures, 9216); non-zero is a note.
    tolerance : int
        Steps a predicted onset may lie before or after a true one of its pitch (across bar
        lines too) and still be correct; each true onset makes one predicted one correct.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1`` (None where undefined: no predicted or no true
        note) and the counts ``true_notes``, ``predicted_notes``, ``correct_notes``.
    """
    true, predicted = np.asarray(true) != 0, np.asarray(predicted) != 0
    return scores_of_counts(
        matched_onsets(true, predicted, tolerance), np.count_nonzero(true), np.count_nonzero(predicted)
    )


def matched_onsets(true, predicted, tolerance=0):
    """The most pairs of a true and a predicted onset, each in one pair at most, of the same
    pitch and at most ``tolerance`` steps apart. Songs as in onset_scores.

    Along one pitch's time line, taking the predicted onsets in order and pairing each with
    the earliest true one still free within reach finds the most pairs.
    """
    true, predicted = np.asarray(true) != 0, np.asarray(predicted) != 0
    if not tolerance:
        return int(np.count_nonzero(true & predicted))
    matched = 0
    for true_song, predicted_song in zip(true.reshape(-1, *true.shape[-2:]), predicted.reshape(-1, *true.shape[-2:])):
        true_roll, predicted_roll = piano_roll(true_song) != 0, piano_roll(predicted_song) != 0
        for pitch in np.flatnonzero(true_roll.any(axis=1) & predicted_roll.any(axis=1)):
            true_steps, predicted_steps = np.flatnonzero(true_roll[pitch]), np.flatnonzero(predicted_roll[pitch])
            free = 0
            for step in predicted_steps:
                while free < len(true_steps) and true_steps[free] < step - tolerance:
                    free += 1
                if free < len(true_steps) and true_steps[free] <= step + tolerance:
                    matched += 1
                    free += 1
    return matched


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
        songs and ``data_diversity`` (the same, over the first DIVERSITY_SONGS real ones),
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
    return {
        "songs": songs,
        "silent_songs": [name for name, values in songs.items() if values["notes_per_measure"] == 0],
        "diversity": diversity(list(generated.values())),
        "data_diversity": diversity(real),
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
