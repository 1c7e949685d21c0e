"""Steering by mood (issue 25): the labels CSV, the features that judge a direction, the
classifier's folds, and, on a tiny run trained on songs in two octaves, a direction learned
from files whose +1 half is the -1 half an octave up, which must move decoded songs up; the
commands' mistakes; the explore server's and the exported page's mood sliders."""

import json
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

import music_generator as mg
from music_vae.commands import run_explorer
from music_vae.explore_server import make_server
from music_vae.moods import (
    MOODS_FILE, Direction, classifier_scores, feature_counts, features_of_counts, grouped_folds, read_labels, steer,
)
from music_vae.samples import DataSettings, midi_to_song, song_to_midi
from music_vae.songs import decode
from music_vae.trained_run import TrainedRun
from helpers import after_a_draw, exit_code_and_error, static_server, train

SETTINGS = DataSettings()
OCTAVE = 12
# The tests on the octave run are slow: its 10 epochs and moods take 45 s, a third of the fast loop's two minutes.
on_the_octave_run = pytest.mark.slow


def song_in_key(key, rng):
    """16 measures of a bass note and a melody of eighths, in ``key`` (0-23: two octaves)."""
    song = np.zeros((16, 96, 96), np.uint8)
    for measure in range(16):
        song[measure, 20 + key, 0] = 1
        for step in range(0, 96, 12):
            song[measure, 40 + key + int(rng.integers(0, 8)), step] = 1
    return song.reshape(16, 9216)


@pytest.fixture(scope="module")
def octave_run(tmp_path_factory):
    """A tiny run trained on 24 songs in keys over two octaves, and a labels CSV whose +1 files
    are its -1 files moved up an octave: (run folder, labels CSV, the -1 songs)."""
    folder = tmp_path_factory.mktemp("moods")
    rng = np.random.default_rng(0)
    (folder / "samples").mkdir()
    for number in range(24):
        np.save(folder / "samples" / f"song{number:02d}.npy", song_in_key(number, rng))
    # A code the decoder listens to, as test_explore.py's run: a light KL term, a quick learning rate, no latent
    # batch normalisation (its running statistics would still be mostly their starting values).
    options = ["--kl-weight", "0.01", "--kl-cycle", "0", "--free-bits", "0", "--lr", "0.01", "--batch-size", "2"]
    options += ["--latent-batch-norm", "0"]
    code, run = train(folder, *options, "--songs", "0", "--songs-per-epoch", "0", "--no-audio", data=folder /
                      "samples", epochs=10)
    assert code == 0
    midi = folder / "midi"
    midi.mkdir()
    rows, low = ["file,valence"], []
    for number in range(8):
        song = song_in_key(number % 6, rng)
        low.append(song)
        for name, shifted, label in (("low", song, -1), ("high", np.roll(song.reshape(16, 96, 96), OCTAVE, 1), 1)):
            song_to_midi(shifted.reshape(16, 9216), midi / f"{name}{number}.mid", lowest_pitch=SETTINGS.lowest_pitch)
            rows.append(f"{name}{number}.mid,{label}")
    (midi / "labels.csv").write_text("\n".join(rows) + "\n")
    return run, midi / "labels.csv", low


def mean_pitch(song):
    return features_of_counts(feature_counts([song], SETTINGS.lowest_pitch))["mean_pitch"]


@pytest.fixture(scope="module")
def learned(octave_run):
    run, labels, _ = octave_run
    assert mg.main(["moods", "--run", str(run), "--labels", str(labels), "--bootstraps", "20"]) == 0
    return run, json.loads((run / MOODS_FILE).read_text())


@on_the_octave_run
def test_an_octave_up_gives_a_direction_that_moves_songs_up(learned, tmp_path):
    run, report = learned
    valence = report["directions"]["valence"]
    assert valence["files"] == {"+1": 8, "-1": 8} and valence["windows"] == {"+1": 8, "-1": 8}
    assert valence["data"]["difference"]["mean_pitch"] == pytest.approx(OCTAVE)  # the +1 files are the -1 up an octave
    assert valence["data"]["difference"]["notes_per_measure"] == 0
    assert valence["classifier"]["balanced_accuracy"] > 0.75  # the code knows the octave: the majority is 0.5
    steered = [valence["steered"][amount]["mean_pitch"] for amount in ("-2.0", "-1.0", "0.0", "1.0", "2.0")]
    assert steered == sorted(steered) and steered[-1] - steered[0] > 3, steered
    assert valence["effect"]["interval"]["mean_pitch"][0] > 0 and "mean_pitch" in valence["moves"]
    # generate steers its songs by --valence: the same seed, higher songs
    pitches = {}
    for amount in ("-2", "2"):
        folder = tmp_path / amount
        argv = ["generate", "--run", str(run), "--songs", "4", "--seed", "1", "--valence", amount, "--no-audio"]
        assert mg.main([*argv, "--output-dir", str(folder)]) == 0
        pitches[amount] = np.mean([mean_pitch(midi_to_song(path)) for path in sorted((folder / "midi").glob("*.mid"))])
    assert pitches["2"] > pitches["-2"] + 3, pitches


@on_the_octave_run
def test_generate_into_the_run_says_which_moods_on_its_page_and_info_file(learned, capsys):
    run, _ = learned
    assert mg.main(["generate", "--run", str(run), "--songs", "3", "--no-audio"]) == 0
    argv = ["generate", "--run", str(run), "--songs", "1", "--seed", "5", "--mood", "valence=-1.5", "--no-audio"]
    assert mg.main(argv) == 0
    assert [path.name for path in (run / "generated" / "midi").glob("sample_*")] == ["sample_song01.mid"]
    assert "with seed 5, steered valence -1.5 sd" in capsys.readouterr().out
    said = "1 songs, seed 5, steered valence -1.5 sd"
    assert f"Songs from generate: {said}" in (run / "index.html").read_text()
    info = next(run.glob("*_info.txt")).read_text()
    assert f"from generate            {said}" in info and "mood direction           valence: moves mean_pitch" in info


@on_the_octave_run
def test_a_direction_that_moved_nothing_is_applied_with_a_note(learned, tmp_path, capsys):
    run, report = learned
    report["directions"]["valence"]["moves"] = []
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / MOODS_FILE).write_text(json.dumps(report))
    argv = ["generate", "--run", str(copy), "--songs", "1", "--valence", "1", "--no-audio"]
    assert mg.main([*argv, "--output-dir", str(tmp_path / "songs")]) == 0
    assert "note: valence moved none of major_share/mean_pitch beyond the bootstrap interval" in capsys.readouterr().out


@on_the_octave_run
def test_directions_learned_before_more_training_are_refused_and_leave_the_sliders(learned, tmp_path, capsys):
    run, report = learned
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / MOODS_FILE).write_text(json.dumps({**report, "epochs_done": report["epochs_done"] - 1}))
    assert mg.main(["generate", "--run", str(copy), "--valence", "1"]) == 2
    assert "learned from the models of epoch 9, and the run has 10 epochs now" in capsys.readouterr().err
    assert run_explorer(TrainedRun(copy), 3).page_settings()["moods"] == []
    assert "note: no mood sliders: the mood directions" in capsys.readouterr().out
    (copy / MOODS_FILE).write_text('{"directions": {"valence": {}}}')
    assert mg.main(["generate", "--run", str(copy), "--valence", "1"]) == 2
    assert "cannot read" in capsys.readouterr().err


@on_the_octave_run
def test_mood_mistakes_get_one_line_and_exit_code_2(octave_run, learned, tmp_path, capsys):
    run, labels, _ = octave_run
    folder = labels.parent

    def csv(name, text):
        path = tmp_path / name
        path.write_text(text)
        return path

    cases = [
        (["--labels", str(csv("missing.csv", "file,valence\nlow0.mid,1\ngone.mid,-1\n")), "--data", str(folder)],
         "1 of the labelled files are not in"),
        (["--labels", str(csv("plus.csv", "file,valence\nlow0.mid,1\nlow1.mid,1\n")), "--data", str(folder)],
         "no window of the labelled files is -1 in valence"),
        (["--labels", str(csv("word.csv", "file,valence\nlow0.mid,happy\n")), "--data", str(folder)],
         "line 2: valence is 'happy', not a number"),
        (["--labels", str(csv("two.csv", "file,valence\nlow0.mid,2\n")), "--data", str(folder)],
         "line 2: valence is 2; a label is +1, -1 or empty"),
        (["--labels", str(csv("nofile.csv", "name,valence\nlow0.mid,1\n"))], "has no 'file' column"),
        (["--labels", str(csv("comma.csv", "file,valence,\nlow0.mid,1,\n"))], "column 3 has no name"),
        (["--labels", str(csv("header.csv", "file,valence\n"))], "has no row of labels"),
        (["--labels", str(tmp_path / "absent.csv")], "absent.csv does not exist"),
    ]
    argvs = [["moods", "--run", str(run), *args] for args, _ in cases]
    messages = [message for _, message in cases]
    argvs += [
        ["generate", "--run", str(run), "--mood", "battle=1"], ["generate", "--run", str(run), "--arousal", "1"],
        ["generate", "--run", str(run), "--valence", "1", "--mood", "valence=2"],
        ["generate", "--run", str(run), "--valence", "11"], ["generate", "--run", str(run), "--mood", "battle"],
    ]
    messages += [
        "has no mood direction 'battle'; it has valence", "has no mood direction 'arousal'; it has valence",
        "the valence direction is given twice", "must be from -10 to 10 standard deviations",
        "expected NAME=V",
    ]
    for argv, message in zip(argvs, messages):
        code, error = exit_code_and_error(argv, capsys)
        assert code == 2 and message in error and len(error.splitlines()) == 1, (argv, error)


def test_a_run_without_moods_names_the_command_that_learns_them(tiny_run, capsys):
    assert mg.main(["generate", "--run", str(tiny_run), "--valence", "1"]) == 2
    assert "it has none: learn them with music_generator.py moods" in capsys.readouterr().err


def test_the_labels_csv_reads_numbers_and_empty_cells(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("file,valence,battle\na.mid,1,\nb.mid,-1.0,+1\nc.mid, 1 ,-1\n")
    files, labels = read_labels(path)
    assert files == ["a.mid", "b.mid", "c.mid"]
    assert labels["valence"].tolist() == [1, -1, 1] and labels["battle"].tolist() == [0, 1, -1]


def test_the_features_of_known_songs():
    c_major = np.zeros((2, 96, 96), np.uint8)
    for step, pitch in zip(range(0, 96, 12), (60, 64, 67, 72, 60, 64, 67, 60)):  # C E G: major
        c_major[0, pitch - SETTINGS.lowest_pitch, step] = 1
    c_major[1, 60 - SETTINGS.lowest_pitch, [0, 3, 6, 48]] = 1  # gaps 3, 3, 42 steps after the first measure's last
    a_minor = np.zeros((1, 96, 96), np.uint8)
    for step, pitch in zip(range(0, 96, 12), (57, 60, 64, 57, 60, 64, 69, 57)):  # A C E: minor
        a_minor[0, pitch - SETTINGS.lowest_pitch, step] = 1
    counts = feature_counts([c_major.reshape(2, -1), a_minor.reshape(1, -1)], SETTINGS.lowest_pitch)
    major = features_of_counts(counts[:1])
    assert major["major_share"] == 1 and major["notes_per_measure"] == 6
    assert major["mean_pitch"] == pytest.approx((60 + 64 + 67 + 72 + 60 + 64 + 67 + 60 + 4 * 60) / 12)
    # 11 gaps between onsets: 7 of 12 steps in the first measure, 12 to the next measure's first, then 3, 3
    # and 42: two of a sixteenth (6 steps) or less
    assert major["short_onsets"] == pytest.approx(2 / 11)
    assert features_of_counts(counts[1:])["major_share"] == 0
    assert features_of_counts(counts)["major_share"] == pytest.approx(12 / 20)  # pooled by notes
    assert features_of_counts(counts, [0, 2])["major_share"] == 0  # weights: the minor song twice, the major never
    fifths = np.zeros((1, 96, 96), np.uint8)
    fifths[0, [60 - SETTINGS.lowest_pitch, 67 - SETTINGS.lowest_pitch], ::12] = 1  # C and G alone: in no one key
    assert np.isnan(features_of_counts(feature_counts([fifths.reshape(1, -1)], SETTINGS.lowest_pitch))["major_share"])


def test_the_classifier_keeps_files_apart_and_beats_the_majority_only_where_the_code_knows():
    rng = np.random.default_rng(0)
    owners = np.repeat(np.arange(40), 3)  # 40 files of 3 windows
    file_labels = np.where(np.arange(40) < 25, 1, -1)
    labels = file_labels[owners].astype(float)
    folds = grouped_folds(owners, labels, 5, seed=0)
    assert all(len(set(folds[owners == file])) == 1 for file in range(40))  # a file's windows share a fold
    assert sorted(np.bincount(folds[::3])) == [8] * 5
    knowing = rng.standard_normal((120, 6)) + labels[:, None] * [1.5, 0, 0, 0, 0, 0]
    scores = classifier_scores(knowing, labels, owners, seed=0)
    assert scores["balanced_accuracy"] > 0.85 and scores["majority"] == pytest.approx(25 / 40)
    blind = rng.standard_normal((120, 6))
    assert classifier_scores(blind, labels, owners, seed=0)["balanced_accuracy"] < 0.7


def test_a_direction_points_from_the_minus_to_the_plus_codes_in_their_deviations():
    codes = np.array([[0.0, 0.0], [0.0, 2.0], [4.0, 0.0], [4.0, 2.0]])
    direction = Direction.fit("x", codes, np.array([-1.0, -1.0, 1.0, 1.0]))
    assert direction.unit == pytest.approx([1, 0]) and direction.deviation == pytest.approx(2.0)
    assert steer(np.zeros((1, 2)), {"x": direction}, {"x": 1.5})[0] == pytest.approx([3.0, 0.0])


@on_the_octave_run
def test_the_explore_server_has_a_slider_for_each_mood(learned):
    run, _ = learned
    trained = TrainedRun(run)
    explorer = run_explorer(trained, 3)
    assert explorer.page_settings()["moods"] == ["valence"]
    latent = explorer.latent([0.0, 0.0, 0.0, 2.0])  # the mean song moved 2 deviations along valence
    valence = explorer.directions["valence"]
    assert latent == pytest.approx(valence.steer(explorer.components.mean[None], 2.0)[0], abs=1e-5)
    steered = explorer.song([0.0, 0.0, 0.0, 2.0], threshold=0.05)
    assert np.array_equal(steered, (decode(trained.decoder, latent[None])[0] >= 0.05).astype(np.uint8))
    assert not np.array_equal(steered, explorer.song([0.0, 0.0, 0.0, 0.0], 0.05))
    assert np.array_equal(explorer.song([0.0, 0.0, 0.0], 0.05), explorer.song([0.0, 0.0, 0.0, 0.0], 0.05))
    server = make_server(explorer, port=0)  # the page asks for a song at the components' and the mood's positions
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"http://127.0.0.1:{server.server_address[1]}/song"
    try:
        body = json.dumps({"positions": [0, 0, 0, 2], "threshold": 0.05}).encode()
        with urllib.request.urlopen(urllib.request.Request(address, data=body, method="POST")) as answer:
            assert len(json.loads(answer.read())["notes"]) == steered.sum()
        with pytest.raises(urllib.error.HTTPError, match="400"):
            urllib.request.urlopen(urllib.request.Request(address, data=b'{"positions": [0, 0, 0]}', method="POST"))
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_the_exported_page_steers_with_a_mood_slider_as_python_does(learned, chromium, tmp_path):
    pytest.importorskip("onnxruntime", reason="export needs it: pip install -r requirements-export.txt")
    run, _ = learned
    folder = tmp_path / "export"
    assert mg.main(["export", "--run", str(run), "--output-dir", str(folder), "--sliders", "3"]) == 0
    space = json.loads((folder / "song_space.json").read_text())
    assert space["moods"]["names"] == ["valence"]
    # The latent vector as the page makes it: float64 sums, rounded to float32 once.
    unit, deviation = np.float64(space["moods"]["units"][0]), space["moods"]["deviations"][0]
    latent = (np.float64(space["sliders"]["mean"]) + 2 * deviation * unit).astype(np.float32)
    values = decode(TrainedRun(run).decoder, latent[None])[0]
    measure, pitch, step = np.nonzero((values >= 0.05).reshape(16, 96, 96))
    expected = sorted(zip((measure * 96 + step).tolist(), (pitch + SETTINGS.lowest_pitch).tolist()))
    with static_server(folder) as address, chromium.sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium.path, args=["--no-first-run"])
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(address)
        page.wait_for_function("window.explorer.state.draws >= 1 && window.explorer.settled()", timeout=60_000)
        after_a_draw(page, lambda: page.fill("#threshold", "0.05"))
        mood = page.locator("#sliders label.mood")
        assert mood.count() == 1 and mood.locator("span").text_content() == "valence"
        after_a_draw(page, lambda: mood.locator("input").fill("2"))
        assert page.evaluate("[...window.explorer.state.positions]") == [0, 0, 0, 2]
        shown = sorted(map(tuple, page.evaluate("window.explorer.state.notes")))
        after_a_draw(page, lambda: page.click("#random"))  # Random draws the components, and keeps the mood
        assert page.evaluate("window.explorer.state.positions[3]") == 2
        browser.close()
    assert errors == [] and shown == expected and shown
    # The example a game would copy steers by the same directions: up an octave's way, higher songs.
    pitches = []
    for amount in ("-2", "2"):
        output = tmp_path / f"{amount}.mid"
        example = [sys.executable, str(folder / "decode_with_onnxruntime.py"), "--random", "3", "--output", str(output)]
        assert subprocess.run([*example, "--mood", f"valence={amount}"], capture_output=True).returncode == 0
        pitches.append(mean_pitch(midi_to_song(output)))
    assert pitches[1] > pitches[0] + 3, pitches
    said = subprocess.run([*example, "--mood", "battle=1"], capture_output=True, text=True).stderr
    assert "the run has no direction 'battle' (it has: valence)" in said
