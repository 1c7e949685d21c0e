"""music_generator.py: the model, a whole run folder, resume, generate, errors, real data."""

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pretty_midi
import pytest

import data_loader as dl
import music_generator as mg
from music_vae import callbacks
from music_vae.audio import has_fluidsynth
from music_vae.dataset import SongFiles, split_samples
from music_vae.samples import DataSettings
from music_vae.model import VAE, FusedAdam, ModelConfig, build_encoder, build_vae, precision
from music_vae.peak_speed import training_flops_per_sample
from music_vae.songs import MIN_THRESHOLD, NoteRule, SongStyle, fixed_noise, save_song, strongest_cells, write_songs
from helpers import REPO, VGMIDI, make_samples, needs_vgmidi, parameters_to_run, run_cli, tensorboard_events, train

# Each command-line test of a mistake runs with FluidSynth as installed and, where it is
# installed, hidden: the note that the songs will sound like sine waves must never come
# before the error.
FLUIDSYNTH = (True, False) if has_fluidsynth() else (True,)


# --- the model -----------------------------------------------------------------------------


def test_default_model_has_the_papers_shapes_and_48_500_056_parameters():
    vae = build_vae(ModelConfig())  # the paper's
    assert vae.count_params() == 48_500_056
    shapes = {layer.name: tuple(layer.output.shape) for layer in vae.encoder.layers + vae.decoder.layers}
    assert vae.encoder.input.shape == (None, 16, 9216)
    assert shapes["measure_hidden"] in {(None, 16, 2000)}
    assert shapes["measure_features"] in {(None, 16, 200)}
    assert shapes["song_features"] in {(None, 3200)}
    assert shapes["z_mean"] == shapes["z_log_var"] == shapes["z"] == (None, 120)
    assert [tuple(output.shape) for output in vae.decoder.outputs] == [(None, 16, 9216)]
    decoder_shapes = [tuple(layer.output.shape) for layer in vae.decoder.layers]
    assert decoder_shapes == [
        (None, 120), (None, 1600), (None, 3200), (None, 16, 200), (None, 16, 2000), (None, 16, 9216), (None, 16, 9216),
    ]
    assert [layer.name for layer in vae.decoder.layers[-2:]] == ["song_logits", "song"]  # Dense, then sigmoid
    products = 2 * (
        16 * 2000 * 200 + 3200 * 1600 + 2 * 1600 * 120 + 120 * 1600 + 1600 * 3200 + 16 * 200 * 2000 + 16 * 2000 * 9216
    )
    first_layer = 2 * 16 * 9216 * 2000  # forward and weight gradient only: the songs need no gradient
    assert training_flops_per_sample(vae) == 3 * products + 2 * first_layer == 3_090_816_000


def test_mixed_precision_computes_in_bfloat16_with_float32_weights_and_outputs():
    with precision("bfloat16"):
        vae = build_vae(ModelConfig(measure_hidden=32, measure_features=4, song_hidden=16, latent=4))
    assert keras.mixed_precision.global_policy().name == "float32"  # put back
    assert vae.decoder.get_layer("song_logits").compute_dtype == "bfloat16"
    assert vae.encoder.get_layer("measure_hidden").compute_dtype == "bfloat16"
    assert all(weight.dtype == "float32" for weight in vae.weights)
    assert vae.decoder.get_layer("song").compute_dtype == "float32"
    songs = np.zeros((2, 16, 9216), np.uint8)
    reconstructed, _, _ = vae(songs)
    assert reconstructed.dtype == "float32"
    assert np.isfinite(float(vae.compute_loss(x=songs, y_pred=vae(songs))))


def test_measure_layers_equal_time_distributed_dense():
    encoder = build_encoder(ModelConfig(measure_hidden=7, measure_features=3, song_hidden=5, latent=2))
    dense = encoder.get_layer("measure_hidden")
    reference = keras.layers.TimeDistributed(keras.layers.Dense(7, activation="relu"))
    reference.build((None, 16, 9216))
    reference.set_weights(dense.get_weights())
    songs = (np.random.default_rng(0).random((2, 16, 9216)) < 0.01).astype("float32")
    np.testing.assert_allclose(np.asarray(dense(songs)), np.asarray(reference(songs)), rtol=1e-5, atol=1e-6)


def test_loss_is_summed_squared_error_plus_summed_kl_averaged_over_the_batch():
    rng = np.random.default_rng(0)
    songs = (rng.random((3, 16, 9216)) < 0.01).astype("float32")
    reconstructed = rng.random((3, 16, 9216)).astype("float32")
    z_mean, z_log_var = rng.normal(size=(3, 120)).astype("float32"), rng.normal(size=(3, 120)).astype("float32")
    reconstruction = ((songs - reconstructed) ** 2).sum(axis=(1, 2)).mean()
    kl = (-0.5 * (1 + z_log_var - z_mean**2 - np.exp(z_log_var)).sum(axis=1)).mean()
    for kl_weight in (1.0, 0.25):
        vae = build_vae(ModelConfig(measure_hidden=8, measure_features=2, song_hidden=4, kl_weight=kl_weight))
        loss = vae.compute_loss(x=songs, y_pred=(reconstructed, z_mean, z_log_var))
        assert float(loss) == pytest.approx(reconstruction + kl_weight * kl, rel=1e-5)
        assert float(vae.reconstruction_tracker.result()) == pytest.approx(reconstruction, rel=1e-5)
        assert float(vae.kl_tracker.result()) == pytest.approx(kl, rel=1e-5)
    bce = build_vae(ModelConfig(measure_hidden=8, measure_features=2, song_hidden=4, reconstruction="bce"))
    expected = -(songs * np.log(reconstructed) + (1 - songs) * np.log(1 - reconstructed)).sum(axis=(1, 2)).mean()
    assert float(bce.compute_loss(x=songs, y_pred=(reconstructed, z_mean, z_log_var))) == pytest.approx(
        expected + kl, rel=1e-4
    )


def test_a_model_saved_before_the_code_moved_into_music_vae_still_loads():
    """tests/fixtures/vae_saved_before_music_vae.keras is a tiny VAE (sizes 2, 2, 2, 2) trained
    one epoch (2 steps) and saved by music_generator.py of commit c898596, before its classes
    moved into music_vae/model.py: their registered names stay, and so runs of then still load.
    It was saved with Keras 3.3.3, the oldest the project supports: a newer Keras reads an
    older one's files, but not the other way round."""
    vae = keras.saving.load_model(REPO / "tests" / "fixtures" / "vae_saved_before_music_vae.keras", safe_mode=True)
    assert isinstance(vae, VAE) and isinstance(vae.optimizer, FusedAdam)
    assert keras.ops.convert_to_numpy(vae.optimizer.iterations) == 2
    song = keras.ops.convert_to_numpy(vae.decoder(np.zeros((1, 2), np.float32)))
    np.testing.assert_allclose(song[0, 0, :3], [0.00204409, 0.00204487, 0.00204426], rtol=1e-4)  # as it decoded then


def test_strongest_cells_keeps_exactly_that_many_notes_even_where_values_tie(tmp_path):
    song = np.zeros((16, 9216), np.float32)
    song[0, :5] = [0.9, 0.8, 0.7, 0.2, 0.1]
    kept, threshold = strongest_cells(song, 3)
    assert threshold == pytest.approx(0.7) and np.count_nonzero(kept) == 3 and kept[0, 0] == pytest.approx(0.9)
    tied = np.full((16, 9216), 0.25, np.float32)  # a bfloat16 decoder gives thousands of equal values
    kept, threshold = strongest_cells(tied, 240)
    assert np.count_nonzero(kept >= threshold) == 240
    style = SongStyle(NoteRule(None, 240), bpm=120, lowest_pitch=16)
    assert save_song(tied, tmp_path, "tied", threshold, style, notes_of=kept).notes == 240
    silent, threshold = strongest_cells(np.zeros((16, 9216)), 100)
    assert threshold == MIN_THRESHOLD and not (silent >= threshold).any()


# --- a run ---------------------------------------------------------------------------------


def test_a_one_epoch_run_is_finished_with_its_models_songs_page_and_evaluation(tiny_run):
    """The fast tests' trained run (conftest.py's tiny_run); the slow test below checks a run folder in full."""
    state = json.loads((tiny_run / "state.json").read_text())
    assert state["status"] == "finished" and state["epochs_done"] == 1 and len(state["history"]) == 1
    assert sorted(path.name for path in (tiny_run / "model").iterdir()) == [
        "decoder.keras", "encoder.keras", "latent_density.npz", "vae.keras",
    ]
    names = ["epoch001_song01", "final_song01", "final_song02"]
    assert sorted(path.stem for path in (tiny_run / "generated" / "midi").iterdir()) == names
    assert not (tiny_run / "generated" / "wav").exists()  # --no-audio
    assert "Final songs" in (tiny_run / "index.html").read_text()
    results = json.loads((tiny_run / "evaluation.json").read_text())
    assert sorted(results["songs"]) == ["final_song01", "final_song02"] and results["latent"]["of"] == 4


@pytest.mark.slow
def test_a_short_run_writes_the_whole_run_folder(tmp_path):
    code, run = train(
        tmp_path, "--run-name", "RUN01", "--run-info", "why this run: a test", "--songs", "4", "--log-every", "1"
    )
    assert code == 0
    assert re.fullmatch(r"\d{14}_RUN01", run.name)
    info = (run / f"{run.name}_info.txt").read_text()
    for expected in [
        "why this run: a test", "--lr                     0.001", "--batch-size             4",
        "samples                  12: 10 for training, 1 for validation, 1 for test", "parameters               ",
        "python", "keras", "tensorflow", "devices", "Session:", "Status:   finished, 2 of 2 epochs done",
    ]:
        assert expected in info, expected
    assert re.search(r"^\s+1\s+[\d.]+\s+[\d.]+", info, re.MULTILINE) and re.search(
        r"^\s+2\s+[\d.]+", info, re.MULTILINE
    )
    models = ["decoder.keras", "encoder.keras", "latent_density.npz", "vae.keras"]
    assert sorted(p.name for p in (run / "model").iterdir()) == models
    names = [f"epoch{e:03d}_song{s:02d}" for e in (1, 2) for s in (1, 2, 3)] + [
        f"final_song{s:02d}" for s in range(1, 5)
    ]
    for kind, suffix in (("npy", ".npy"), ("midi", ".mid"), ("img", ".png"), ("wav", ".wav")):
        assert sorted(p.name for p in (run / "generated" / kind).iterdir()) == sorted(n + suffix for n in names)
    song = np.load(run / "generated" / "npy" / "final_song01.npy")
    assert song.shape == (16, 9216) and song.dtype == np.float32
    notes = pretty_midi.PrettyMIDI(str(run / "generated" / "midi" / "final_song01.mid")).instruments[0].notes
    assert len(notes) == pytest.approx(np.mean([np.load(p).sum() for p in (tmp_path / "samples").glob("*.npy")]), abs=3)
    assert all(note.end - note.start > 0.05 for note in notes)
    assert (run / "generated" / "img" / "final_song01.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    events = {folder: tensorboard_events(run / "logs" / folder) for folder in ("train", "validation", "songs")}
    for tag in ("epoch_loss", "epoch_reconstruction", "epoch_kl"):
        assert [step for step, _ in events["train"][tag]] == [1, 2]
        assert [step for step, _ in events["validation"][tag]] == [1, 2]
    history = json.loads((run / "state.json").read_text())["history"]
    assert [value for _, value in events["train"]["epoch_loss"]] == pytest.approx([row["loss"] for row in history])
    assert [step for step, _ in events["train"]["batch_loss"]] == [1, 2, 3, 4, 5, 6]  # --log-every 1
    # How much of a few training and validation songs their reconstructions rebuild, every epoch.
    for key, split in (("f1", "train"), ("val_f1", "validation")):
        assert all(0 <= row[key] <= 1 for row in history)
        assert [value for _, value in events[split]["epoch_f1"]] == pytest.approx([row[key] for row in history])
    assert [step for step, _ in events["songs"]["song01"]] == [1, 2]


@pytest.mark.slow
def test_the_vae_overfits_a_tiny_dataset():
    """Four songs, a chord each on every beat: the VAE learns to tell them apart.

    With the output bias set to the data's note density, the loss starts at that of a
    silent song, so halving it means reproducing notes, not just turning outputs down.
    """
    songs = np.zeros((4, 16, 96, 96), np.float32)
    for number in range(4):
        songs[number, :, [40 + 3 * number + k for k in range(4)], 0::24] = 1
        songs[number, :, 20 + number, 0] = 1
    songs = songs.reshape(4, 16, 9216)
    keras.utils.set_random_seed(0)
    config = ModelConfig(measure_hidden=128, measure_features=16, song_hidden=64, latent=8, reconstruction="bce")
    vae = build_vae(config, note_density=songs.mean())
    vae.compile(optimizer=keras.optimizers.Adam(0.01))

    def notes_found():
        """For each song, the share of its notes among as many of its reconstruction's strongest cells."""
        reconstructed = np.asarray(vae.decoder(np.asarray(vae.encoder(songs)[0])))  # of z_mean
        found = []
        for song, output in zip(songs, reconstructed):
            notes = int(song.sum())
            strongest = np.argpartition(output.ravel(), -notes)[-notes:]  # as many cells as notes
            found.append(song.ravel()[strongest].mean())
        return found

    # At most the 600 epochs that it always trained, in rounds of 100 that stop once the
    # songs are told apart: after 200 (a third of the time) on the 2-core machine.
    losses = []
    for epochs in range(100, 601, 100):
        losses += vae.fit(songs, batch_size=4, epochs=epochs, initial_epoch=epochs - 100, verbose=0).history["loss"]
        if min(notes_found()) >= 0.95:
            break
    assert losses[-1] < 0.5 * losses[0]
    assert min(notes_found()) >= 0.95, notes_found()  # (nearly) all of every song's notes


@pytest.mark.slow
def test_saved_models_reload_in_safe_mode_and_decode_the_same_song(tmp_path):
    # Songs of z = the noise itself; one song an epoch and one at the end (not the default 3
    # and 10) spare 11 pictures: generate's songs are what this test checks.
    options = ["--sample-from", "prior", "--songs-per-epoch", "1", "--songs", "1", "--no-audio"]
    code, run = train(tmp_path, *options, epochs=1)
    assert code == 0
    z = fixed_noise(2, 4, seed=5)
    decoder = keras.saving.load_model(run / "model" / "decoder.keras", safe_mode=True)
    vae = keras.saving.load_model(run / "model" / "vae.keras", safe_mode=True)
    assert isinstance(vae, VAE) and vae.optimizer.iterations.numpy() == 3
    np.testing.assert_allclose(decoder.predict(z, verbose=0), vae.decoder.predict(z, verbose=0), rtol=1e-6)
    # generate: the same seed gives the same songs, in the run or another folder
    assert mg.main(["generate", "--run", str(run), "--songs", "2", "--seed", "5"]) == 0
    first = np.load(run / "generated" / "npy" / "sample_song02.npy")
    np.testing.assert_allclose(first, decoder.predict(z, verbose=0)[1], rtol=1e-6)
    assert (
        mg.main(["generate", "--run", str(run), "--songs", "2", "--seed", "5", "--output-dir", str(tmp_path / "more")])
        == 0
    )
    np.testing.assert_array_equal(np.load(tmp_path / "more" / "npy" / "sample_song02.npy"), first)
    for kind, suffix in (("midi", ".mid"), ("img", ".png")):
        assert (tmp_path / "more" / kind / f"sample_song01{suffix}").is_file()


@pytest.mark.slow
def test_resume_continues_at_the_epoch_after_the_last_completed_one(tmp_path, capsys):
    # One song an epoch and one at the end, not the default 3 and 10: each session writes the final songs.
    code, run = train(tmp_path, "--songs-per-epoch", "1", "--songs", "1", "--no-audio", epochs=1)
    state = json.loads((run / "state.json").read_text())
    assert (code, state["epochs_done"], state["status"]) == (0, 1, "finished")
    assert mg.main(["train", "--resume", str(run)]) == 2  # all its epochs are done
    capsys.readouterr()
    # What may change (how long, how fast) does, and what would make another run does not; both are said.
    assert mg.main(["train", "--resume", str(run), "--epochs", "3", "--batch-size", "2", "--lr", "0.5"]) == 0
    notes = capsys.readouterr().err
    assert "note: --batch-size 2 from now on (the run had 4)" in notes
    assert "note: --lr 0.5 is ignored: the run keeps 0.001" in notes
    state = json.loads((run / "state.json").read_text())
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3]
    assert (state["parameters"]["batch_size"], state["parameters"]["lr"], state["parameters"]["epochs"]) == (
        2, 0.001, 3,
    )
    assert mg.main(["train", "--resume", str(run), "--epochs", "2"]) == 2  # done epochs stay done
    other = make_samples(tmp_path / "other", 4)
    DataSettings(lowest_pitch=20).write(other)
    capsys.readouterr()
    # Samples of another pitch window are not the run's to train on.
    assert mg.main(["train", "--resume", str(run), "--epochs", "4", "--data", str(other)]) == 2
    assert "holds samples of 16 measures from MIDI note 20, the run's are of 16 from 16" in capsys.readouterr().err
    assert [session["from_epoch"] for session in state["sessions"]] == [0, 1]
    # 10 training samples: 3 batches of 4 in epoch 1, then 5 of 2 in epochs 2 and 3
    assert keras.saving.load_model(run / "model" / "vae.keras").optimizer.iterations.numpy() == 3 + 5 + 5
    assert (run / "generated" / "npy" / "epoch003_song01.npy").is_file()


@pytest.mark.slow
def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_model(tmp_path, monkeypatch, capsys):
    data = make_samples(tmp_path / "samples", 8)
    real_write_songs = write_songs

    def write_songs_then_diverge(decoder, *args, **kwargs):
        written = real_write_songs(decoder, *args, **kwargs)
        bias = decoder.get_layer("song_logits").bias  # as if a step had diverged
        bias.assign(np.full(bias.shape, np.nan, np.float32))
        return written

    monkeypatch.setattr(callbacks, "write_songs", write_songs_then_diverge)
    code, run = train(tmp_path, data=data, epochs=3)
    assert code == 1
    assert "training stopped: the loss became nan in epoch 2" in capsys.readouterr().err
    state = json.loads((run / "state.json").read_text())
    assert state["epochs_done"] == 1 and state["status"].startswith("stopped")
    vae = keras.saving.load_model(run / "model" / "vae.keras")
    assert all(np.isfinite(weight).all() for weight in vae.get_weights())
    assert not (run / "generated" / "npy" / "epoch002_song01.npy").exists()


@pytest.mark.slow
def test_malformed_samples_are_reported_and_skipped(tmp_path, capsys):
    data = make_samples(tmp_path / "samples", 6)
    np.save(data / "wrong_shape.npy", np.zeros((8, 9216), np.uint8))
    np.save(data / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (data / "text.npy").write_text("not numpy")
    (data / "truncated.npy").write_bytes((data / "song000.npy").read_bytes()[:1000])
    code, run = train(tmp_path, "--songs-per-epoch", "1", "--songs", "1", "--no-audio", data=data, epochs=1)
    assert code == 0
    err = capsys.readouterr().err
    for name in ("wrong_shape.npy", "objects.npy", "text.npy", "truncated.npy"):
        assert name in err
    assert f"note: {data} has no settings.json (data_loader.py writes one)" in err  # said, not silently assumed
    assert "malformed, skipped       4" in (run / f"{run.name}_info.txt").read_text()


def test_a_file_that_breaks_during_training_is_replaced_by_silence(tmp_path, capsys):
    data = make_samples(tmp_path / "samples", 3)
    files = SongFiles(sorted(data.glob("*.npy")), batch_size=3, shape=(16, 9216))
    (data / "song001.npy").write_text("gone bad")
    batch = files[0]
    assert batch.shape == (3, 16, 9216) and batch.dtype == np.uint8
    assert batch[1].sum() == 0 and batch[0].sum() > 0
    assert "song001.npy" in capsys.readouterr().err


def test_dataset_reshuffles_every_epoch_and_repeats_for_the_same_seed(tmp_path):
    data = make_samples(tmp_path / "samples", 10)
    paths = sorted(data.glob("*.npy"))
    files = SongFiles(paths, batch_size=4, shape=(16, 9216), shuffle=True, seed=3)
    first = files.order.copy()
    files.on_epoch_end()  # Keras calls it at times of its own: it must not change the order
    np.testing.assert_array_equal(first, files.order)
    files.start_epoch(1)
    assert not np.array_equal(first, files.order)
    again = SongFiles(paths, batch_size=4, shape=(16, 9216), shuffle=True, seed=3)
    again.start_epoch(1)
    np.testing.assert_array_equal(again.order, files.order)
    assert len(files) == 3 and files[2].shape == (2, 16, 9216)


@pytest.mark.slow
def test_every_epoch_reads_the_order_of_its_own_number_even_when_steps_are_slow(tmp_path, monkeypatch, capsys):
    """The order of epoch N is that of (seed, N), whatever Keras' reader threads do between
    epochs: Keras 3.3's thread calls PyDataset.on_epoch_end by itself once a step takes
    over 0.1 s, so counting those calls mixed two orders in one epoch."""
    now, reads = {}, []
    callback_list, read = keras.callbacks.CallbackList, SongFiles.__getitem__
    begin_epoch, end_batch = callback_list.on_epoch_begin, callback_list.on_train_batch_end

    def epoch_begins(self, epoch, logs=None):
        now["epoch"] = epoch
        return begin_epoch(self, epoch, logs)

    def slow_batch_ends(self, batch, logs=None):
        time.sleep(0.3)
        return end_batch(self, batch, logs)

    def recorded_read(self, index):
        if self.shuffle and "epoch" in now:  # training batches, once fit has begun
            reads.append((now["epoch"], self.epoch))
        return read(self, index)

    monkeypatch.setattr(callback_list, "on_epoch_begin", epoch_begins)
    monkeypatch.setattr(callback_list, "on_train_batch_end", slow_batch_ends)
    monkeypatch.setattr(SongFiles, "__getitem__", recorded_read)
    code, _ = train(tmp_path, "--songs-per-epoch", "0", "--songs", "0", "--no-audio", epochs=3)
    assert code == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 3: model saved")]
    assert len(said) == 1 and "songs with" not in said[0]  # --songs 0: no "songs with  notes"
    assert {epoch for epoch, _ in reads} == {0, 1, 2}
    assert all(order == epoch for epoch, order in reads), reads


def test_a_load_that_trips_over_another_threads_parser_is_tried_again(tmp_path, monkeypatch):
    """CPython 3.11's parser, which np.load reads a header with, failed once in a reader
    thread while TensorFlow traced the training step (seen in a full test run)."""
    paths = sorted(make_samples(tmp_path / "samples", 4).glob("*.npy"))
    load, failures = np.load, [SystemError("AST constructor recursion depth mismatch (before=39, after=36)")] * 2

    def tripping_load(path, *args, **kwargs):
        if failures:
            raise failures.pop()
        return load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", tripping_load)
    songs = SongFiles(paths, batch_size=4, shape=(16, 9216))
    assert np.array_equal(songs[0][0], (load(paths[0]) != 0)) and not songs.unreadable


def test_validation_and_test_splits_keep_the_samples_of_one_song_together(tmp_path):
    data = make_samples(tmp_path / "samples", 24)
    paths = sorted(data.glob("*.npy"))
    with open(data / "index.csv", "w") as index:
        index.write("sample,source,first_measure,n_notes\n")
        for number, path in enumerate(paths):
            index.write(f"{path.name},song{number // 3}.mid,{16 * (number % 3)},1\n")
    training, validation, test = split_samples(paths, 0.125, seed=0, data_dir=data)
    assert len(validation) == 3 and len(training) == 21 and test == []
    assert len({int(path.stem[4:]) // 3 for path in validation}) == 1  # the three samples of one song
    held_out = split_samples(paths, 0.125, seed=0, data_dir=data, test_split=0.25)
    assert held_out[1] == validation  # a test split leaves the validation split as it was
    assert len(held_out[2]) == 6 and len(held_out[0]) == 15
    songs = [{int(path.stem[4:]) // 3 for path in split} for split in held_out]
    assert len(songs[2]) == 2 and not songs[0] & songs[2] and not songs[1] & songs[2]
    assert sorted(path for split in held_out for path in split) == paths


# --- mistakes --------------------------------------------------------------------------------

MISTAKES = [  # (case, what its one line says)
    ("missing", "data folder .* does not exist"), ("empty", "no .npy samples in"),
    ("wrong", "none of the 2 .npy files .* is a sample: .* shape \\(16, 100\\)"),
    ("not_a_run", "is not a run folder"), ("unwritable", "cannot create the run folder"),
    ("bad_name", "run name 'a b' may hold only"), ("bad_flag", "argument --lr: must be more than 0"),
    ("no_data", "pass --data SAMPLES_DIR"),
    ("bad_settings", "settings.json does not hold the settings of data_loader.py"),
]


def mistake(tmp_path, case):
    """Lay out ``tmp_path`` for the mistake ``case``; return its command line."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "wrong").mkdir()
    for name in ("a", "b"):
        np.save(tmp_path / "wrong" / f"{name}.npy", np.zeros((16, 100)))
    (tmp_path / "file").write_text("a file")
    samples = make_samples(tmp_path / "samples", 2)
    (make_samples(tmp_path / "bad_settings", 2) / "settings.json").write_text('{"lowest_pitch": "sixteen"}')
    return {
        "missing": ["train", "--data", tmp_path / "missing"], "empty": ["train", "--data", tmp_path / "empty"],
        "wrong": ["train", "--data", tmp_path / "wrong"], "not_a_run": ["generate", "--run", tmp_path / "empty"],
        "unwritable": ["train", "--data", samples, "--output-dir", tmp_path / "file" / "runs"],
        "bad_name": ["train", "--data", samples, "--run-name", "a b"],
        "bad_flag": ["train", "--data", samples, "--lr", "-1"], "no_data": ["train"],
        "bad_settings": ["train", "--data", tmp_path / "bad_settings"],
    }[case]


def everything(tmp_path):
    """What lies in a mistake's folder and in the default output folder."""
    return {*tmp_path.rglob("*"), *(REPO / "runs").glob("*")}


@pytest.fixture(scope="module", autouse=True)
def mistakes(request, tmp_path_factory):
    """{case: (its folder, everything in it before, a future of its processes, one for each of
    FLUIDSYNTH)} for the mistake tests of this module that are to run. From the module's first
    test on, a thread runs these processes one after another, each spending most of its 4.5 s
    importing TensorFlow on one core, while the tests before them train in this process on the
    other."""
    cases = parameters_to_run(request, "case")
    pool = ThreadPoolExecutor(max_workers=1)
    started = {}
    for case in cases:  # the folders made here, in pytest's thread, not in the pool's
        folder = tmp_path_factory.mktemp(case)
        args = mistake(folder, case)
        processes = pool.submit(lambda args: [run_cli(*args, fluidsynth=shown) for shown in FLUIDSYNTH], args)
        started[case] = folder, everything(folder), processes
    yield started
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize(("case", "message"), MISTAKES, ids=[case for case, _ in MISTAKES])
@pytest.mark.slow
def test_user_mistakes_get_one_line_and_exit_code_2(mistakes, case, message):
    """Each mistake in a fresh process (what TensorFlow says as it starts would show), with
    FluidSynth as installed and hidden (see FLUIDSYNTH)."""
    folder, before, processes = mistakes[case]
    for fluidsynth, result in zip(FLUIDSYNTH, processes.result()):
        assert result.returncode == 2, (fluidsynth, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (fluidsynth, result.stderr)
        assert re.search(message, result.stderr), (fluidsynth, result.stderr)
    assert everything(folder) == before  # nothing written, not even an empty run folder


# --- real data, end to end ---------------------------------------------------------------------


@needs_vgmidi
@pytest.mark.slow
def test_from_real_midi_files_to_generated_midi_files(tmp_path):
    midi = tmp_path / "midi"
    midi.mkdir()
    for path in sorted(VGMIDI.glob("*.mid"))[:24]:
        (midi / path.name).symlink_to(path)
    assert dl.main([str(midi), str(tmp_path / "samples"), "--no-progress"]) == 0
    code, run = train(tmp_path, data=tmp_path / "samples", epochs=1)
    assert code == 0
    for number in range(1, 11):
        notes = (
            pretty_midi.PrettyMIDI(str(run / "generated" / "midi" / f"final_song{number:02d}.mid")).instruments[0].notes
        )
        assert len(notes) > 50
    # The evaluation at the end judged them against the real samples.
    results = json.loads((run / "evaluation.json").read_text())
    assert len(results["songs"]) == 10 and results["compared"]["data_samples"] == len(
        list((tmp_path / "samples").glob("*.npy"))
    )
    assert results["silent_songs"] == [] and 0 < results["mean_overlap"] <= 1
    assert 0.5 < results["data_diversity"] <= 1  # real songs differ from one another
    real = results["features"]
    assert 1 < real["notes_per_measure"]["data_mean"] < 100 and 0 < real["pitch_class_entropy"]["data_mean"] <= np.log2(
        12
    )
