"""A run exported to play anywhere (issue 24): the ONNX decoder against Keras' (known answers,
each weight setting, a bfloat16 run), the example that decodes with onnxruntime alone, the
static page in headless Chromium served by a plain file server, and export's mistakes."""

import json
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

import music_generator as mg
from helpers import REPO, after_a_draw, roll_picture, static_server, train
from music_vae import portable, web_runtime
from music_vae.files import UsageError
from music_vae.songs import NoteRule, decode, fixed_noise
from music_vae.trained_run import TrainedRun

onnx = pytest.importorskip("onnx", reason="export's requirements are missing: pip install -r requirements-export.txt")
onnxruntime = pytest.importorskip("onnxruntime", reason="pip install -r requirements-export.txt")
if portable.keras_version() < portable.KERAS_WITH_ONNX:
    pytest.skip("export needs Keras 3.8 or newer (tests/minimum-versions.txt has older)", allow_module_level=True)


@pytest.fixture(scope="module")
def runtime():
    """onnxruntime-web's files, fetched once where missing; the tests that need them skip,
    saying why, where they cannot be fetched."""
    try:
        return web_runtime.runtime_files()
    except UsageError as error:
        pytest.skip(f"no onnxruntime-web: {error}")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny run whose decoder is sure of its notes (a few seconds): the one-epoch run of
    conftest.py gives every cell about the same value, so that which of them are notes
    turns on the seventh digit, where two correct decoders may differ."""
    folder = tmp_path_factory.mktemp("export_run")
    options = ["--kl-weight", "0.01", "--kl-cycle", "0", "--free-bits", "0", "--lr", "0.01", "--batch-size", "2"]
    code, run = train(folder, *options, "--songs", "0", "--songs-per-epoch", "0", "--no-audio", epochs=3)
    assert code == 0
    return run


@pytest.fixture(scope="module")
def exported(tiny_run, runtime, tmp_path_factory):
    """The tiny run exported."""
    folder = tmp_path_factory.mktemp("exported") / "export"
    assert mg.main(["export", "--run", str(tiny_run), "--output-dir", str(folder)]) == 0
    return folder


def notes(values, rule):
    """The 0/1 notes ``rule`` picks from each song of ``values``."""
    return np.stack([kept >= passing for kept, passing in map(rule.apply, values)])


def test_the_onnx_decoder_agrees_with_keras_on_20_songs(tiny_run):
    trained = TrainedRun(tiny_run)
    model = portable.decoder_onnx(trained.decoder)
    assert [value.name for value in model.graph.input] == ["z"] and [v.name for v in model.graph.output] == ["song"]
    latents = trained.density.latents(fixed_noise(20, len(trained.density.mean), 5))
    theirs, ours = decode(trained.decoder, latents), portable.onnx_decode(model.SerializeToString(), latents)
    assert ours.shape == (20, 16, 9216) and np.abs(ours - theirs).max() < 1e-4
    assert np.array_equal(notes(ours, trained.style.rule), notes(theirs, trained.style.rule))
    assert notes(ours, trained.style.rule).any()


def test_smaller_weights_halve_and_quarter_the_decoder_and_say_what_they_change(tiny_run):
    trained = TrainedRun(tiny_run)
    model = portable.decoder_onnx(trained.decoder)
    sizes = {weights: len(portable.with_weights(model, weights).SerializeToString()) for weights in portable.WEIGHTS}
    # int8 keeps a float32 scale a column beside the float32 biases: a third, for the tiny model's 32-row matrices
    assert 0.45 < sizes["float16"] / sizes["float32"] < 0.56 and 0.2 < sizes["int8"] / sizes["float32"] < 0.35
    latents = trained.density.latents(fixed_noise(20, len(trained.density.mean), 5))
    reference = decode(trained.decoder, latents)
    int8 = portable.with_weights(model, "int8")
    stored = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in int8.graph.initializer}
    originals = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    for name, matrix in originals.items():
        if matrix.ndim == 2:  # each column at its own scale: its largest weight is +-127
            values, scale = stored[f"{name}_int8"], stored[f"{name}_scale"]
            error = np.abs(values * scale.astype(np.float64) - matrix)
            assert (np.abs(values).max(axis=0) == 127).all() and np.all(error <= scale * (0.5 + 1e-5))
    for weights, tolerance in (("float16", 2e-3), ("int8", 2e-2)):
        smaller = portable.with_weights(model, weights).SerializeToString()
        assert 0 < np.abs(portable.onnx_decode(smaller, latents) - reference).max() < tolerance, weights
        change = portable.notes_changed(smaller, trained.decoder, trained.density, trained.style.rule, seed=1)
        assert 0 <= change["notes_changed"] < 0.2 and 0 < change["largest_difference"] < tolerance


def test_a_bfloat16_run_exports_float32_weights_that_agree_with_its_float32_decoder(tmp_path):
    code, run = train(tmp_path, "--precision", "bfloat16", "--songs", "0", "--songs-per-epoch", "0", "--no-audio",
                      epochs=1)
    assert code == 0
    decoder = TrainedRun(run).decoder
    assert decoder.layers[-2].dtype_policy.name == "mixed_bfloat16"
    model = portable.decoder_onnx(decoder)
    types = {onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type) for tensor in model.graph.initializer}
    assert np.dtype(np.float32) in types and not types & {np.dtype(np.float16)}
    assert not [node for node in model.graph.node if node.op_type == "Cast"
                and node.attribute[0].i == onnx.TensorProto.BFLOAT16]
    latents = np.random.default_rng(0).standard_normal((5, decoder.input_shape[-1])).astype(np.float32)
    float32 = portable.float32_decoder(decoder)
    assert np.abs(portable.onnx_decode(model.SerializeToString(), latents) - decode(float32, latents)).max() < 1e-4


def test_export_writes_a_folder_that_needs_nothing_else(exported, tiny_run):
    names = {path.name for path in exported.iterdir()}
    assert names == {"decoder.onnx", "song_space.json", "index.html", "README.txt", "decode_with_onnxruntime.py",
                     *web_runtime.FILES, "package.json"}
    space = json.loads((exported / "song_space.json").read_text())
    trained = TrainedRun(tiny_run)
    assert space["run"] == tiny_run.name and space["parameters"] == trained.state["parameters"]
    assert space["decoder"]["weights"] == "float32" and space["decoder"]["notes_changed"] < 0.01
    assert len(space["sliders"]["axes"]) == len(space["sliders"]["deviations"]) == 4  # the tiny run's latent size
    assert space["note_rule"]["method"] == trained.style.rule.method and space["lowest_pitch"] == 16
    readme = (exported / "README.txt").read_text()
    assert "python -m http.server" in readme and "file://" in readme and str(tiny_run) in readme
    page = (exported / "index.html").read_text()
    assert "http://" not in page.replace("http://127.0.0.1", "") and "https://" not in page  # nothing from elsewhere


def example(folder, *args):
    """Run decode_with_onnxruntime.py as copied into ``folder``, with Keras and TensorFlow
    made unimportable; return its output line."""
    script = folder / "decode_with_onnxruntime.py"
    blocked = "import sys; sys.modules.update(keras=None, tensorflow=None, music_vae=None); "
    runner = f"{blocked}import runpy; sys.argv = [{str(script)!r}, *sys.argv[1:]]; runpy.run_path(sys.argv[0], " \
        "run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", runner, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_example_decodes_with_onnxruntime_alone_to_the_notes_of_keras(exported, tiny_run, tmp_path):
    trained = TrainedRun(tiny_run)
    space = json.loads((exported / "song_space.json").read_text())
    positions = [1.5, -0.5, 0.0, 2.0]
    said = example(exported, "--positions", ",".join(map(str, positions)), "--output", tmp_path / "song.mid")
    assert said.startswith(f"{tmp_path / 'song.mid'}: ") and " ms" in said
    sliders = space["sliders"]
    latent = np.float32(sliders["mean"]) + (np.float32(positions) * np.float32(sliders["deviations"])) @ np.float32(
        sliders["axes"])
    expected = notes(decode(trained.decoder, latent[None]), trained.style.rule)[0]
    assert expected.any()
    midi = pretty_midi.PrettyMIDI(str(tmp_path / "song.mid"))
    step = 60 / trained.config.bpm / 24
    heard = sorted((round(note.start / step), note.pitch) for note in midi.instruments[0].notes)
    measure, pitch, column = np.nonzero(expected.reshape(16, 96, 96))
    assert heard == sorted(zip(measure * 96 + column, pitch + 16))
    np.save(tmp_path / "code.npy", latent)
    assert example(exported, "--latent", tmp_path / "code.npy", "--output", tmp_path / "again.mid")
    assert (tmp_path / "again.mid").read_bytes() == (tmp_path / "song.mid").read_bytes()


def test_the_examples_note_rule_is_the_projects_for_every_method():
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import decode_with_onnxruntime as standalone
    finally:
        sys.path.remove(str(REPO / "examples"))
    rng = np.random.default_rng(3)
    values = (rng.random((3, 16, 9216)) ** 8).astype(np.float32)
    rules = [
        NoteRule(notes=150.7), NoteRule(notes=150, max_pitches_per_step=2), NoteRule(threshold=0.3),
        NoteRule(notes=150, method="expected", count_scale=0.01), NoteRule(method="expected", count_scale=0.004,
                                                                           max_pitches_per_step=1),
    ]
    for rule in rules:
        exported_rule = {"threshold": rule.threshold, "notes": rule.notes, "method": rule.method,
                         "max_pitches_per_step": rule.max_pitches_per_step, "count_scale": rule.count_scale}
        for song in values:
            assert np.array_equal(standalone.song_notes(song, exported_rule, 96), notes(song[None], rule)[0]), rule
            # A threshold given in place of the rule's, as the page's slider gives it: no cap, as the server has none
            picked = standalone.song_notes(song, exported_rule, 96, threshold=0.2)
            assert np.array_equal(picked, notes(song[None], NoteRule(threshold=0.2))[0]), rule


# --- export's mistakes ----------------------------------------------------------------------------


def test_export_mistakes_get_one_line_and_exit_code_2(tiny_run, exported, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(tiny_run, unfinished)
    shutil.rmtree(unfinished / "model")
    (tmp_path / "a_file").write_text("")
    (tmp_path / "yours").mkdir()
    (tmp_path / "yours" / "thesis.tex").write_text("keep me")
    game = tmp_path / "game"  # an export, and the game's own files beside it
    shutil.copytree(exported, game)
    (game / "main.js").write_text("keep me")
    (tmp_path / "link").symlink_to(tmp_path / "yours")
    cases = [
        (["--run", str(tmp_path)], "is not a run folder made by train"),
        (["--run", str(unfinished)], "has no trained model in place yet"),
        (["--run", str(tiny_run), "--output-dir", str(tmp_path / "a_file" / "export")], "cannot write to"),
        (["--run", str(tiny_run), "--output-dir", str(tmp_path / "yours")], "exists and is not an export"),
        (["--run", str(tiny_run), "--output-dir", str(game)], "exists and is not an export"),
        (["--run", str(tiny_run), "--output-dir", str(tmp_path / "link")], "exists and is not an export"),
        (["--run", str(tiny_run), "--output-dir", str(tiny_run.parent)], "exists and is not an export"),
        (["--run", str(tiny_run), "--weights", "int4"], "argument --weights: invalid choice"),
    ]
    for argv, message in cases:
        try:
            code = mg.main(["export", *argv])
        except SystemExit as exit:  # argparse's own mistakes
            code = exit.code
        error = capsys.readouterr().err.strip()
        assert code == 2 and message in error and len(error.splitlines()) == 1, (argv, error)
    assert (tmp_path / "yours" / "thesis.tex").read_text() == "keep me" and (game / "main.js").is_file()


def test_without_its_requirements_export_names_their_file(monkeypatch):
    real_import = __import__

    def no_tf2onnx(name, *args, **kwargs):
        if name == "tf2onnx":
            raise ImportError("No module named 'tf2onnx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("builtins.__import__", no_tf2onnx)
    with pytest.raises(UsageError, match=r"^export needs tf2onnx: pip install -r requirements-export.txt$"):
        portable.need_export_libraries()
    monkeypatch.setattr(portable, "keras_version", lambda: (3, 3))
    with pytest.raises(UsageError, match=r"^export needs Keras 3.8 or newer \(this is [\d.]+\): pip install -U keras$"):
        portable.need_export_libraries()


def test_a_stopped_export_leaves_the_last_complete_folder_and_no_part_that_looks_complete(
    exported, tiny_run, tmp_path, monkeypatch
):
    folder = tmp_path / "export"
    shutil.copytree(exported, folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    (tmp_path / ".export.part-left-by-a-kill").mkdir()  # as a kill -9 in the middle leaves it
    real_copy = shutil.copyfile

    def stopped(source, target, **kwargs):
        if Path(source).name == web_runtime.FILES[-1]:
            raise KeyboardInterrupt  # Ctrl-C while the runtime is copied
        return real_copy(source, target, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", stopped)
    assert mg.main(["export", "--run", str(tiny_run), "--output-dir", str(folder), "--weights", "int8"]) == 130
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export"]  # the part folders are gone
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    folder.rename(tmp_path / ".export.part-old")  # as a kill between the two renames of the last step leaves it
    # The next export puts the old one back before it writes; this one is stopped again.
    assert mg.main(["export", "--run", str(tiny_run), "--output-dir", str(folder), "--weights", "int8"]) == 130
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    monkeypatch.setattr(shutil, "copyfile", real_copy)
    assert mg.main(["export", "--run", str(tiny_run), "--output-dir", str(folder), "--weights", "int8"]) == 0
    assert json.loads((folder / "song_space.json").read_text())["decoder"]["weights"] == "int8"


def test_onnxruntime_web_is_fetched_only_as_published(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UsageError, match=r"cannot fetch onnxruntime-web .* \(no network\); on a machine that is"):
        web_runtime.install(tmp_path / "runtime")

    class Tampered:
        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

        def read(self):
            return b"not the package"

    monkeypatch.setattr(urllib.request, "urlopen", lambda *args, **kwargs: Tampered())
    with pytest.raises(UsageError, match="does not match its published hash"):
        web_runtime.install(tmp_path / "runtime")
    assert not (tmp_path / "runtime").exists()
    with pytest.raises(UsageError, match="python -m music_vae.web_runtime"):
        web_runtime.runtime_files(tmp_path / "runtime", fetch=False)


# --- the static page ------------------------------------------------------------------------------


@pytest.fixture
def file_server(exported):
    """``python -m http.server`` serving the export folder, as a user would: its address."""
    with static_server(exported) as address:
        yield address


@pytest.mark.slow
def test_the_exported_page_plays_in_chromium_with_no_project_process(
    exported, file_server, tiny_run, tmp_path, chromium, screenshots
):
    trained = TrainedRun(tiny_run)
    space = json.loads((exported / "song_space.json").read_text())
    values_at_the_mean = decode(trained.decoder, np.float32(space["sliders"]["mean"])[None])
    at_the_mean = notes(values_at_the_mean, trained.style.rule)[0]
    with chromium.sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium.path, args=["--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        errors, requests = [], []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(file_server)
        page.wait_for_function("window.explorer.state.draws >= 1 && window.explorer.settled()", timeout=60_000)
        assert page.text_content("#status") == ""
        assert page.locator("#open").count() == 0 and page.locator("#download-wav").count() == 0

        def shown():
            return sorted(map(tuple, page.evaluate("window.explorer.state.notes")))

        measure, pitch, step = np.nonzero(at_the_mean.reshape(16, 96, 96))
        assert shown() == sorted(zip(measure * 96 + step, pitch + 16)) and shown()  # the Python decoder's notes
        after_a_draw(page, lambda: page.fill("#threshold", "0.02"))  # the cells at or above 2%, uncapped
        measure, pitch, step = np.nonzero((values_at_the_mean >= 0.02).reshape(16, 96, 96))
        assert shown() == sorted(zip(measure * 96 + step, pitch + 16))
        after_a_draw(page, lambda: page.fill("#threshold", "0"))
        first = roll_picture(page)
        after_a_draw(page, lambda: page.locator("#sliders input").first.fill("3"))
        assert roll_picture(page) != first and page.evaluate("window.explorer.state.positions[0]") == 3
        after_a_draw(page, lambda: page.click("#reset"))
        assert roll_picture(page) == first and page.evaluate("[...window.explorer.state.positions]") == [0, 0, 0, 0]
        after_a_draw(page, lambda: page.click("#random"))
        assert page.evaluate("[...window.explorer.state.positions]") != [0, 0, 0, 0]
        with page.expect_download() as download:
            page.click("#download-midi")
        download.value.save_as(tmp_path / "shown.mid")
        on_the_page = shown()
        page.screenshot(path=str(screenshots / "exported_page.png"), full_page=True)
        browser.close()
    assert errors == []
    assert requests and all(url.startswith(file_server) for url in requests), requests
    midi = pretty_midi.PrettyMIDI(str(tmp_path / "shown.mid"))
    step_seconds = 60 / trained.config.bpm / 24
    assert sorted((round(note.start / step_seconds), note.pitch) for note in midi.instruments[0].notes) == on_the_page
    assert on_the_page
