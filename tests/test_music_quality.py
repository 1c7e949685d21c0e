"""The levers of musical quality, each with a known answer: the KL schedule and free bits,
the latent density songs are drawn from, the note rules, transposition, random start
measures and dropout; and a
run that pulls them all, which resumes to the run it would have been."""

import json
import math

import keras
import numpy as np
import pytest

import music_generator as mg
from music_vae.dataset import SongFiles, following_samples, gathered, pitch_ranges, transposition
from music_vae.latent import DENSITY_FILE, LatentDensity, encode
from music_vae.model import ModelConfig, PitchStepLogits, PitchStepProfiles, build_vae, kl_share
from music_vae.samples import PITCHES, STEPS_PER_MEASURE, midi_to_song
from music_vae.songs import NoteRule, strongest_per_step
from music_vae.config import TrainConfig, given_options
from helpers import make_samples, train

TINY = ModelConfig(measure_hidden=8, measure_features=2, song_hidden=4, latent=3)

# --- the KL term -------------------------------------------------------------------------------


def test_the_kl_share_rises_over_a_warmup_or_each_cycles_first_half():
    assert [kl_share(epoch, warmup=4) for epoch in range(6)] == [0, 0.25, 0.5, 0.75, 1, 1]
    assert [kl_share(epoch, cycle=4) for epoch in range(8)] == [0, 0.5, 1, 1, 0, 0.5, 1, 1]
    assert [kl_share(epoch) for epoch in range(3)] == [1, 1, 1]


@pytest.mark.parametrize("free_bits", [0.0, 3.0])
def test_the_loss_is_the_summed_reconstruction_plus_the_weighted_kl_above_the_free_bits(free_bits):
    vae = build_vae(ModelConfig(**{**TINY.__dict__, "kl_weight": 0.5, "reconstruction": "bce", "free_bits": free_bits}))
    rng = np.random.default_rng(1)
    songs = (rng.random((2, 16, 9216)) < 0.01).astype(np.float32)
    reconstructed = rng.uniform(0.01, 0.99, songs.shape).astype(np.float32)
    z_mean = np.array([[0.1, -2.0, 0.3], [1.5, 0.0, -0.4]], np.float32)
    z_log_var = np.array([[0.0, -1.0, 0.5], [-2.0, 0.2, 0.0]], np.float32)
    loss = float(vae.compute_loss(songs, y_pred=(reconstructed, z_mean, z_log_var)))
    # Summed over each song's 147,456 cells, not averaged: the KL weighs against all of them.
    cross_entropy = -(songs * np.log(reconstructed) + (1 - songs) * np.log(1 - reconstructed)).sum(axis=(1, 2))
    kl = -0.5 * (1 + z_log_var - z_mean**2 - np.exp(z_log_var)).sum(axis=1)  # 2.27 and 2.14 nats
    kl_cost = np.maximum(kl - free_bits * math.log(2), 0)  # 3 bits = 2.08 nats free
    assert loss == pytest.approx(cross_entropy.mean() + 0.5 * kl_cost.mean(), rel=1e-4)
    assert float(vae.kl_tracker.result()) == pytest.approx(kl.mean(), rel=1e-5)  # the KL logged is all of it


def test_a_note_weight_counts_the_note_cells_that_many_times_in_the_loss_but_not_in_the_one_logged():
    vae = build_vae(ModelConfig(**{**TINY.__dict__, "reconstruction": "bce", "note_weight": 4.0, "kl_weight": 0.0}))
    rng = np.random.default_rng(2)
    songs = (rng.random((2, 16, 9216)) < 0.01).astype(np.float32)
    reconstructed = rng.uniform(0.01, 0.99, songs.shape).astype(np.float32)
    zeros = np.zeros((2, 3), np.float32)
    loss = float(vae.compute_loss(songs, y_pred=(reconstructed, zeros, zeros)))
    notes = -(songs * np.log(reconstructed)).sum(axis=(1, 2))
    silence = -((1 - songs) * np.log(1 - reconstructed)).sum(axis=(1, 2))
    assert loss == pytest.approx((4 * notes + silence).mean(), rel=1e-4)
    assert float(vae.reconstruction_tracker.result()) == pytest.approx((notes + silence).mean(), rel=1e-4)


def test_pitch_and_step_profiles_and_terms_of_a_measure_built_by_hand():
    measure = np.zeros((PITCHES, STEPS_PER_MEASURE), np.float32)
    measure[10, [0, 24, 48]] = 1  # three onsets at pitch row 10
    measure[30, 24] = 1  # and one at row 30, with the second of them
    songs = np.zeros((1, 2, PITCHES * STEPS_PER_MEASURE), np.float32)
    songs[0, 1] = measure.ravel()
    profiles = np.asarray(PitchStepProfiles()(songs))
    assert profiles.shape == (1, 2, PITCHES + STEPS_PER_MEASURE) and not profiles[0, 0].any()
    pitches, steps = profiles[0, 1, :PITCHES], profiles[0, 1, PITCHES:]
    assert pitches[10] == 3 / STEPS_PER_MEASURE and pitches[30] == 1 / STEPS_PER_MEASURE and pitches.sum() == 4 / 96
    assert steps[24] == 2 / PITCHES and steps[0] == steps[48] == 1 / PITCHES and steps.sum() == 4 / 96
    cells = np.arange(2 * PITCHES * STEPS_PER_MEASURE, dtype=np.float32).reshape(1, 2, -1)
    pitch_terms = np.zeros((1, 2, PITCHES), np.float32)
    step_terms = np.zeros((1, 2, STEPS_PER_MEASURE), np.float32)
    pitch_terms[0, 1, 7], step_terms[0, 0, 5] = 100, 1000
    logits = np.asarray(PitchStepLogits()([cells, pitch_terms, step_terms])).reshape(2, PITCHES, STEPS_PER_MEASURE)
    added = logits - cells.reshape(2, PITCHES, STEPS_PER_MEASURE)
    assert (added[1, 7] == 100).all() and (added[0, :, 5] == 1000).all() and np.count_nonzero(added) == 96 + 96
    vae = build_vae(ModelConfig(**{**TINY.__dict__, "pitch_step_terms": True}))
    assert vae.encoder.get_layer("measure_hidden").kernel.shape[0] == 9216 + 192
    assert {"pitch_terms", "step_terms"} <= {layer.name for layer in vae.decoder.layers}
    assert tuple(vae(np.zeros((1, 16, 9216), np.float32))[0].shape) == (1, 16, 9216)


@pytest.mark.slow
def test_a_kl_warmup_trains_the_first_epoch_on_the_reconstruction_alone(tmp_path):
    options = ["--kl-warmup", "2", "--kl-cycle", "0", "--free-bits", "0", "--songs-per-epoch", "0", "--songs", "0"]
    code, run = train(tmp_path, *options, "--no-audio", epochs=3)
    assert code == 0
    history = json.loads((run / "state.json").read_text())["history"]
    assert [row["kl_share"] for row in history] == [0, 0.5, 1]
    assert history[0]["loss"] == pytest.approx(history[0]["reconstruction"], rel=1e-6)
    assert history[2]["loss"] == pytest.approx(history[2]["reconstruction"] + history[2]["kl"], rel=1e-4)
    assert keras.saving.load_model(run / "model" / "vae.keras").kl_share.numpy() == 1  # its variable is saved


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_latent_batch_norm_gives_every_latent_dimension_its_spread_and_the_kl_its_floor(scale):
    """Over a batch, each latent dimension's means have a spread of --latent-batch-norm,
    however narrow, wide or far from 0 the encoder puts them (as long as their spread is above
    the batch norm's epsilon), and so a song's KL cannot fall below latent * scale**2 / 2 nats:
    the code cannot collapse to the prior."""
    keras.utils.set_random_seed(0)
    vae = build_vae(ModelConfig(**{**TINY.__dict__, "latent_batch_norm": scale}))
    songs = (np.random.default_rng(0).random((64, 16, 9216)) < 0.05).astype(np.float32)
    dense = vae.encoder.get_layer("z_mean_unnormalised")
    unnormalised = keras.Model(vae.encoder.input, dense.output)
    epsilon = vae.encoder.get_layer("z_mean_batch_norm").epsilon
    floor = TINY.latent * scale**2 / 2
    kernel, bias = dense.get_weights()
    spread = np.asarray(unnormalised(songs)).std(axis=0)
    for width, shift in ((0.3, 0), (3, 0), (0.3, 4)):  # the encoder's means this far apart, and off centre
        dense.set_weights([kernel * width / spread, bias + shift])
        means = np.asarray(unnormalised(songs)).astype(np.float64)
        assert means.std(axis=0) == pytest.approx([width] * 3, rel=1e-3)  # 0.3: a variance of 90 epsilons
        z_mean, z_log_var, _ = (np.asarray(output) for output in vae.encoder(songs, training=True))
        expected = scale * (means - means.mean(axis=0)) / np.sqrt(means.var(axis=0) + epsilon)
        assert z_mean == pytest.approx(expected, abs=1e-4 * scale)  # the batch's own statistics; the shift starts at 0
        assert z_mean.mean(axis=0) == pytest.approx([0, 0, 0], abs=1e-4 * scale)
        assert z_mean.std(axis=0) == pytest.approx([scale] * 3, rel=0.01)
        kl = -0.5 * np.sum(1 + z_log_var - z_mean**2 - np.exp(z_log_var), axis=1)
        assert kl.mean() >= 0.98 * floor, (width, shift)
    # Without it, an encoder whose means come close together comes close to the prior.
    plain = build_vae(TINY)
    layer = plain.encoder.get_layer("z_mean")
    layer.set_weights([weights * 0.1 for weights in layer.get_weights()])
    z_mean, z_log_var, _ = (np.asarray(output) for output in plain.encoder(songs, training=True))
    assert np.mean(-0.5 * np.sum(1 + z_log_var - z_mean**2 - np.exp(z_log_var), axis=1)) < floor / 2
    assert "z_mean_batch_norm" not in [layer.name for layer in plain.encoder.layers]


# --- where songs come from ---------------------------------------------------------------------


def test_a_density_fitted_to_codes_gives_back_their_mean_and_covariance(tmp_path):
    rng = np.random.default_rng(0)
    covariance = np.array([[0.04, 0.03, 0], [0.03, 0.09, 0], [0, 0, 0.01]])
    codes = rng.multivariate_normal([1.0, -0.5, 0.2], covariance, size=20_000)
    density = LatentDensity.fit(codes)
    np.testing.assert_allclose(density.mean, [1.0, -0.5, 0.2], atol=0.01)
    np.testing.assert_allclose(density.scale @ density.scale.T, covariance, atol=0.005)
    drawn = density.latents(rng.standard_normal((20_000, 3)))
    np.testing.assert_allclose(np.cov(drawn, rowvar=False), covariance, atol=0.005)
    assert np.allclose(density.latents(np.zeros((1, 3))), density.mean)  # noise 0: the mean
    assert np.allclose(density.latents(np.ones((1, 3)), temperature=0.5) - density.mean, 0.5 * density.scale.sum(1))
    density.write(tmp_path / DENSITY_FILE)
    loaded = LatentDensity.load(tmp_path / DENSITY_FILE)
    assert np.array_equal(loaded.mean, density.mean) and np.array_equal(loaded.scale, density.scale)
    prior = LatentDensity.prior(3)
    assert np.array_equal(prior.latents(codes[:5].astype(np.float32)), codes[:5].astype(np.float32))
    # Codes in fewer dimensions than the space (one song, collapsed units) still give a density.
    assert np.isfinite(LatentDensity.fit(np.ones((1, 3))).scale).all()
    assert np.isfinite(LatentDensity.fit(np.c_[codes[:50, :2], np.zeros(50)]).scale).all()


def test_encoding_songs_leaves_the_training_noise_where_it_was():
    """Fitting the density after an epoch must not change what training draws next."""
    vae = build_vae(TINY)
    noise = vae.encoder.get_layer("z").seed_generator.state
    before = keras.ops.convert_to_numpy(noise).copy()
    z_mean, z_log_var = encode(vae.encoder, [np.zeros((16, 9216), np.uint8)] * 3)
    assert z_mean.shape == z_log_var.shape == (3, 3) and z_mean.dtype == np.float32
    assert np.array_equal(keras.ops.convert_to_numpy(noise), before)


# --- which cells are notes ---------------------------------------------------------------------


def test_a_cap_keeps_the_strongest_pitches_of_every_step():
    rng = np.random.default_rng(2)
    song = rng.random((2, PITCHES * STEPS_PER_MEASURE)).astype(np.float32)
    capped = strongest_per_step(song, 3).reshape(2, PITCHES, STEPS_PER_MEASURE)
    cells = song.reshape(2, PITCHES, STEPS_PER_MEASURE)
    assert (np.count_nonzero(capped, axis=1) == 3).all()
    third = np.sort(cells, axis=1)[:, -3:, :]  # the three strongest of each step, kept as they were
    assert np.array_equal(np.sort(capped, axis=1)[:, -3:, :], third)
    kept, threshold = NoteRule(threshold=0.0, max_pitches_per_step=3).apply(song)
    assert np.count_nonzero(kept >= max(threshold, 1e-9)) == 2 * STEPS_PER_MEASURE * 3


def test_a_calibrated_threshold_gives_songs_the_average_note_count_and_each_its_own():
    rng = np.random.default_rng(3)
    loudness = np.linspace(0.5, 1.5, 8)[:, None, None]  # songs that the decoder is more or less sure of
    songs = (rng.random((8, 16, 9216)) ** 20 * loudness).astype(np.float32)
    rule = NoteRule(notes=100, method="calibrated").calibrated(songs)
    counts = [np.count_nonzero(rule.apply(song)[0] >= rule.threshold) for song in songs]
    assert sum(counts) == 800 and counts == sorted(counts) and counts[0] < counts[-1] / 2
    # A bfloat16 decoder: 4 songs of 20 notes each, and 10,000 cells tied just below them.
    tied = np.zeros((4, 16, 9216), np.float32)
    tied[:, 0, :20], tied[:, 1:3, :5000] = 0.5, 0.25
    rule = NoteRule(notes=30, method="calibrated").calibrated(tied)
    assert rule.threshold == 0.5  # 20 notes a song, nearer to 30 than the 10,020 of including the tie
    per_song = NoteRule(notes=100)  # the paper's way here: every song exactly 100
    assert per_song.calibrated(songs) is per_song
    assert {np.count_nonzero(per_song.apply(song)[0] >= per_song.apply(song)[1]) for song in songs} == {100}



def test_the_expected_rule_gives_each_measure_as_many_notes_as_its_values_sum_to():
    song = np.zeros((3, PITCHES * STEPS_PER_MEASURE), np.float32)
    song[0, :10] = 0.19  # 2.83 notes expected: the 3 strongest of these
    song[0, 3] = song[0, 7] = song[0, 9] = 0.5
    song[1, :100] = 0.004  # 0.4 expected: no note
    chord = np.arange(4) * STEPS_PER_MEASURE  # pitches 0-3 at step 0
    song[2, chord] = 0.9
    song[2, 1] = 0.2  # and pitch 0 at step 1: 3.8 expected, so the chord's 4 notes
    kept, threshold = NoteRule(notes=500, method="expected").apply(song)
    notes = kept >= threshold
    assert notes.sum(axis=1).tolist() == [3, 0, 4]
    assert np.flatnonzero(notes[0]).tolist() == [3, 7, 9]
    # With a cap of 2 pitches a step, the measure still expects 3.8 notes (its values before
    # the cap), but only 3 cells are left: two of the chord and the one of step 1.
    kept, threshold = NoteRule(notes=500, method="expected", max_pitches_per_step=2).apply(song)
    roll = (kept >= threshold).reshape(3, PITCHES, STEPS_PER_MEASURE)
    assert roll.sum(axis=(1, 2)).tolist() == [3, 0, 3] and roll[2, :, 0].sum() == 2 and roll[2, 0, 1]
    silent = np.zeros_like(song)
    kept, threshold = NoteRule(method="expected").apply(silent)
    assert not (kept >= threshold).any()
    # Calibrated on songs whose values sum to half the data's notes, each count doubles (the
    # third measure has only 5 cells above 0 for its 7.6).
    rule = NoteRule(notes=2 * (2.83 + 0.4 + 3.8), method="expected").calibrated(np.stack([song, song]))
    kept, threshold = rule.apply(song)
    assert rule.count_scale == pytest.approx(2) and (kept >= threshold).sum(axis=1).tolist() == [6, 1, 5]

# --- data --------------------------------------------------------------------------------------


def transposed(song, semitones, shift):
    """``song`` (measures, 9216 cells or 1152 bit-packed bytes) moved as SongFiles moves a song
    drawn ``shift`` (0 to 1) along the moves of up to ``semitones`` that its notes allow."""
    move = transposition(pitch_ranges(song)[None], semitones, np.array([shift]))
    return gathered(song, np.arange(len(song))[None], move)[0]


def test_transposition_keeps_every_note_in_the_window_and_packed_songs_move_alike():
    song = np.zeros((16, PITCHES, STEPS_PER_MEASURE), np.uint8)
    song[:, 2, 0] = song[:, 90, 48] = 1  # 2 semitones of room below, 5 above
    flat = song.reshape(16, -1)
    shifts = set()
    for shift in np.linspace(0, 1, 200, endpoint=False):
        moved = transposed(flat, 12, shift).reshape(16, PITCHES, STEPS_PER_MEASURE)
        rows = np.flatnonzero(moved.any(axis=(0, 2)))
        shifts.add(int(rows[0]) - 2)
        assert rows[-1] - rows[0] == 88 and moved.sum() == song.sum()
        packed = transposed(np.packbits(flat, axis=-1), 12, shift)
        assert np.array_equal(np.unpackbits(packed, axis=-1), moved.reshape(16, -1))
    assert shifts == set(range(-2, 6))
    assert transposed(np.zeros_like(flat), 12, 0.5).sum() == 0


def test_transposed_batches_follow_from_the_seed_and_the_epoch(tmp_path):
    paths = sorted(make_samples(tmp_path / "samples", 8).glob("*.npy"))
    songs = SongFiles(paths, 4, (16, 9216), shuffle=True, seed=1, transpose=5)
    again = SongFiles(paths, 4, (16, 9216), shuffle=True, seed=1, transpose=5, cache=True)
    first = songs[0]
    assert np.array_equal(np.unpackbits(again[0], axis=-1), first)
    songs.start_epoch(1)
    assert not np.array_equal(songs[0], first)
    plain = SongFiles(paths, 4, (16, 9216), shuffle=True, seed=1)
    assert sorted(first.sum(axis=(1, 2))) == sorted(plain[0].sum(axis=(1, 2)))  # the same notes, moved


def test_a_random_start_runs_on_into_the_files_next_sample_and_follows_the_seed(tmp_path):
    folder = tmp_path / "samples"
    folder.mkdir()
    # Measure m of a file is marked by its pitch: m for "a" (32 measures, two samples), 50 + m for "b".
    index = ["sample,source,first_measure,n_notes"]
    files = [("a_m0000", "a", 0, 0), ("a_m0016", "a", 16, 0), ("b_m0000", "b", 0, 50)]
    for name, source, first_measure, lowest in files:
        song = np.zeros((16, PITCHES, STEPS_PER_MEASURE), np.uint8)
        for measure in range(16):
            song[measure, lowest + first_measure + measure, 0] = 1
        np.save(folder / f"{name}.npy", song.reshape(16, -1))
        index.append(f"{name}.npy,{source}.mid,{first_measure},16")
    (folder / "index.csv").write_text("\n".join(index) + "\n")
    paths = sorted(folder.glob("*.npy"))
    following = following_samples(paths, folder, 16)
    assert following == [1, -1, -1]
    (tmp_path / "elsewhere").mkdir()
    assert following_samples(paths, tmp_path / "elsewhere", 16) == [-1, -1, -1]  # no index.csv: none known to follow

    def first_pitches(batch):
        return [int(np.flatnonzero(song.reshape(16, PITCHES, -1)[m].any(axis=1))[0]) for song in batch for m in (0, 15)]

    songs = SongFiles(paths, 3, (16, 9216), following=following)
    cached = SongFiles(paths, 3, (16, 9216), following=following, cache=True)
    starts = set()
    for epoch in range(12):
        songs.start_epoch(epoch)
        cached.start_epoch(epoch)
        batch = songs[0]
        assert np.array_equal(np.unpackbits(cached[0], axis=-1), batch)
        start, last, *others = first_pitches(batch)
        assert last == start + 15 and others == [16, 31, 50, 65]  # 16 measures in order; the others as they are
        assert batch.sum() == 48
        starts.add(start)
    assert len(starts) >= 6 and starts <= set(range(16))
    assert first_pitches(SongFiles(paths, 3, (16, 9216))[0]) == [0, 15, 16, 31, 50, 65]


# --- the paper, one flag away ------------------------------------------------------------------


def test_the_paper_preset_gives_the_papers_settings_and_options_given_replace_them(tmp_path):
    data = str(make_samples(tmp_path / "samples", 2))

    def settings(*options):
        args = mg.parse_args(["train", "--data", data, "--output-dir", str(tmp_path / "runs"), *options])
        return TrainConfig.new(given_options(args)).parameters()

    paper = settings("--preset", "paper")
    assert {key: paper[key] for key in PAPER_SETTINGS} == PAPER_SETTINGS
    assert settings("--preset", "paper", "--lr", "0.002", "--note-rule", "expected")["lr"] == 0.002
    default = settings()
    assert {key: default[key] for key in PAPER_SETTINGS} == {
        **PAPER_SETTINGS, "reconstruction": "bce", "kl_cycle": 4, "free_bits": 1024.0, "batch_size": 64, "lr": 0.001,
        "sample_from": "data", "note_rule": "expected", "max_pitches_per_step": 3, "random_start": True,
        "latent_batch_norm": 0.5, "transpose": 6, "pitch_step_terms": True,
    }


@pytest.mark.slow
def test_a_run_of_the_paper_preset_records_it_and_the_options_given(tmp_path):
    code, run = train(tmp_path, "--preset", "paper", "--epochs", "1", "--songs", "1", "--no-audio")
    parameters = json.loads((run / "state.json").read_text())["parameters"]
    assert code == 0 and parameters["preset"] == "paper" and parameters["reconstruction"] == "mse"
    assert parameters["batch_size"] == 4  # train() gives it


# Sections 3.4 and 4.1 of the paper, and its note rule as far as it says.
PAPER_SETTINGS = {
    "measure_hidden": 2000, "measure_features": 200, "song_hidden": 1600, "latent": 120, "kl_weight": 1.0,
    "reconstruction": "mse", "kl_warmup": 0, "kl_cycle": 0, "free_bits": 0.0, "dropout": 0.0, "batch_size": 1,
    "lr": 0.01, "transpose": 0, "precision": "float32", "sample_from": "prior", "temperature": 1.0,
    "note_rule": "per-song", "threshold": None, "max_pitches_per_step": 0, "random_start": False,
    "latent_batch_norm": 0.0, "note_weight": 1.0, "pitch_step_terms": False,
}


# --- a run with every lever --------------------------------------------------------------------

LEVERS = [
    "--sample-from", "data", "--temperature", "0.8", "--note-rule", "calibrated", "--max-pitches-per-step", "3",
    "--transpose", "3", "--dropout", "0.2", "--kl-cycle", "2", "--free-bits", "2", "--songs", "4", "--no-audio",
    "--random-start", "--latent-batch-norm", "0.5",
]


@pytest.mark.slow
def test_a_run_with_every_lever_resumes_to_the_run_it_would_have_been(tmp_path):
    samples = make_samples(tmp_path / "samples", 12)
    index = [f"song{number:03d}.npy,file{number // 4}.mid,{16 * (number % 4)},0" for number in range(12)]
    (samples / "index.csv").write_text("\n".join(["sample,source,first_measure,n_notes", *index]) + "\n")
    code, whole = train(tmp_path / "whole", *LEVERS, data=samples, epochs=2)
    assert code == 0
    code, part = train(tmp_path / "part", *LEVERS, data=samples, epochs=1)
    assert code == 0
    assert mg.main(["train", "--resume", str(part), "--epochs", "2", "--no-audio"]) == 0
    histories = [json.loads((run / "state.json").read_text())["history"] for run in (whole, part)]
    timings = ("seconds", "samples_per_s", "mfu")
    for ours, theirs in zip(*histories):
        ours, theirs = ({key: value for key, value in row.items() if key not in timings} for row in (ours, theirs))
        assert ours == pytest.approx(theirs)
    for run in (whole, part):
        assert (run / "model" / DENSITY_FILE).is_file() and not list((run / "model").glob("epoch*"))
    for name in ("final_song01", "final_song04", "epoch002_song02"):
        np.testing.assert_allclose(
            np.load(whole / "generated" / "npy" / f"{name}.npy"), np.load(part / "generated" / "npy" / f"{name}.npy"),
            atol=1e-6, err_msg=name,
        )
    results = json.loads((whole / "evaluation.json").read_text())
    notes = [values["notes_per_measure"] for values in results["songs"].values()]
    assert len(set(notes)) > 1  # a calibrated threshold: each song as many notes as its values say
    # The songs as written, their MIDI files, have at most 3 pitches a step (--max-pitches-per-step
    # 3), each of them among the 3 strongest values of its step; without the cap, the values
    # at or above their weakest note would have stacked more on some step.
    capped = []
    for midi in sorted((whole / "generated" / "midi").glob("*.mid")):
        notes = midi_to_song(midi).reshape(16, PITCHES, STEPS_PER_MEASURE).astype(bool)
        values = np.load(whole / "generated" / "npy" / f"{midi.stem}.npy").reshape(16, PITCHES, STEPS_PER_MEASURE)
        assert notes.any() and np.count_nonzero(notes, axis=1).max() <= 3, midi.name
        third = np.sort(values, axis=1)[:, -3:-2, :]  # the 3rd strongest value of each step
        assert (values[notes] >= np.broadcast_to(third, values.shape)[notes]).all(), midi.name
        capped.append((np.count_nonzero(values >= values[notes].min(), axis=1) > 3).any())
    assert len(capped) == 4 + 2 * 3 and any(capped)  # 4 final songs and 3 of each epoch


@pytest.mark.slow
def test_generate_draws_from_the_runs_density_or_as_told(tmp_path):
    code, run = train(tmp_path, "--songs", "2", "--no-audio", "--sample-from", "prior")  # no density
    assert code == 0 and not (run / "model" / DENSITY_FILE).exists()
    generate = ["generate", "--run", str(run), "--songs", "2", "--seed", "4", "--no-audio"]
    assert mg.main(generate) == 0
    prior = np.load(run / "generated" / "npy" / "sample_song01.npy")
    assert mg.main([*generate, "--sample-from", "data", "--note-rule", "calibrated"]) == 0
    assert (run / "model" / DENSITY_FILE).is_file()  # fitted to the run's training songs now, and kept
    assert not np.array_equal(np.load(run / "generated" / "npy" / "sample_song01.npy"), prior)
    assert mg.main(["train", "--resume", str(run), "--epochs", "3", "--no-audio"]) == 0
    assert not (run / "model" / DENSITY_FILE).exists()  # fitted to the models of epoch 2, not to these


# The mistakes run in this process: test_music_generator runs the command line's one-line
# errors in a fresh one, with and without FluidSynth.
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--kl-cycle", "1"], "--kl-cycle 1 would keep the KL weight at 0"),
        (["train", "--free-bits", "-1"], "argument --free-bits: must be 0 or more"),
        (["train", "--dropout", "1"], "argument --dropout: must be at least 0 and below 1"),
        (["train", "--transpose", "49"], "argument --transpose: must be from 0 to 48"),
        (["train", "--latent-batch-norm", "-0.5"], "argument --latent-batch-norm: must be 0 or more"),
        (["train", "--random-start", "yes"], "unrecognized arguments: yes"),
        (["train", "--sample-from", "posterior"], "argument --sample-from: invalid choice"),
        (["generate", "--temperature", "0"], "argument --temperature: must be more than 0"),
        (["generate", "--note-rule", "loud"], "argument --note-rule: invalid choice"),
        (["generate", "--max-pitches-per-step", "97"], "argument --max-pitches-per-step: must be from 0 to 96"),
    ],
)
def test_lever_mistakes_get_one_line_and_exit_code_2(tmp_path, capsys, args, message):
    command, *options = args
    if command == "train":
        options += ["--data", str(make_samples(tmp_path / "samples", 2)), "--output-dir", str(tmp_path / "runs")]
    else:
        options += ["--run", str(tmp_path)]
    try:
        code = mg.main([command, *options])
    except SystemExit as exit:  # argparse's errors
        code = exit.code
    error = capsys.readouterr().err
    assert code == 2 and len(error.strip().splitlines()) == 1 and message in error, error
    assert not (tmp_path / "runs").exists()
