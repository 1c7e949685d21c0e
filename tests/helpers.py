"""Plain helpers that several test files share: where the repository, the real MIDI corpus
and the screenshots are, tiny samples, a tiny training run in this process, the command line
in a fresh one, TensorBoard's events, and Chromium. The fixtures built on them are in
conftest.py; MIDI files built by hand are in midi_files.py.

pytest.ini puts the repository, tests/ and bench/ on the path, so a test file imports these
as ``from helpers import ...``. TensorFlow and music_generator are imported where they are
first needed, so that the data_loader tests start without them.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
VGMIDI = Path(os.environ.get("VGMIDI_DIR", REPO.parent / "shared" / "midi" / "vgmidi"))
needs_vgmidi = pytest.mark.skipif(
    not VGMIDI.is_dir(), reason=f"the real MIDI corpus is not at {VGMIDI} (CI has ../shared beside the repository)"
)
SCREENSHOTS = REPO / "tests" / "screenshots"

# Small sizes keep the tests fast; the default sizes are checked on the model alone.
SMALL = ["--measure-hidden", "32", "--measure-features", "4", "--song-hidden", "16", "--latent", "4"]


def make_samples(folder, count, seed=0):
    """``count`` 16-measure samples of a melody over a bass, each song its own transposition."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for number in range(count):
        song = np.zeros((16, 96, 96), np.uint8)
        key = int(rng.integers(0, 12))
        for measure in range(16):
            song[measure, 20 + key, 0] = 1
            for step in range(0, 96, 12):
                song[measure, 44 + key + int(rng.integers(0, 12)), step] = 1
        np.save(folder / f"song{number:03d}.npy", song.reshape(16, 9216))
    return folder


def train(tmp_path, *extra, data=None, epochs=2):
    """Train a tiny run in this process (``music_generator.main``) into ``tmp_path/runs``, on
    ``data`` (default: 12 samples of make_samples); return (exit code, run folder or None)."""
    import music_generator as mg

    data = data or make_samples(tmp_path / "samples", 12)
    argv = [
        "train", "--data", str(data), "--output-dir", str(tmp_path / "runs"), "--epochs", str(epochs), "--batch-size",
        "4", "--lr", "0.001", *SMALL, *extra,
    ]
    code = mg.main(argv)
    runs = sorted((tmp_path / "runs").iterdir()) if (tmp_path / "runs").exists() else []
    return code, runs[-1] if runs else None


def run_cli(*args, fluidsynth=None, **kwargs):
    """Run music_generator.py; ``fluidsynth=False`` hides FluidSynth from it, as on a machine
    without, and True does not (None: as the environment says)."""
    from music_vae.audio import HIDE_FLUIDSYNTH

    env = dict(os.environ)
    if fluidsynth is not None:
        env[HIDE_FLUIDSYNTH] = "0" if fluidsynth else "1"
    command = [sys.executable, str(REPO / "music_generator.py"), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, **kwargs)


def tensorboard_events(folder):
    """{tag: [(step, value or image)]} of the event files in ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    accumulator.Reload()
    events = {}
    for tag in accumulator.Tags()["tensors"]:
        for event in accumulator.Tensors(tag):
            array = tensor_util.make_ndarray(event.tensor_proto)
            events.setdefault(tag, []).append((event.step, float(array) if array.ndim == 0 else array))
    return events


def find_chromium():
    """The path of a Chromium (or Chrome) executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def roll_picture(page):
    """The piano roll of an explore page (a playwright page) as a data URL: the same picture, the same roll."""
    return page.evaluate("document.getElementById('roll').toDataURL()")


def after_a_draw(page, action):
    """Call ``action()`` on an explore page and wait until the page has drawn its roll again and settled."""
    draws = page.evaluate("window.explorer.state.draws")
    action()
    page.wait_for_function(f"window.explorer.state.draws > {draws} && window.explorer.settled()")


@contextlib.contextmanager
def static_server(folder):
    """``python -m http.server`` serving ``folder`` on a free port, as a user serves an export:
    its address, once it answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(address, timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield address
    finally:
        server.terminate()
        server.wait()


def parameters_to_run(request, name):
    """The values of parameter ``name`` of the tests of ``request``'s module that this session
    is to run, in their order: what a module fixture starts in the background for them."""
    return [
        item.callspec.params[name] for item in request.session.items
        if item.module is request.module and name in getattr(getattr(item, "callspec", None), "params", {})
    ]


def exit_code_and_error(argv, capsys):
    """(exit code, stderr) of ``music_generator.main(argv)``, argparse's own mistakes included."""
    import music_generator as mg

    try:
        code = mg.main(argv)
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err.strip()
