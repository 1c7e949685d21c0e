"""A training run stopped at any moment (killed, Ctrl-C, a full disk) and resumed with
``train --resume`` ends as the run it would have been: complete, every epoch once, the same
losses and songs as a run never stopped, and nothing half written left behind.

The runs are stopped by tests/stop_at.py, at moments named by what the run is doing."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pretty_midi
import pytest

import music_generator as mg
from music_vae import callbacks, files
from music_vae.run_folder import RunFolder
from helpers import REPO, SMALL, make_samples, parameters_to_run, train

posix = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and Python's SIGINT handling are POSIX's")

EPOCHS = 2
OPTIONS = [
    "--epochs", str(EPOCHS), "--batch-size", "4", "--lr", "0.001", *SMALL, "--songs-per-epoch", "2", "--songs", "2",
]
BATCHES = 3  # 11 training samples of the 12, in batches of 4
SONGS = [f"epoch{epoch:03d}_song{song:02d}" for epoch in range(1, EPOCHS + 1) for song in (1, 2)]
SONGS += ["final_song01", "final_song02"]


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return make_samples(tmp_path_factory.mktemp("stopped") / "samples", 12)


@pytest.fixture(scope="module")
def uninterrupted(samples):
    """The run as it is when nothing stops it, trained in this process (a subprocess would
    import TensorFlow anew: 5 s); the stopped runs, trained in subprocesses, must equal it."""
    output = samples.parent / "uninterrupted"
    assert mg.main(["train", "--data", str(samples), "--output-dir", str(output), *OPTIONS]) == 0
    (run,) = output.iterdir()
    return run


def stop_at(moment, samples, output):
    """Train in a process that ``moment`` stops (see stop_at.py); return it and its run folder."""
    command = [sys.executable, str(REPO / "tests" / "stop_at.py"), moment]
    command += ["train", "--data", str(samples), "--output-dir", str(output), *OPTIONS]
    # A script's own folder (tests/) is on its path, the repository is not.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    process = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    (run,) = output.iterdir()
    return process, run


@pytest.fixture(scope="module", autouse=True)
def stopped(request, samples, tmp_path_factory):
    """{moment: a future of stop_at(moment)} for the tests of this module that are to run (their
    ``moment`` parameter), in their order. From the module's first test on, a thread runs the
    processes one after another, while the tests train and resume runs in this process: both
    cores busy, where a test that ran its own process kept one busy at a time (the module took
    300 s so on the 2-core machine, 120 s this way)."""
    moments = parameters_to_run(request, "moment")
    if sys.platform == "win32":
        moments = []  # their tests skip (posix)
    pool = ThreadPoolExecutor(max_workers=1)
    # The folders are made here, in pytest's thread, not in the pool's.
    yield {moment: pool.submit(stop_at, moment, samples, tmp_path_factory.mktemp("stop")) for moment in moments}
    pool.shutdown(cancel_futures=True)  # a run no test waits for any more (pytest -x) is not started


def partial_files(run):
    return [path for path in run.rglob("*") if ".part" in path.name]


def state_of(run):
    return json.loads((run / "state.json").read_text())


def assert_resumes_to_the_uninterrupted_run(run, uninterrupted):
    assert mg.main(["train", "--resume", str(run)]) == 0  # in this process: TensorFlow is imported once
    state = state_of(run)
    assert state["status"] == "finished"
    assert [row["epoch"] for row in state["history"]] == list(range(1, EPOCHS + 1))  # each epoch once
    assert not partial_files(run), partial_files(run)
    models = ["decoder.keras", "encoder.keras", "latent_density.npz", "vae.keras"]  # the density of the last epoch
    assert sorted(path.name for path in (run / "model").iterdir()) == models
    for name in ("encoder", "decoder"):
        assert isinstance(keras.saving.load_model(run / "model" / f"{name}.keras", safe_mode=True), keras.Model)
    vae = keras.saving.load_model(run / "model" / "vae.keras", safe_mode=True)
    assert int(vae.optimizer.iterations.numpy()) == EPOCHS * BATCHES  # the model of the last epoch, trained once

    listed = re.findall(r'<img loading="lazy" src="generated/img/([^"]+)\.png"', (run / "index.html").read_text())
    assert sorted(listed) == sorted(SONGS)
    for name in listed:  # every song the page lists is complete
        assert np.load(run / "generated" / "npy" / f"{name}.npy").shape == (16, 9216)
        assert pretty_midi.PrettyMIDI(str(run / "generated" / "midi" / f"{name}.mid")).instruments[0].notes
        with wave.open(str(run / "generated" / "wav" / f"{name}.wav")) as audio:
            assert audio.getnframes() > 30 * audio.getframerate()
        assert (run / "generated" / "img" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(json.loads((run / "evaluation.json").read_text())["songs"]) == ["final_song01", "final_song02"]

    # The run it would have been: the same losses, epoch by epoch, and the same songs.
    reference = state_of(uninterrupted)
    for row, expected in zip(state["history"], reference["history"]):
        for key in ("loss", "reconstruction", "kl", "val_loss"):
            assert row[key] == pytest.approx(expected[key], rel=1e-6), (row["epoch"], key)
    for name in SONGS:
        ours, theirs = (np.load(folder / "generated" / "npy" / f"{name}.npy") for folder in (run, uninterrupted))
        np.testing.assert_allclose(ours, theirs, atol=1e-6, err_msg=name)


# The tests in this process come first: the stopped runs of the tests after them train and
# stop in their subprocesses meanwhile (see the fixture stopped).

FULL_DISK = [  # (the file the disk fills on, epochs recorded by then)
    ("model/epoch001/vae.keras", 0),  # before the first epoch ends: resuming starts the run again
    ("generated/wav/epoch002_song01.wav", 1),
]


def fill_the_disk_at(monkeypatch, where):
    """Make the write of the file whose path ends in ``where`` fail halfway, as on a full disk."""
    write_part = files.write_part

    def disk_fills(path, write, suffix=""):
        if not str(path).endswith(where):
            return write_part(path, write, suffix)

        def half_then_full(part):
            Path(part).write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        return write_part(path, half_then_full, suffix)

    monkeypatch.setattr(files, "write_part", disk_fills)


@pytest.mark.parametrize(("where", "recorded"), FULL_DISK, ids=[where for where, _ in FULL_DISK])
@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_resumed_run_completes(tmp_path, monkeypatch, capsys, where, recorded):
    """The disk fills while ``where`` is written: one line saying how to continue, what was
    recorded kept, nothing half written left, and the resumed run finishes."""
    fill_the_disk_at(monkeypatch, where)
    # One song an epoch and one at the end, not the default 3 and 10: enough for a disk full on a WAV file.
    code, run = train(tmp_path, "--songs-per-epoch", "1", "--songs", "1", epochs=2)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1
    assert error == (
        f"music_generator.py: error: No space left on device ({run / where}); "
        f"when fixed, continue with: python music_generator.py train --resume {run}"
    )
    state = state_of(run)
    assert (state["epochs_done"], state["status"]) == (recorded, f"failed after epoch {recorded}: OSError")
    assert not partial_files(run)
    if not recorded:
        assert mg.main(["generate", "--run", str(run)]) == 2
        assert "has no trained model in place yet" in capsys.readouterr().err

    monkeypatch.undo()
    assert mg.main(["train", "--resume", str(run)]) == 0
    assert ("it starts again from epoch 1" in capsys.readouterr().err) == (not recorded)
    state = state_of(run)
    assert state["status"] == "finished" and [row["epoch"] for row in state["history"]] == [1, 2]


def test_a_disk_full_before_the_run_is_saved_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    fill_the_disk_at(monkeypatch, "state.json")
    code, run = train(tmp_path)
    assert code == 1 and run is None  # nothing to resume, nothing to mislead
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("music_generator.py: error: No space left on device")


def test_a_run_being_trained_is_not_resumed_by_a_second_process(tmp_path, capsys, tiny_run):
    run = shutil.copytree(tiny_run, tmp_path / tiny_run.name)  # a finished run of 1 epoch
    before = (run / "state.json").read_bytes()
    (run / "generated" / "img" / "epoch002_song01.png").write_bytes(b"as if a training of epoch 2 were writing it")
    with RunFolder(run).training():  # as the process training it does
        assert mg.main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    assert "is being trained by another process" in capsys.readouterr().err
    assert (run / "state.json").read_bytes() == before
    assert (run / "generated" / "img" / "epoch002_song01.png").exists()  # not cleaned away from under it


KILLS = [  # (kill@when, epochs recorded when the kill comes)
    ("kill@batch:1:2", 0),  # in the first epoch: nothing is recorded, and resuming starts it again
    ("kill@batch:2:2", 1),  # in an epoch
    ("kill@write:epoch002/encoder.keras", 1),  # while saving the models
    ("kill@write:wav/epoch002_song02.wav", 1),  # while writing an epoch's songs
    ("kill@call:run_folder.RunFolder.use_models:1", 1),  # an epoch recorded, its models not yet in place
    ("kill@call:run_folder.RunFolder.use_models:2", EPOCHS),  # the same after the last epoch
    ("kill@write:midi/final_song02.mid", EPOCHS),  # while writing the final songs
    ("kill@call:evaluation.reconstruction_scores", EPOCHS),  # during the final evaluation
]


@posix
@pytest.mark.parametrize(("moment", "recorded"), KILLS, ids=[moment[len("kill@") :] for moment, _ in KILLS])
@pytest.mark.slow
def test_a_run_killed_at_any_moment_resumes_to_the_run_it_would_have_been(stopped, uninterrupted, moment, recorded):
    """Killed (SIGKILL) at ``moment``: what it recorded is intact, and resumed it is the run never stopped."""
    killed, run = stopped[moment].result()
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    state = state_of(run)
    assert (state["epochs_done"], state["status"]) == (recorded, "training")
    if moment.startswith("kill@write:"):
        assert partial_files(run)  # half-written: what resuming must clear away
    assert_resumes_to_the_uninterrupted_run(run, uninterrupted)


CTRL_C = [  # (how@when, epochs recorded, what the message says to do)
    ("ctrl-c@batch:2:2", 1, "Continue with: python music_generator.py train --resume"),
    # Pressed while the last epoch is saved: the epoch is recorded, and the run stops before its final songs.
    ("ctrl-c@write:epoch002/vae.keras", EPOCHS, "write them with: python music_generator.py train --resume"),
    ("ctrl-c-twice@write:epoch002/vae.keras", 1, "Continue with: python music_generator.py train --resume"),
    ("ctrl-c@write:img/final_song01.png", EPOCHS, "write them with: python music_generator.py train --resume"),
]


@posix
@pytest.mark.parametrize(("moment", "recorded", "advice"), CTRL_C, ids=[moment for moment, _, _ in CTRL_C])
@pytest.mark.slow
def test_ctrl_c_stops_the_run_where_it_is_safe_and_it_resumes_to_the_run_it_would_have_been(
    stopped, uninterrupted, moment, recorded, advice
):
    """Once: before the next training batch, an epoch whose batches are done still recorded.
    Twice, or after training: at once. Each time with the command that continues the run."""
    interrupted, run = stopped[moment].result()
    assert interrupted.returncode == 130, interrupted.stderr[-3000:]
    assert advice in interrupted.stderr and "Traceback" not in interrupted.stderr, interrupted.stderr[-3000:]
    state = state_of(run)
    assert (state["epochs_done"], state["status"]) == (recorded, f"interrupted after epoch {recorded}")
    assert not partial_files(run)  # Python's KeyboardInterrupt reaches the writers, which clean up
    assert_resumes_to_the_uninterrupted_run(run, uninterrupted)


@posix
def test_ctrl_c_handling_takes_sigint_only_where_the_process_has_not_ignored_it():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        with callbacks.CtrlC() as ctrl_c:
            assert signal.getsignal(signal.SIGINT) == ctrl_c.press
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        # Started in the background (`cmd &` without job control) or by nohup: ignored, and so it stays.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with callbacks.CtrlC():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
