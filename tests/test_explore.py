"""The latent space of a trained run (issue 14): slerp and the principal components with
known answers; encode, interpolate and variations on a tiny trained run; the explore page's
server, its answers and its bad requests, and the page itself in headless Chromium."""

import io
import json
import re
import socket
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

import music_generator as mg
from music_vae.commands import run_explorer
from music_vae.latent_space import PrincipalComponents, latents_around, slerp
from music_vae.explore_server import make_server
from music_vae.trained_run import TrainedRun
from music_vae.latent import LatentDensity, encode
from music_vae.backend import keras
from music_vae.music_metrics import onset_scores
from music_vae.samples import midi_to_samples, midi_to_song, song_to_midi
from music_vae.songs import decode
from helpers import after_a_draw, exit_code_and_error, make_samples, roll_picture, train


def test_slerp_starts_and_ends_at_its_ends_and_keeps_to_the_sphere_between():
    start, end = np.array([2.0, 0.0, 0.0]), np.array([0.0, 2.0, 0.0])
    path = slerp(start, end, np.linspace(0, 1, 5))
    assert path[0] == pytest.approx(start) and path[-1] == pytest.approx(end)
    assert np.linalg.norm(path, axis=1) == pytest.approx(np.full(5, 2.0))  # a straight line dips to 1.41
    assert path[2] == pytest.approx([np.sqrt(2), np.sqrt(2), 0.0])
    assert slerp(start, 3 * start, [0.5])[0] == pytest.approx(2 * start)  # parallel: the straight line


def test_principal_components_are_the_axes_and_spread_of_the_densitys_codes():
    rng = np.random.default_rng(0)
    axes = np.linalg.qr(rng.standard_normal((6, 6)))[0][:2]  # two orthonormal directions in 6 dimensions
    weights = rng.standard_normal((400, 2))
    weights -= weights.mean(axis=0)
    weights = weights @ np.linalg.inv(np.linalg.cholesky(np.cov(weights, rowvar=False))).T  # exactly uncorrelated
    codes = 5.0 + (weights * [1.0, 3.0]) @ axes
    components = PrincipalComponents.of_density(LatentDensity.fit(codes), 4)
    assert components.deviations[:2] == pytest.approx([3.0, 1.0], rel=1e-4)  # the largest first
    assert components.deviations[2:] == pytest.approx([0, 0], abs=1e-2)  # the density's ridge only
    assert abs(components.axes[:2] @ axes[::-1].T) == pytest.approx(np.eye(2), abs=1e-4)  # the same axes, either sign
    assert components.mean == pytest.approx(np.full(6, 5.0), abs=1e-5)
    positions = components.positions(codes[:3])[:, :2]
    assert components.latents(np.pad(positions, ((0, 0), (0, 2)))) == pytest.approx(codes[:3], abs=1e-4)
    assert components.latents(np.zeros((1, 4)))[0] == pytest.approx(components.mean)


def test_variations_follow_the_seed_and_the_densitys_spread():
    density = LatentDensity(np.zeros(3, np.float32), np.diag([1.0, 0.0, 2.0]).astype(np.float32))
    center = np.array([1.0, 1.0, 1.0], np.float32)
    first = latents_around(center, density, 500, 0.5, seed=7)
    assert np.array_equal(first, latents_around(center, density, 500, 0.5, seed=7))
    assert not np.array_equal(first, latents_around(center, density, 500, 0.5, seed=8))
    assert first.std(axis=0) == pytest.approx([0.5, 0.0, 1.0], rel=0.1, abs=1e-6)
    assert first.mean(axis=0) == pytest.approx(center, abs=0.1)


@pytest.fixture(scope="module")
def run_and_songs(tmp_path_factory):
    """A tiny trained run, and two of its training songs as MIDI files."""
    folder = tmp_path_factory.mktemp("explore")
    samples = make_samples(folder / "samples", 8)
    # A code the decoder listens to: a light KL term, and a quick learning rate. No latent batch
    # normalisation: in 12 steps its running statistics are still mostly their starting values.
    options = ["--kl-weight", "0.01", "--kl-cycle", "0", "--free-bits", "0", "--lr", "0.01", "--batch-size", "2"]
    options += ["--latent-batch-norm", "0"]
    code, run = train(folder, *options, "--songs", "0", "--songs-per-epoch", "0", "--no-audio", data=samples, epochs=3)
    assert code == 0
    midi = []
    for number in range(2):
        path = folder / f"song{number}.mid"
        song_to_midi(np.load(samples / f"song00{number}.npy"), path, lowest_pitch=16)
        midi.append(path)
    return run, midi


@pytest.fixture(scope="module")
def any_run_and_songs(tiny_run, tmp_path_factory):
    """For the tests that any trained run serves: conftest.py's tiny_run (one epoch), and two
    of its training songs as MIDI files."""
    folder = tmp_path_factory.mktemp("any_run_songs")
    midi = [folder / "song0.mid", folder / "song1.mid"]
    for path, sample in zip(midi, sorted((tiny_run.parents[1] / "samples").glob("*.npy"))):
        song_to_midi(np.load(sample), path, lowest_pitch=16)
    return tiny_run, midi


def test_encode_saves_each_files_latent_mean(any_run_and_songs, tmp_path, capsys):
    run, midi = any_run_and_songs
    assert mg.main(["encode", "--run", str(run), *map(str, midi), "--output-dir", str(tmp_path)]) == 0
    encoder = keras.saving.load_model(run / "model" / "encoder.keras")
    expected, _ = encode(encoder, [midi_to_song(path) for path in midi])
    for path, z_mean in zip(midi, expected):
        assert np.load(tmp_path / f"{path.stem}.npy") == pytest.approx(z_mean)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "notes in measures 1-16" in lines[0]


@pytest.mark.slow
def test_interpolation_ends_at_the_reconstructions_of_its_two_songs(run_and_songs, tmp_path):
    run, (start, end) = run_and_songs
    argv = ["interpolate", "--run", str(run), "--from", str(start), "--to", str(end), "--steps", "5"]
    assert mg.main([*argv, "--output-dir", str(tmp_path), "--no-audio"]) == 0
    songs = [np.load(tmp_path / "npy" / f"interpolation_song{number:02d}.npy") for number in range(1, 6)]
    encoder = keras.saving.load_model(run / "model" / "encoder.keras")
    decoder = keras.saving.load_model(run / "model" / "decoder.keras")
    z_mean, _ = encode(encoder, [midi_to_song(start), midi_to_song(end)])
    reconstructions = decode(decoder, z_mean)
    assert songs[0] == pytest.approx(reconstructions[0], abs=1e-6)
    assert songs[-1] == pytest.approx(reconstructions[1], abs=1e-6)
    assert np.abs(songs[1] - songs[0]).max() > 1e-4  # the decoder tells the points apart
    assert len(list((tmp_path / "midi").glob("interpolation_song*.mid"))) == 5
    assert mg.main([*argv, "--no-audio"]) == 0  # into the run: its page shows them as one strip, in order
    page = (run / "index.html").read_text()
    strip = page[page.index('<div class="strip">') :]
    strip = strip[: strip.index("</div>")]
    shown = re.findall(r'alt="piano roll of (interpolation_song\d\d)"', strip)
    assert shown == [f"interpolation_song{number:02d}" for number in range(1, 6)]


@pytest.mark.slow
def test_reconstruct_writes_each_files_song_and_its_rebuild_and_says_how_much_it_keeps(run_and_songs, tmp_path, capsys):
    run, midi = run_and_songs
    argv = ["reconstruct", "--run", str(run), *map(str, midi), "--output-dir", str(tmp_path), "--no-audio"]
    assert mg.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    trained = TrainedRun(run)
    for path, line in zip(midi, lines):
        original = np.load(tmp_path / "npy" / f"{path.stem}_original.npy")
        assert np.array_equal(original, midi_to_samples(path).samples[0])  # the first sample, as data_loader cuts it
        assert np.array_equal(midi_to_song(tmp_path / "midi" / f"{path.stem}_original.mid"), original)
        rebuilt = np.load(tmp_path / "npy" / f"{path.stem}_reconstruction.npy")
        z_mean, _ = encode(trained.encoder, [original.astype(np.uint8)])
        assert rebuilt == pytest.approx(decode(trained.decoder, z_mean)[0], abs=1e-6)
        notes = midi_to_song(tmp_path / "midi" / f"{path.stem}_reconstruction.mid")  # what is heard
        exact, near = onset_scores(original, notes), onset_scores(original, notes, tolerance=1)
        assert line.startswith(f"{path}: {notes.sum()} notes rebuilt of its {int(original.sum())}: ")
        assert f"F1 {exact['f1']:.2f} (within a step: F1 {near['f1']:.2f})" in line
        assert f"precision {exact['precision']:.2f}, recall {exact['recall']:.2f}" in line
    assert (tmp_path / "img" / f"{midi[0].stem}_reconstruction.png").is_file()
    assert mg.main(argv[:-3] + ["--measure", "2", "--no-audio"]) == 0  # into the run: its page shows them
    assert "Songs of MIDI files, each as given and as the model rebuilds it" in (run / "index.html").read_text()
    original = np.load(run / "generated" / "npy" / f"{midi[0].stem}_original.npy")
    assert np.array_equal(original, midi_to_song(midi[0], first_measure=1))


@pytest.mark.slow
def test_interpolate_says_how_much_of_each_file_its_ends_keep(run_and_songs, tmp_path, capsys):
    run, (start, end) = run_and_songs
    argv = ["interpolate", "--run", str(run), "--from", str(start), "--to", str(end), "--steps", "3"]
    assert mg.main([*argv, "--output-dir", str(tmp_path), "--no-audio"]) == 0
    out = capsys.readouterr().out
    for name, path in (("interpolation_song01", start), ("interpolation_song03", end)):
        notes = midi_to_song(tmp_path / "midi" / f"{name}.mid")
        f1 = onset_scores(midi_to_song(path), notes)["f1"]
        assert f"{name} against {path}: precision" in out and f"F1 {f1:.2f}" in out


@pytest.mark.slow
def test_the_same_seed_gives_the_same_variations(run_and_songs, tmp_path):
    run, (song, _) = run_and_songs

    def vary(folder, seed):
        argv = ["variations", "--run", str(run), str(song), "--songs", "3", "--seed", str(seed), "--spread", "2"]
        assert mg.main([*argv, "--output-dir", str(folder), "--no-audio"]) == 0
        return [np.load(folder / "npy" / f"variation_song{number:02d}.npy") for number in (1, 2, 3)]

    first = vary(tmp_path / "a", 3)
    assert all(np.array_equal(ours, theirs) for ours, theirs in zip(first, vary(tmp_path / "b", 3)))
    assert not np.array_equal(first[0], vary(tmp_path / "c", 4)[0])


def test_latent_command_mistakes_get_one_line_and_exit_code_2(any_run_and_songs, tmp_path, capsys):
    run, (song, _) = any_run_and_songs
    (tmp_path / "noise.mid").write_bytes(np.random.default_rng(0).bytes(300))
    short = tmp_path / "short.mid"
    song_to_midi(midi_to_song(song)[:2], short)
    cases = [
        (["encode", "--run", str(tmp_path), str(song)], "is not a run folder made by train"),
        (["encode", "--run", str(run), str(tmp_path / "missing.mid")], "missing.mid does not exist"),
        (["encode", "--run", str(run), str(tmp_path / "noise.mid")], "noise.mid is not a readable MIDI file"),
        (["encode", "--run", str(run), str(song), "--measure", "40"], "has no notes in measures 40-55"),
        (["reconstruct", "--run", str(run), str(tmp_path / "noise.mid")], "noise.mid is not a readable MIDI file"),
        (["reconstruct", "--run", str(run), str(short)], "short.mid gives no sample: too short: 2 measures"),
        (["interpolate", "--run", str(run), "--from", str(song), "--to", str(song), "--steps", "1"], "--steps"),
        (["variations", "--run", str(run), str(song), "--spread", "0"], "argument --spread: must be more than 0"),
    ]
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = str(busy.getsockname()[1])
    cases.append((["explore", "--run", str(run), "--port", port], f"cannot serve at 127.0.0.1:{port}"))
    cases.append((["explore", "--run", str(tmp_path)], "is not a run folder made by train"))
    for argv, message in cases:
        code, error = exit_code_and_error(argv, capsys)
        assert code == 2 and message in error and len(error.splitlines()) == 1, (argv, error)
    busy.close()


# --- the explore page ----------------------------------------------------------------------------


def serve(run):
    """Serve the explore page of ``run`` on a free port in a thread; yield its address."""
    http_server = make_server(run_explorer(TrainedRun(run), 4), port=0)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{http_server.server_address[1]}"
    http_server.shutdown()
    http_server.server_close()


@pytest.fixture(scope="module")
def server(run_and_songs):
    """The explore page of the tiny run above, whose decoder listens to the code: its address."""
    yield from serve(run_and_songs[0])


@pytest.fixture(scope="module")
def any_server(tiny_run):
    """The explore page of conftest.py's tiny_run, for the tests that need a server of any run."""
    yield from serve(tiny_run)


def post(url, body, kind="application/json", headers=None):
    """(status, body) of a POST of ``body`` (bytes) to ``url``."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": kind, **(headers or {})}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.slow
def test_the_server_answers_songs_and_files_for_slider_positions(server, run_and_songs):
    status, body = post(f"{server}/song", json.dumps({"positions": [0, 0, 0, 0]}).encode())
    notes = json.loads(body)["notes"]
    assert status == 200 and notes and all(16 <= pitch < 112 and 0 <= step < 16 * 96 for step, pitch in notes)
    moved = json.loads(post(f"{server}/song", json.dumps({"positions": [3, -3, 3, -3], "threshold": 0.01}).encode())[1])
    assert moved["notes"] != notes
    status, midi = post(f"{server}/midi", json.dumps({"positions": [0, 0, 0, 0], "bpm": 90}).encode())
    assert status == 200 and midi[:4] == b"MThd"
    song = midi_to_song(midi)
    assert sorted((step, pitch) for step, pitch in notes) == sorted(
        (measure * 96 + step, pitch + 16) for measure, pitch, step in zip(*np.nonzero(song.reshape(16, 96, 96)))
    )
    status, wav = post(f"{server}/wav", json.dumps({"positions": [0, 0, 0, 0]}).encode())
    assert status == 200 and wav[:4] == b"RIFF"
    positions = json.loads(post(f"{server}/random", b"{}")[1])["positions"]
    assert len(positions) == 4 and max(map(abs, positions)) <= 3
    _, (song_file, _) = run_and_songs
    status, body = post(f"{server}/encode", song_file.read_bytes(), "audio/midi")
    placed = json.loads(body)
    assert status == 200 and len(placed["positions"]) == 4
    shown = json.loads(post(f"{server}/song", json.dumps({"positions": placed["positions"]}).encode())[1])["notes"]
    song = midi_to_song(song_file)
    shown_song = np.zeros((16, 96, 96), np.uint8)
    for step, pitch in shown:
        shown_song[step // 96, pitch - 16, step % 96] = 1
    assert placed["kept_f1"] == pytest.approx(onset_scores(song, shown_song.reshape(16, -1))["f1"])
    assert 0 <= placed["code_f1"] <= 1


def test_the_server_of_any_run_answers_a_song_its_midi_file_and_its_place(any_server, tiny_run):
    status, body = post(f"{any_server}/song", json.dumps({"positions": [1, 0, -1, 0], "threshold": 0.01}).encode())
    notes = json.loads(body)["notes"]
    assert status == 200 and all(16 <= pitch < 112 and 0 <= step < 16 * 96 for step, pitch in notes)
    status, midi = post(f"{any_server}/midi", json.dumps({"positions": [1, 0, -1, 0], "threshold": 0.01}).encode())
    song = midi_to_song(midi)
    assert status == 200 and sorted(map(tuple, notes)) == sorted(
        (measure * 96 + step, pitch + 16) for measure, pitch, step in zip(*np.nonzero(song.reshape(16, 96, 96)))
    )
    training_song = song_to_midi(np.load(sorted((tiny_run.parents[1] / "samples").glob("*.npy"))[0]))
    status, body = post(f"{any_server}/encode", _midi_bytes(training_song), "audio/midi")
    assert status == 200 and len(json.loads(body)["positions"]) == 4


def _midi_bytes(midi):
    buffer = io.BytesIO()
    midi.write(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("route", "body", "status", "message"),
    [
        ("/song", b"not json", 400, "the body is not JSON"),
        ("/song", b"[1, 2]", 400, "the body is not a JSON object"),
        ("/song", b'{"positions": [0, 0, 0]}', 400, "positions must be a list of 4 numbers"),
        ("/song", b'{"positions": [0, 0, 0, "x"]}', 400, "positions must be a list of 4 numbers"),
        ("/song", b'{"positions": [0, 0, 0, NaN]}', 400, "positions must be a list of 4 numbers"),
        ("/song", b'{"positions": [0, 0, 0, 1e9]}', 400, "positions must lie within"),
        ("/song", b'{"positions": [0, 0, 0, 0], "threshold": 2}', 400, "threshold must be null or a number"),
        ("/midi", b'{"positions": [0, 0, 0, 0], "bpm": 0}', 400, "bpm must be a number from 20 to 400"),
        ("/encode", b"MThd and then nothing", 400, "not a readable MIDI file"),
        ("/song", b"x" * 70_000, 413, "the body is over 65,536 bytes"),
        ("/../../etc/passwd", b"{}", 404, "no such page"),
    ],
)
def test_bad_requests_get_a_4xx_and_one_log_line(any_server, capfd, route, body, status, message):
    got, answer = post(any_server + route, body)
    assert got == status and message in json.loads(answer)["error"]
    log = capfd.readouterr().err.strip().splitlines()
    assert len(log) == 1 and message in log[0] and "Traceback" not in log[0]


def test_get_serves_the_page_and_nothing_else(any_server):
    with urllib.request.urlopen(f"{any_server}/", timeout=30) as response:
        assert response.status == 200 and b"<canvas" in response.read()
    for path in ("/index.html", "/../state.json", "/model/decoder.keras"):
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(any_server + path, timeout=30)
        assert error.value.code == 404


@pytest.mark.slow
def test_the_page_draws_plays_opens_and_saves_songs_in_chromium(server, run_and_songs, tmp_path, chromium, screenshots):
    _, (song_file, _) = run_and_songs
    with chromium.sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium.path,
            args=["--disable-gpu", "--no-first-run", "--autoplay-policy=no-user-gesture-required"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        errors = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server)
        page.wait_for_function("window.explorer && window.explorer.state.draws >= 1 && window.explorer.settled()")

        def sliders():
            return page.evaluate("[...window.explorer.state.positions]")

        first = roll_picture(page)
        after_a_draw(page, lambda: page.fill("#threshold", "0.02"))  # every cell the decoder is sure of at 2%
        thresholded = roll_picture(page)
        after_a_draw(page, lambda: page.locator("#sliders input").first.fill("3"))
        assert roll_picture(page) != thresholded and sliders()[0] == 3
        after_a_draw(page, lambda: page.click("#reset"))
        assert sliders() == [0, 0, 0, 0] and roll_picture(page) == thresholded
        after_a_draw(page, lambda: page.fill("#threshold", "0"))
        assert roll_picture(page) == first
        after_a_draw(page, lambda: page.click("#random"))
        assert sliders() != [0, 0, 0, 0]
        after_a_draw(page, lambda: page.set_input_files("#open", str(song_file)))
        encoded = sliders()
        assert encoded != [0, 0, 0, 0]
        placed = page.text_content("#placed")
        assert re.fullmatch(rf"{song_file.name}: the song on the sliders keeps F1 \d\.\d\d of its notes "
                            r"\(its whole code: \d\.\d\d\)", placed), placed
        page.click("#play")
        page.wait_for_function("window.explorer.playing() && window.explorer.audioTime() > 0.2")
        page.click("#play")
        assert not page.evaluate("window.explorer.playing()")
        with page.expect_download() as download:
            page.click("#download-midi")
        saved = tmp_path / "shown.mid"
        download.value.save_as(saved)
        shown = page.evaluate("window.explorer.state.notes")
        page.screenshot(path=str(screenshots / "explore_page.png"), full_page=True)
        browser.close()
    assert errors == []
    song = midi_to_song(saved)  # as data_loader reads it
    assert sorted(map(tuple, shown)) == sorted(
        (measure * 96 + step, pitch + 16) for measure, pitch, step in zip(*np.nonzero(song.reshape(16, 96, 96)))
    )
