"""Fixtures that several test files share. The plain helpers they use (tiny samples, a tiny
training run, the command line) are in helpers.py.

Tests marked ``slow`` (registered in pytest.ini) train over several epochs or in
subprocesses, drive Chromium, stop runs or read the real MIDI corpus; ``python -m pytest -m
"not slow"`` runs the rest in about two minutes and still exercises every module of
music_vae/. ``python -m pytest`` runs them all.
"""

from types import SimpleNamespace

import pytest

from helpers import SCREENSHOTS, find_chromium, make_samples, train


@pytest.fixture
def chromium():
    """Headless Chromium driven by playwright: ``.path`` of its executable and
    ``.sync_api``, playwright's module; the test skips, saying why, where either is missing."""
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium: install it (Debian: apt install chromium); .ci/run does")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: pip install -r requirements-test.txt"
    )
    return SimpleNamespace(path=path, sync_api=sync_api)


@pytest.fixture
def screenshots():
    """tests/screenshots/, where the Chromium tests leave a picture of each page."""
    SCREENSHOTS.mkdir(exist_ok=True)
    return SCREENSHOTS


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run of one epoch on 12 samples with the tiny model (a few seconds), with 2 final
    songs and no audio, shared by the fast tests that read a trained run and leave it as it
    is: a test that changes it works on its own copy (shutil.copytree)."""
    folder = tmp_path_factory.mktemp("tiny_run")
    code, run = train(folder, "--songs", "2", "--songs-per-epoch", "1", "--no-audio", epochs=1)
    assert code == 0 and run is not None
    return run


@pytest.fixture
def samples(tmp_path):
    """12 samples of make_samples in ``tmp_path/samples``."""
    return make_samples(tmp_path / "samples", 12)
