"""Training options for speed (precision, XLA, cache), their measures, flat memory, and
the same training, generation and model loading on every Keras backend."""

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest

import music_generator as mg
from music_vae.callbacks import Speedometer, StepsAhead
from music_vae.dataset import SongFiles
from music_vae.model import FusedAdam, ModelConfig, build_vae
from music_vae.peak_speed import peak_flops
from music_vae.songs import fixed_noise
from helpers import REPO, SMALL, make_samples, parameters_to_run, tensorboard_events, train
from memory import growth, resident_per_epoch  # bench/memory.py

tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="FusedAdam fuses on TensorFlow only"
)


@tensorflow_only
def test_fused_adam_updates_the_weights_as_keras_adam_does():
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=shape).astype("float32") for shape in ((300, 7), (7,), (4, 4))]
    grads = [[rng.normal(size=w.shape).astype("float32") for w in weights] for _ in range(3)]
    results = []
    for optimizer in (keras.optimizers.Adam(0.01), FusedAdam(0.01, fuse=True)):
        variables = [keras.Variable(w) for w in weights]
        for step in grads:
            optimizer.apply([keras.ops.convert_to_tensor(g) for g in step], variables)
        results.append([np.asarray(v) for v in variables])
    assert FusedAdam(0.01, fuse=True).get_config()["fuse"] is True
    for keras_adam, fused in zip(*results):
        np.testing.assert_allclose(fused, keras_adam, rtol=1e-5, atol=1e-7)


def test_cached_batches_are_packed_and_unpack_to_the_batches_read_from_disk(tmp_path):
    paths = sorted(make_samples(tmp_path / "samples", 10).glob("*.npy"))
    disk = SongFiles(paths, 4, (16, 9216), shuffle=True, seed=1)
    cache = SongFiles(paths, 4, (16, 9216), shuffle=True, seed=1, cache=True)
    assert cache.bank.nbytes == (10 * 16 + 1) * 9216 // 8  # 18 KB a sample, and one empty measure
    vae = build_vae(ModelConfig(measure_hidden=8, measure_features=2, song_hidden=4, latent=3))
    for index in range(len(disk)):
        assert cache[index].shape[-1] == 1152 and cache[index].dtype == np.uint8
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(vae.unpacked(cache[index])), disk[index])


@pytest.mark.parametrize(
    "options", [["--precision", "bfloat16", "--cache"], ["--precision", "float16"], ["--jit"], ["--no-jit", "--cache"]],
    ids=["bfloat16-cache", "float16", "jit", "no-jit-cache"],
)
@pytest.mark.slow
def test_every_speed_option_trains_and_its_model_reloads(tmp_path, options):
    code, run = train(tmp_path, *options, "--songs", "1", epochs=1)
    assert code == 0
    assert keras.mixed_precision.global_policy().name == "float32"  # the run's precision was its own
    state = json.loads((run / "state.json").read_text())
    assert state["parameters"]["precision"] == (options[1] if options[0] == "--precision" else "float32")
    assert state["speed"]["cache"] == ("--cache" in options)
    assert state["speed"]["jit"] == ("--jit" in options)
    decoder = keras.saving.load_model(run / "model" / "decoder.keras")
    song = decoder.predict(fixed_noise(1, 4, 0), verbose=0)
    assert song.dtype == np.float32 and np.isfinite(song).all()
    assert mg.main(["generate", "--run", str(run), "--songs", "1", "--seed", "1"]) == 0


@pytest.mark.slow
def test_progress_and_tensorboard_show_samples_per_second_and_mfu(tmp_path, capsys):
    code, run = train(tmp_path, "--log-every", "1", "--songs", "1", epochs=2)
    assert code == 0
    progress = capsys.readouterr().out
    assert "samples_per_s: " in progress and "mfu: " in progress
    history = json.loads((run / "state.json").read_text())["history"]
    assert all(row["samples_per_s"] > 0 and 0 < row["mfu"] < 1 for row in history)
    events = tensorboard_events(run / "logs" / "train")
    assert {"epoch_samples_per_s", "epoch_mfu", "batch_samples_per_s"} <= set(events)
    assert "samples_per_s" in (run / f"{run.name}_info.txt").read_text()


def test_peak_flops_is_a_plausible_measure():
    peak = peak_flops("float32", seconds=0.1)
    assert 1e9 < peak < 1e16


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="resident memory is read from /proc (Linux)")
@pytest.mark.slow
def test_memory_stays_flat_over_epochs_read_from_disk():
    resident = resident_per_epoch(8, samples=48, batch_size=8, extra=SMALL)
    assert len(resident) == 8
    assert growth(resident) < 0.05, [round(r / 2**20) for r in resident]


def train_resume_and_generate(backend, tmp_path):
    """On ``backend``: train a tiny run in ``tmp_path``, resume it, generate a song and load its
    model, each in a process of its own that imports the backend anew, and check each step."""
    data = make_samples(tmp_path / "samples", 8)
    env = {**os.environ, "KERAS_BACKEND": backend}

    def run(*args):
        result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    out = run(
        "music_generator.py", "train", "--data", str(data), "--output-dir", str(tmp_path / "runs"), "--epochs", "2",
        "--batch-size", "4", "--lr", "0.001", "--cache", "--precision", "bfloat16", *SMALL, "--songs", "2",
        # As many songs each epoch as at the end: one batch shape fewer for JAX to compile.
        "--songs-per-epoch", "2",
        # The levers of issue 13 too: a KL weight that a compiled step must read anew every epoch.
        "--kl-warmup", "2", "--kl-cycle", "0", "--free-bits", "0", "--transpose", "2", "--dropout", "0.1",
    )
    assert "Done:" in out
    folder = next((tmp_path / "runs").iterdir())
    assert f"(backend {backend})" in (folder / f"{folder.name}_info.txt").read_text()
    # With JAX on one device, the cache lives on it and each step gathers its batch there.
    assert json.loads((folder / "state.json").read_text())["speed"]["cache_on_device"] == (backend == "jax")
    assert (folder / "generated" / "midi" / "final_song02.mid").is_file()
    run("music_generator.py", "train", "--resume", str(folder), "--epochs", "3")
    vae = folder / "model" / "vae.keras"
    # generate, and the model loaded, in one process: each process imports the backend anew.
    loaded = run(
        "-c",
        f"import keras, music_generator as mg; assert mg.main(['generate', '--run', {str(folder)!r}, '--songs', '1', "
        f"'--seed', '4']) == 0; v = keras.saving.load_model({str(vae)!r}, safe_mode=True); "
        "print(type(v).__name__, v.optimizer.iterations.numpy())",
    )
    assert (folder / "generated" / "midi" / "sample_song01.mid").is_file()
    assert loaded.splitlines()[-1].split() == ["VAE", "6"]  # 2 batches a epoch, 3 epochs
    history = json.loads((folder / "state.json").read_text())["history"]
    assert [row["kl_share"] for row in history] == [0, 0.5, 1]
    kl_cost = history[1]["loss"] - history[1]["reconstruction"]
    assert kl_cost == pytest.approx(0.5 * history[1]["kl"], abs=0.2 * history[1]["kl"])  # half the weight


@pytest.fixture(scope="module", autouse=True)
def on_every_backend(request, tmp_path_factory):
    """{backend: a future of train_resume_and_generate(backend)} for the backend tests that are
    to run where their backend is installed, all started with the module's first test, each in
    a thread. Their processes keep about one core of the two busy (JAX compiles most of its
    60 s, PyTorch trains for 30 s), while the tests before them train in this process on the
    other: the module took 165 s with each backend's processes in its own test."""
    backends = parameters_to_run(request, "backend")
    backends = [backend for backend in backends if importlib.util.find_spec(backend) is not None]
    pool = ThreadPoolExecutor(max_workers=max(len(backends), 1))
    folders = {backend: tmp_path_factory.mktemp(backend) for backend in backends}
    yield {backend: pool.submit(train_resume_and_generate, backend, folders[backend]) for backend in backends}
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.slow
def test_training_generation_and_loading_work_on_every_backend(on_every_backend, backend):
    """The same training (and its resume), generation and model loading on each Keras backend."""
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install -r requirements-test.txt installs it)")
    on_every_backend[backend].result()  # its checks fail here


# --- feeding the device --------------------------------------------------------------------------


def song_moved_alone(samples, index, after, start, semitones, shift):
    """Song ``index`` of ``samples`` (songs, 16, 9216), from measure ``start`` on into sample
    ``after``, moved as far up or down as its notes allow: one song at a time, with np.roll,
    as SongFiles made its batches before it made them all at once."""
    song = samples[index]
    if start and after >= 0:
        song = np.concatenate([song[start:], samples[after][:start]])
    rows = song.reshape(16, 96, 96)
    pitches = np.flatnonzero(rows.any(axis=(0, 2)))
    if semitones and len(pitches):
        lowest, highest = max(-semitones, -pitches[0]), min(semitones, 95 - pitches[-1])
        moved = lowest + min(int(shift * (highest - lowest + 1)), highest - lowest)
        song = np.roll(rows, moved, axis=1).reshape(16, 9216)
    return song


def test_batches_made_at_once_are_the_songs_made_one_at_a_time(tmp_path):
    """The order a resumed run depends on: every song of every batch as the per-song code
    made it, from disk and from the cache, over devices and processes."""
    rng = np.random.default_rng(0)
    samples = (rng.random((14, 16, 9216)) < 0.003).astype(np.uint8)
    samples.reshape(14, 16, 96, 96)[:, :, :30] = 0  # room to move down as far as up...
    samples.reshape(14, 16, 96, 96)[3, :, 90, 0] = 1  # ...but for one near the top
    samples[5] = 0  # and one silent
    paths = []
    for number, sample in enumerate(samples):
        paths.append(tmp_path / f"sample{number:02d}.npy")
        np.save(paths[-1], sample)
    following = [(number + 5) % 14 if number % 3 != 2 else -1 for number in range(14)]  # not the next file
    for cache in (False, True):
        for devices, processes in ((1, (1, 0)), (2, (2, 1))):
            songs = SongFiles(
                paths, 5, (16, 9216), shuffle=True, seed=2, cache=cache, transpose=6, following=following,
                devices=devices, processes=processes,
            )
            for epoch in (0, 1):
                songs.start_epoch(epoch)
                for index in range(len(songs)):
                    order = songs.order[index * 5 : (index + 1) * 5]
                    draws = np.random.default_rng([2, epoch, index])
                    starts, shifts = draws.integers(16, size=len(order)), draws.random(len(order))
                    share = (len(order) - len(order) % devices) // processes[0]
                    places = range(processes[1] * share, (processes[1] + 1) * share)
                    expected = [
                        song_moved_alone(samples, order[p], following[order[p]], starts[p], 6, shifts[p])
                        for p in places
                    ]
                    batch = songs[index]
                    if cache:
                        batch = np.unpackbits(batch, axis=-1)
                    np.testing.assert_array_equal(batch, np.stack(expected), err_msg=f"{cache} {epoch} {index}")


def test_a_bank_on_the_device_gives_the_batches_of_the_bank_in_memory(tmp_path):
    paths = sorted(make_samples(tmp_path / "samples", 10).glob("*.npy"))
    following = [number + 1 if number % 2 == 0 else -1 for number in range(10)]
    options = dict(shuffle=True, seed=1, cache=True, transpose=12, following=following)
    memory = SongFiles(paths, 4, (16, 9216), **options)
    device = SongFiles(paths, 4, (16, 9216), on_device=True, **options)
    assert device.bank is None  # the one copy is the device's
    vae = build_vae(ModelConfig(measure_hidden=8, measure_features=2, song_hidden=4, latent=3))
    moved = 0
    for epoch in (0, 1):
        memory.start_epoch(epoch)
        device.start_epoch(epoch)
        for index in range(len(memory)):
            (rows, moves, bank), = device[index]
            assert rows.shape == (len(memory[index]), 16)  # first: Keras weighs a batch's loss by its length
            gathered = keras.ops.convert_to_numpy(vae.unpacked((rows, moves, bank)))
            np.testing.assert_array_equal(gathered, np.unpackbits(memory[index], axis=-1))
            moved += np.count_nonzero(moves)
    assert moved  # the songs moved: the test can tell a move from none


def test_no_callback_of_a_run_makes_fit_wait_for_every_step(tmp_path, monkeypatch):
    """With JAX, fit dispatches the next step while one runs only where every callback that
    acts after a batch says it is async-safe (Keras' CallbackList): the callbacks of a run,
    as train() gives them to fit, must."""
    given = []
    real_fit = keras.Model.fit

    def fit(self, *args, callbacks=None, **kwargs):
        given.extend(callbacks)
        return real_fit(self, *args, callbacks=callbacks, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit)
    code, _ = train(tmp_path, "--songs", "0", "--songs-per-epoch", "0", "--no-audio", epochs=1)
    assert code == 0 and len(given) >= 6
    base = keras.callbacks.Callback
    for callback in given:
        acts_after_a_batch = any(
            getattr(type(callback), hook) is not getattr(base, hook) for hook in ("on_train_batch_end", "on_batch_end")
        )
        assert getattr(callback, "async_safe", False) or not acts_after_a_batch, type(callback).__name__


def test_callbacks_called_out_of_order_from_threads_count_each_batch_once():
    """Keras calls async-safe callbacks on its own threads, in roughly the order of the steps:
    a late call for an older batch changes nothing, and fit waits, before dispatching a step,
    for the step StepsAhead.limit before it."""
    speed = Speedometer(samples=100, batch_size=10, flops_per_sample=1.0, peak=1.0)
    speed.on_epoch_begin(0)
    speed.on_train_batch_end(0, {})  # the first, compiling step: the clock starts at its end
    logs = [{} for _ in range(5)]
    for batch in (1, 3, 4, 2):  # 2 last
        speed.on_train_batch_end(batch, logs[batch])
    assert speed.latest[0] == 5 and min(logs[4]["samples_per_s"], logs[2]["samples_per_s"]) > 0
    assert speed.speed()["samples_per_s"] == pytest.approx(40 / (speed.latest[1] - speed.started))

    ahead = StepsAhead(limit=2)
    ahead.on_epoch_begin(0)
    ahead.on_train_batch_begin(0)
    ahead.on_train_batch_begin(1)  # one step running: the next may be dispatched
    ended = []
    timer = threading.Timer(0.3, lambda: (ended.append(time.perf_counter()), ahead.on_train_batch_end(0)))
    timer.start()
    ahead.on_train_batch_begin(2)  # two running: waits for the first to end
    began = time.perf_counter()
    timer.join()
    assert ended and began >= ended[0]


def test_a_cache_goes_to_the_device_where_a_quarter_of_its_memory_holds_it():
    from music_vae.distribute import Devices, Processes

    one = Devices(names=["cpu:0"])
    assert one.holds(2**20) and not one.holds(2**60)  # this machine's memory, read from the system
    assert not Devices(names=["cpu:0", "cpu:1"]).holds(1)  # each device would need a copy
    assert not Devices(names=["cpu:0"], processes=Processes(2, 0)).holds(1)
