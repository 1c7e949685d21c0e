"""data_loader.py: exact cells for each musical case, bad files, bounds, resume, shards, real data."""

import csv
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np
import pytest
from pebble import ProcessExpired

from music_vae.convert import Shard, _outcome, convert_folder, recorded_shard
from music_vae.files import UMASK, UsageError, atomic_write, npy_writer
from music_vae.samples import DataSettings, LOWEST_PITCH, SkipFile, midi_to_samples, song_to_midi
from helpers import REPO, VGMIDI, needs_vgmidi
from midi_files import header, many_events_file, song_notes, track_chunk, write_midi, write_midi_ticks



def cells(sample):
    """The 1-cells of a (measures, 9216) sample as {(measure, pitch_row, step)}."""
    measure, index = np.nonzero(sample)
    return set(zip(measure.tolist(), (index // 96).tolist(), (index % 96).tolist()))


def row(pitch):
    return pitch - LOWEST_PITCH


def one_sample(path, measures, **options):
    conversion = midi_to_samples(path, DataSettings(measures=measures, **options))
    assert len(conversion.samples) == 1
    assert conversion.samples.shape == (1, measures, 9216)
    assert conversion.samples.dtype == np.uint8
    return cells(conversion.samples[0])


# --- the grid: meters, tempo, steps, pitches ------------------------------------------


def test_four_four_steps_first_and_last_step_and_pitch_edges(tmp_path):
    notes = [
        (0, 16),  # first step, lowest pitch
        (1, 62),
        (2.5, 64),
        (3.75, 65),
        (4, 67),  # next measure's downbeat
        (4 + 95 / 24, 111),  # last step of the last measure, highest pitch
    ]
    path = write_midi(tmp_path / "a.mid", notes)
    assert one_sample(path, measures=2) == {
        (0, 0, 0), (0, row(62), 24), (0, row(64), 60), (0, row(65), 90), (1, row(67), 0), (1, 95, 95),
    }


def test_three_four(tmp_path):
    path = write_midi(tmp_path / "a.mid", [(0, 60), (1, 62), (2, 64), (3, 65), (4.5, 67)], meters=[(0, 3, 4)])
    assert one_sample(path, measures=2) == {
        (0, row(60), 0), (0, row(62), 32), (0, row(64), 64), (1, row(65), 0), (1, row(67), 48),
    }


def test_six_eight(tmp_path):
    eighths = [0, 1, 3, 5, 6, 9]
    path = write_midi(tmp_path / "a.mid", [(e / 2, 60 + e) for e in eighths], meters=[(0, 6, 8)])
    assert one_sample(path, measures=2) == {
        (0, row(60), 0), (0, row(61), 16), (0, row(63), 48), (0, row(65), 80), (1, row(66), 0), (1, row(69), 48),
    }


def test_seven_eight_rounds_each_eighth_to_the_nearest_step(tmp_path):
    path = write_midi(tmp_path / "a.mid", [(e / 2, 60 + e) for e in range(8)], meters=[(0, 7, 8)])
    # 96 * k / 7 = 0, 13.7, 27.4, 41.1, 54.9, 68.6, 82.3
    expected = {(0, row(60 + k), step) for k, step in enumerate([0, 14, 27, 41, 55, 69, 82])}
    assert one_sample(path, measures=2) == expected | {(1, row(67), 0)}


def test_meter_changes_start_new_measures(tmp_path):
    meters = [(0, 4, 4), (4, 3, 4), (7, 6, 8), (10, 4, 4)]
    notes = [(0, 60), (2, 61), (4, 62), (6, 63), (7, 64), (8.5, 65), (10, 66), (13, 67)]
    path = write_midi(tmp_path / "a.mid", notes, meters=meters)
    assert one_sample(path, measures=4) == {
        (0, row(60), 0), (0, row(61), 48), (1, row(62), 0), (1, row(63), 64), (2, row(64), 0), (2, row(65), 48),
        (3, row(66), 0), (3, row(67), 72),
    }


def test_meter_change_mid_bar_cuts_the_bar_short(tmp_path):
    # 3/4 begins at beat 6, half-way through the second 4/4 bar; a note 5 ticks before it
    # belongs to the new bar's downbeat, not to the end of the cut-short bar.
    notes = [(0, 60), (5, 61), (6 - 5 / 480, 62), (7, 63)]
    path = write_midi(tmp_path / "a.mid", notes, meters=[(0, 4, 4), (6, 3, 4)])
    assert one_sample(path, measures=3) == {(0, row(60), 0), (1, row(61), 24), (2, row(62), 0), (2, row(63), 32)}


def test_tempo_change_mid_measure_does_not_move_the_grid(tmp_path):
    notes = [(0, 60), (480, 61), (960, 62), (1440, 63), (1920, 64), (2400, 65)]
    path = write_midi_ticks(tmp_path / "a.mid", notes, tempos=[(0, 120), (960, 50), (2100, 200)])
    assert one_sample(path, measures=2) == {
        (0, row(60), 0), (0, row(61), 24), (0, row(62), 48), (0, row(63), 72), (1, row(64), 0), (1, row(65), 24),
    }


def test_note_just_before_a_bar_line_rounds_to_the_downbeat(tmp_path):
    path = write_midi_ticks(tmp_path / "a.mid", [(0, 60), (1915, 61), (1905, 62)])
    assert one_sample(path, measures=2) == {(0, row(60), 0), (1, row(61), 0), (0, row(62), 95)}


def test_pickup_bar_is_left_out_and_the_first_full_bar_is_measure_zero(tmp_path):
    notes = [(0, 60), (0.5, 62), (1, 64), (2, 65), (5, 67)]
    path = write_midi(tmp_path / "a.mid", notes, meters=[(0, 1, 4), (1, 4, 4)])
    conversion = midi_to_samples(path, DataSettings(measures=2))
    assert conversion.notes_in_pickup == 2
    assert cells(conversion.samples[0]) == {(0, row(64), 0), (0, row(65), 24), (1, row(67), 0)}


def test_a_full_first_bar_in_another_meter_is_not_a_pickup(tmp_path):
    notes = [(0, 60), (4, 62)]
    path = write_midi(tmp_path / "a.mid", notes, meters=[(0, 4, 4), (4, 3, 4)])
    conversion = midi_to_samples(path, DataSettings(measures=2))
    assert conversion.notes_in_pickup == 0
    assert cells(conversion.samples[0]) == {(0, row(60), 0), (1, row(62), 0)}


def test_overlapping_notes_chords_and_doubled_tracks(tmp_path):
    notes = [  # spread over two tracks: even positions in the first, odd in the second
        (0, 60, 2),
        (2, 64),
        (1, 60, 2),
        (2, 67),  # 60 struck again in the first track while it still sounds
        (2, 71),
        (3, 72),  # a chord on beat 2
        (3, 72),  # the same onset in the other track: one cell
    ]
    path = write_midi(tmp_path / "a.mid", notes, tracks=2)
    conversion = midi_to_samples(path, DataSettings(measures=1))
    assert cells(conversion.samples[0]) == {
        (0, row(60), 0), (0, row(60), 24), (0, row(64), 48), (0, row(67), 48), (0, row(71), 48), (0, row(72), 72),
    }
    assert conversion.n_notes == 7


def test_drum_track_is_left_out(tmp_path):
    path = write_midi(tmp_path / "a.mid", [(0, 60), (4, 62)], drums=[(beat / 2, 36 + beat % 3) for beat in range(16)])
    assert one_sample(path, measures=2) == {(0, row(60), 0), (1, row(62), 0)}


def test_out_of_range_notes_fold_by_octaves_or_drop(tmp_path):
    path = write_midi(tmp_path / "a.mid", [(0, 15), (1, 112), (2, 0), (3, 127), (3, 60)])
    folded = midi_to_samples(path, DataSettings(measures=1))
    assert folded.notes_out_of_range == 4
    assert cells(folded.samples[0]) == {
        (0, row(27), 0), (0, row(100), 24), (0, row(24), 48), (0, row(103), 72), (0, row(60), 72),
    }
    dropped = midi_to_samples(path, DataSettings(measures=1, out_of_range="drop"))
    assert dropped.notes_out_of_range == 4
    assert cells(dropped.samples[0]) == {(0, row(60), 72)}
    shifted = midi_to_samples(path, DataSettings(measures=1, lowest_pitch=0, out_of_range="drop"))
    assert cells(shifted.samples[0]) == {(0, 15, 0), (0, 0, 48), (0, 60, 72)}


def test_windows_are_consecutive_and_silent_or_leftover_measures_are_dropped(tmp_path):
    notes = [(b, p) for b, p in song_notes(51) if not 16 * 4 <= b < 32 * 4]
    path = write_midi(tmp_path / "a.mid", notes)
    conversion = midi_to_samples(path)
    assert conversion.n_measures == 51
    assert conversion.first_measures == [0, 32]
    assert conversion.samples.shape == (2, 16, 9216)
    assert all(sample.sum() == 64 for sample in conversion.samples)


def test_too_short_and_note_less_files_raise_skipfile_with_a_reason(tmp_path):
    with pytest.raises(SkipFile, match="too short: 15 measures"):
        midi_to_samples(write_midi(tmp_path / "short.mid", song_notes(15)))
    with pytest.raises(SkipFile, match="drums only: 8 drum notes"):
        midi_to_samples(write_midi(tmp_path / "drums.mid", [], drums=[(b, 36) for b in range(8)]))
    with pytest.raises(SkipFile, match="no notes"):
        midi_to_samples(write_midi(tmp_path / "empty.mid", []))


# --- the way back -----------------------------------------------------------------------


def test_round_trip_midi_sample_midi_sample_is_the_identity(tmp_path):
    path = write_midi(tmp_path / "a.mid", song_notes(16) + [(0.25, 40), (63.875, 90)], meters=[(0, 4, 4)])
    sample = midi_to_samples(path).samples[0]
    song_to_midi(sample, tmp_path / "back.mid")
    assert np.array_equal(midi_to_samples(tmp_path / "back.mid").samples[0], sample)


@pytest.mark.slow
def test_round_trip_of_dense_random_songs(tmp_path):
    rng = np.random.default_rng(0)
    for density in (0.002, 0.05, 0.5):
        song = (rng.random((16, 9216)) < density).astype(np.uint8)
        song_to_midi(song, tmp_path / "random.mid", bpm=97)
        assert np.array_equal(midi_to_samples(tmp_path / "random.mid").samples[0], song)


def test_song_to_midi_thresholds_probabilities_and_sets_velocity_length_and_tempo(tmp_path):
    song = np.zeros((16, 96, 96), np.float32)
    song[0, row(60), 0] = 0.9  # strongest
    song[0, row(60), 6] = 0.3  # weakest above the threshold, six steps later
    song[0, row(64), 24] = 0.6
    song[1, row(67), 0] = 0.1  # below the threshold
    midi = song_to_midi(song, tmp_path / "p.mid", bpm=60, threshold=0.3)
    notes = sorted(midi.instruments[0].notes, key=lambda note: (note.start, note.pitch))
    assert [(n.pitch, n.velocity) for n in notes] == [(60, 100), (60, 40), (64, 70)]
    step = 4 / 96  # seconds at 60 bpm
    assert notes[0].start == pytest.approx(0) and notes[0].end == pytest.approx(6 * step)  # cut by the next onset
    assert notes[1].end - notes[1].start == pytest.approx(12 * step)  # an eighth note
    assert notes[2].start == pytest.approx(24 * step)
    reread = midi_to_samples(tmp_path / "p.mid", DataSettings(measures=1)).samples[0]
    assert cells(reread) == {(0, row(60), 0), (0, row(60), 6), (0, row(64), 24)}


# --- folders: bad files, bounds, resume ---------------------------------------------------


def good_files(folder):
    write_midi(folder / "good.mid", song_notes(32))
    write_midi(folder / "LOUD.MID", song_notes(16, pitch=50))
    (folder / "sub").mkdir()
    write_midi(folder / "sub" / "good.mid", song_notes(17, pitch=70))
    write_midi(folder / "sub" / "three.midi", song_notes(12), meters=[(0, 3, 4)])
    riff = (folder / "good.mid").read_bytes()
    (folder / "riff.mid").write_bytes(b"RIFF\x00\x00\x00\x00RMIDdata\x00\x00\x00\x00" + riff)
    (folder / "notes.txt").write_text("not a MIDI file, and not named like one")
    return {"good.mid": 2, "LOUD.MID": 1, "sub/good.mid": 1, "sub/three.midi": 1, "riff.mid": 2}


def bad_files(folder):
    good = (folder / "good.mid").read_bytes()
    (folder / "empty.mid").write_bytes(b"")
    (folder / "random.mid").write_bytes(np.random.default_rng(1).bytes(5000))
    (folder / "text.mid").write_text("Title: a song\nThis is a text file with a .mid name.\n" * 20)
    (folder / "truncated.mid").write_bytes(good[: len(good) // 2])
    (folder / "huge_length.mid").write_bytes(header() + track_chunk(b"\x00\x90\x3c\x40", length=0xFFFFFFF0))
    (folder / "huge_header.mid").write_bytes(header(length=0x7FFFFFFF) + good[14:])
    (folder / "bad_byte.mid").write_bytes(header() + track_chunk(b"\x00\x90\x3c\xc0\x00\xff\x2f\x00"))
    (folder / "smpte.mid").write_bytes(header(resolution=0xE728) + good[14:])
    far = b"\x00\x90\x3c\x40" + b"\x8f\xff\xff\x7f\x90\x3e\x40" * 300 + b"\x00\xff\x2f\x00"
    (folder / "far_note.mid").write_bytes(header() + track_chunk(far))
    write_midi(folder / "no_notes.mid", [])
    write_midi(folder / "drums.mid", [], drums=[(b, 36) for b in range(64)])
    write_midi(folder / "short.mid", song_notes(3))
    return {
        "empty.mid": "empty file", "random.mid": "not a MIDI file", "text.mid": "not a MIDI file",
        "truncated.mid": "truncated", "huge_length.mid": "truncated", "huge_header.mid": "truncated",
        "bad_byte.mid": "corrupt", "smpte.mid": "unsupported", "far_note.mid": "too long", "no_notes.mid": "no notes",
        "drums.mid": "drums only", "short.mid": "too short",
    }


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def check_output(output_dir, expected_samples, expected_skips):
    """index.csv, skipped.csv and the .npy files agree, and every sample is well-formed."""
    index = read_csv(output_dir / "index.csv")
    skipped = {row["source"]: row["reason"] for row in read_csv(output_dir / "skipped.csv")}
    per_source = {}
    for entry in index:
        per_source[entry["source"]] = per_source.get(entry["source"], 0) + 1
        sample = np.load(output_dir / entry["sample"])
        assert sample.shape == (16, 9216) and sample.dtype == np.uint8
        assert set(np.unique(sample)) <= {0, 1}
        assert sample.sum() == int(entry["n_notes"]) > 0
        assert int(entry["first_measure"]) % 16 == 0
    assert per_source == expected_samples
    assert {source: reason.split(":")[0] for source, reason in skipped.items()} == expected_skips
    assert sorted(p.name for p in output_dir.glob("*.npy")) == sorted(e["sample"] for e in index)
    assert not list(output_dir.glob("*.part"))
    return index


def test_bad_files_are_skipped_with_reasons_and_good_files_still_convert(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    expected_samples = good_files(source)
    expected_skips = bad_files(source)
    summary = convert_folder(source, tmp_path / "out", workers=2, progress=False)
    index = check_output(tmp_path / "out", expected_samples, expected_skips)
    # equal file names in different folders never collide
    names = {e["source"]: e["sample"] for e in index if e["first_measure"] == "0"}
    assert names["good.mid"] != names["sub/good.mid"]
    assert summary.files_read == len(expected_samples) + len(expected_skips)
    assert summary.samples_written == len(index) == 7
    assert summary.skipped["truncated"] == 3
    assert "7 samples written from 5 files; 12 files skipped" in summary.text(tmp_path / "out", DataSettings())


@pytest.fixture(scope="module")
def many_events(tmp_path_factory):
    """A 2.9 MB file of a million notes: about 4 s and 260 MB for mido to parse."""
    folder = tmp_path_factory.mktemp("many")
    many_events_file(folder / "million.mid", 1_000_000)
    write_midi(folder / "good.mid", song_notes(16))
    return folder


@pytest.mark.parametrize(
    "bound, reason",
    [
        ({"max_file_mb": 1}, "too large: 2.9 MB, more than 1 MB"), ({"timeout": 1}, "timeout: no result after 1 s"),
        pytest.param({"memory_mb": 300}, "out of memory", marks=pytest.mark.slow),  # it fills 300 MB first
    ],
)
def test_an_absurd_file_is_stopped_by_each_bound_and_the_run_goes_on(many_events, tmp_path, bound, reason):
    started = time.perf_counter()
    convert_folder(many_events, tmp_path, workers=1, progress=False, **bound)
    assert time.perf_counter() - started < 30
    skipped = read_csv(tmp_path / "skipped.csv")
    assert [row["source"] for row in skipped] == ["million.mid"]
    assert skipped[0]["reason"].startswith(reason)
    assert [row["source"] for row in read_csv(tmp_path / "index.csv")] == ["good.mid"]


def test_a_crashed_or_hung_worker_becomes_a_skip_reason():
    crashed, hung, buggy = Future(), Future(), Future()
    crashed.set_exception(ProcessExpired("Abnormal termination", code=-11))
    hung.set_exception(FutureTimeout("Task timeout", 5))
    buggy.set_exception(IndexError("index 3 is out of bounds"))
    assert _outcome(crashed, 5) == "worker crashed: exit code -11"
    assert _outcome(hung, 5) == "timeout: no result after 5 s"
    assert _outcome(buggy, 5) == "error: IndexError: index 3 is out of bounds"
    disk_full = Future()
    disk_full.set_exception(OSError(28, "No space left on device"))
    with pytest.raises(OSError):
        _outcome(disk_full, 5)


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_written_files_get_the_usual_mode_not_a_temporary_files_private_one(tmp_path):
    atomic_write(tmp_path / "song.npy", npy_writer(np.zeros((2, 3), np.uint8)))
    mode = (tmp_path / "song.npy").stat().st_mode & 0o777
    assert mode == 0o666 & ~UMASK  # 0o644 with the usual umask, where mkstemp gives 0o600
    assert mode & 0o400


def test_running_again_resumes_and_adds_nothing(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    expected = good_files(source)
    first = convert_folder(source, tmp_path / "out", progress=False)
    before = (tmp_path / "out" / "index.csv").read_text()
    again = convert_folder(source, tmp_path / "out", progress=False)
    assert (again.files_read, again.files_done_before, again.samples_written) == (0, first.files_read, 0)
    assert (tmp_path / "out" / "index.csv").read_text() == before
    check_output(tmp_path / "out", expected, {})


def test_resume_drops_a_torn_index_line_and_leftover_part_files(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    expected = good_files(source)
    out = tmp_path / "out"
    convert_folder(source, out, progress=False)
    # As if killed while appending LOUD.MID's row and while writing another sample.
    index = out / "index.csv"
    lines = index.read_text().splitlines(keepends=True)
    loud = next(i for i, line in enumerate(lines) if ",LOUD.MID," in line)
    index.write_text("".join(lines[:loud] + lines[loud + 1 :]) + lines[loud][:20])
    (out / "x.npy.abc123.part").write_bytes(b"\x93NUMPY half")
    convert_folder(source, out, progress=False)
    check_output(out, expected, {})


def test_resume_with_other_settings_is_refused(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    good_files(source)
    convert_folder(source, tmp_path / "out", progress=False)
    with pytest.raises(UsageError, match="lowest_pitch=16"):
        convert_folder(source, tmp_path / "out", DataSettings(lowest_pitch=20), progress=False)


# --- the command line ---------------------------------------------------------------------


def run_cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, str(REPO / "data_loader.py"), *map(str, args)], capture_output=True, text=True, cwd=REPO,
        **kwargs,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}", "{out}"], "input folder .* does not exist"),
        (["{input}", "{file}/out"], "cannot write to output folder"),
        (["{input}", "{out}", "--workers", "0"], "--workers: must be 1 or more"),
        (["{input}", "{out}", "--lowest-pitch", "33"], "--lowest-pitch: must be from 0 to 32"),
        (["{input}", "{out}", "--out-of-range", "wrap"], "--out-of-range: invalid choice"),
        (["{input}", "{broken}"], "settings.json does not hold the settings of data_loader.py"),
    ],
)
def test_user_mistakes_get_one_line_and_exit_code_2(tmp_path, args, message):
    (tmp_path / "input").mkdir()
    (tmp_path / "file").write_text("a file, not a folder")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "settings.json").write_text("{truncated")
    places = {
        "broken": tmp_path / "broken", "missing": tmp_path / "missing", "out": tmp_path / "out",
        "input": tmp_path / "input", "file": tmp_path / "file",
    }
    result = run_cli(*[arg.format(**places) for arg in args])
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert __import__("re").search(message, result.stderr)


def test_help_documents_every_option():
    result = run_cli("--help")
    assert result.returncode == 0
    for option in [
        "--workers", "--lowest-pitch", "--measures", "--out-of-range", "--timeout", "--max-file-size",
        "--worker-memory", "--shard",
    ]:
        assert option in result.stdout
    assert "moved by octaves" in result.stdout


def test_full_disk_stops_with_one_line_and_resume_finishes(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    expected = good_files(source)

    def small_disk():  # files may not grow past 100 KB: a sample is 147 KB
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    result = run_cli(source, tmp_path / "out", preexec_fn=small_disk)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "File too large" in result.stderr, result.stderr
    assert not list((tmp_path / "out").glob("*.npy")) and not list((tmp_path / "out").glob("*.part"))
    assert read_csv(tmp_path / "out" / "index.csv") == []
    assert read_csv(tmp_path / "out" / "skipped.csv") == []
    assert run_cli(source, tmp_path / "out").returncode == 0
    check_output(tmp_path / "out", expected, {})


# --- shards: one folder converted on several machines ---------------------------------------


def conversion(folder):
    """A conversion's content: {sample name: bytes}, and its index and skipped rows as sets.
    Checks on the way that the folder is complete on its own: its index lists exactly its samples."""
    index = {tuple(entry.values()) for entry in read_csv(folder / "index.csv")}
    samples = {path.name: path.read_bytes() for path in folder.glob("*.npy")}
    assert sorted(samples) == sorted(entry[0] for entry in index)
    assert not list(folder.glob("*.part"))
    return samples, index, {tuple(entry.values()) for entry in read_csv(folder / "skipped.csv")}


def test_shards_are_disjoint_and_together_are_the_whole_conversion_file_for_file(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    good_files(source)
    bad_files(source)
    (source / "more" / "deeper").mkdir(parents=True)
    for number in range(4):
        write_midi(source / "more" / f"song {number}.mid", song_notes(16 * (number + 1), pitch=40 + 5 * number))
    write_midi(source / "more" / "deeper" / "Café Ünïcode.mid", song_notes(33))
    assert run_cli(source, tmp_path / "whole", "--workers", 2).returncode == 0
    whole = conversion(tmp_path / "whole")
    # Each shard in a process of its own, as on other machines: Python's hash() would differ in each.
    results = [run_cli(source, tmp_path / "out" / f"shard{i}", "--shard", f"{i}/3", "--workers", 2) for i in range(3)]
    shards = [conversion(tmp_path / "out" / f"shard{i}") for i in range(3)]

    sources = [{row[1] for row in index} | {row[0] for row in skipped} for _, index, skipped in shards]
    assert all(sources)  # every shard got some files...
    assert sum(map(len, sources)) == len(set.union(*sources)) == 22  # ...and no file is in two
    for i, (result, shard_sources) in enumerate(zip(results, sources)):
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"Shard {i}/3: {len(shard_sources)} of 22 MIDI files. Read ")
        assert json.loads((tmp_path / "out" / f"shard{i}" / "settings.json").read_text())["shard"] == f"{i}/3"
    samples = {name: data for shard_samples, _, _ in shards for name, data in shard_samples.items()}
    assert sum(len(shard_samples) for shard_samples, _, _ in shards) == len(samples)
    assert samples == whole[0]  # the same names and the same bytes
    assert set.union(*(index for _, index, _ in shards)) == whole[1]
    assert set.union(*(skipped for _, _, skipped in shards)) == whole[2]
    assert len(whole[0]) == 19 and len(whole[2]) == 12


def shards_holding(source, count):
    return [index for index in range(count) if Shard(index, count).holds(source)]


def test_a_files_shard_depends_on_its_relative_path_alone():
    # Pinned: shards converted by this version and by a later one on another machine must agree.
    assert shards_holding("sub/good.mid", 4) == [0]
    assert shards_holding("LOUD.MID", 4) == [3]
    assert shards_holding("sub/Café.mid", 7) == shards_holding("sub/Cafe\u0301.mid", 7) == [1]  # as macOS may spell it
    assert all(Shard().holds(source) for source in ("a.mid", "sub/b.MIDI", "Café.mid"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--shard", "0/0"], "N of I/N must be 1 or more, not 0"),
        (["--shard", "3/2"], r"I of I/2 must be from 0 to 1 \(counted from 0\), not 3"),
        (["--shard", "abc"], r"expected I/N, shard I of N counted from 0 \(such as 0/4\), not 'abc'"),
        (["--shard", "-1/2"], "I of I/2 must be from 0 to 1 .*, not -1"),
        (["--shard=-1/2"], "I of I/2 must be from 0 to 1 .*, not -1"),
        (["--shard", "1/4/8"], "expected I/N, .*, not '1/4/8'"),
    ],
    ids=["0/0", "3/2", "abc", "-1/2", "=-1/2", "1/4/8"],
)
def test_bad_shard_values_get_one_line_and_exit_code_2(tmp_path, args, message):
    result = run_cli(tmp_path, tmp_path / "out", *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert re.search(f"^data_loader.py: error: argument --shard: {message} \\(see --help\\)$", result.stderr.strip())
    assert not (tmp_path / "out").exists()


def test_a_shard_folder_refuses_another_shard_and_the_whole_and_resumes_its_own(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    good_files(source)
    out = tmp_path / "shard1"
    convert_folder(source, out, shard=Shard(1, 3), workers=1, progress=False)
    before = conversion(out)
    assert [row[1] for row in before[1]] == ["sub/three.midi"]  # the one file of good_files in shard 1/3
    for other in (Shard(2, 3), Shard(1, 4), Shard()):
        with pytest.raises(UsageError, match=re.escape(f"{out} holds a conversion of shard 1/3, not of ")):
            convert_folder(source, out, shard=other, workers=1, progress=False)
    result = run_cli(source, out)
    assert result.returncode == 2
    assert result.stderr == (
        f"data_loader.py: error: {out} holds a conversion of shard 1/3, not of all the MIDI files; "
        "resume it with --shard 1/3, or use a new output folder for each shard\n"
    )
    assert conversion(out) == before
    again = convert_folder(source, out, shard=Shard(1, 3), workers=1, progress=False)
    assert (again.files_read, again.files_done_before) == (0, 1)
    # The shard is a key of its own in settings.json: code that reads only the settings still does.
    assert DataSettings.read(out) == DataSettings()
    assert recorded_shard(out) == Shard(1, 3)

    convert_folder(source, tmp_path / "whole", workers=1, progress=False)
    assert recorded_shard(tmp_path / "whole") == Shard()
    with pytest.raises(UsageError, match="of all the MIDI files, not of shard 0/2; resume it without --shard,"):
        convert_folder(source, tmp_path / "whole", shard=Shard(0, 2), workers=1, progress=False)
    settings = out / "settings.json"
    settings.write_text(settings.read_text().replace('"1/3"', '"3/3"'))
    with pytest.raises(UsageError, match="settings.json names no shard that data_loader.py writes"):
        convert_folder(source, out, shard=Shard(1, 3), workers=1, progress=False)


# --- the real corpus -----------------------------------------------------------------------

# What `python data_loader.py ../shared/midi/vgmidi OUT` gives with the default settings
# (705 files; measured when the converter was written and again after each change to it):
# a change that moves these numbers must say why.
VGMIDI_SAMPLES = 2177
VGMIDI_SKIPS = {"too short": 56, "corrupt": 1}
# The same for the NES Music Database's 4,700 files (../shared/midi/README.md): 22,050 ticks a
# beat, many control changes, a noise voice on the drum channel.
NESMDB = Path(os.environ.get("NESMDB_DIR", VGMIDI.parent / "nesmdb"))
NESMDB_SAMPLES = 2951
NESMDB_SKIPS = {"too short": 2649, "no notes": 211, "drums only": 13}
needs_nesmdb = pytest.mark.skipif(
    not NESMDB.is_dir(), reason=f"the NES MIDI corpus is not at {NESMDB} (CI has ../shared beside the repository)"
)


@needs_vgmidi
@pytest.mark.slow
def test_whole_vgmidi_corpus_converts_and_a_resume_adds_nothing(tmp_path):
    result = run_cli(VGMIDI, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert f"{VGMIDI_SAMPLES} samples written from 648 files" in result.stdout
    index = read_csv(tmp_path / "out" / "index.csv")
    skipped = read_csv(tmp_path / "out" / "skipped.csv")
    assert len(index) == VGMIDI_SAMPLES
    reasons = {}
    for entry in skipped:
        reasons[entry["reason"].split(":")[0]] = reasons.get(entry["reason"].split(":")[0], 0) + 1
    assert reasons == VGMIDI_SKIPS
    samples = np.stack([np.load(tmp_path / "out" / entry["sample"]) for entry in index])
    assert samples.shape == (VGMIDI_SAMPLES, 16, 9216) and samples.dtype == np.uint8
    assert samples.max() == 1
    assert (samples.sum(axis=(1, 2)) == [int(e["n_notes"]) for e in index]).all()
    assert len({(e["source"], e["first_measure"]) for e in index}) == VGMIDI_SAMPLES

    again = run_cli(VGMIDI, tmp_path / "out")
    assert "Read 0 of 705 MIDI files" in again.stdout and "the other 705 were done by an earlier run" in again.stdout
    assert len(read_csv(tmp_path / "out" / "index.csv")) == VGMIDI_SAMPLES
    assert len(list((tmp_path / "out").glob("*.npy"))) == VGMIDI_SAMPLES


@needs_nesmdb
@pytest.mark.slow
def test_whole_nesmdb_corpus_converts_with_every_file_accounted_for(tmp_path):
    result = run_cli(NESMDB, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "Read 4700 of 4700 MIDI files" in result.stdout
    assert f"{NESMDB_SAMPLES} samples written from 1827 files" in result.stdout
    index = read_csv(tmp_path / "out" / "index.csv")
    reasons = [entry["reason"].split(":")[0] for entry in read_csv(tmp_path / "out" / "skipped.csv")]
    assert len(index) == NESMDB_SAMPLES
    assert {reason: reasons.count(reason) for reason in set(reasons)} == NESMDB_SKIPS
    for entry in index[::50]:
        sample = np.load(tmp_path / "out" / entry["sample"])
        assert sample.shape == (16, 9216) and sample.sum() == int(entry["n_notes"])


@needs_vgmidi
@pytest.mark.slow
def test_a_run_killed_at_any_moment_resumes_to_the_same_result(tmp_path):
    out = tmp_path / "out"
    for rows_before_kill in (100, 1000):
        process = subprocess.Popen(
            [sys.executable, str(REPO / "data_loader.py"), str(VGMIDI), str(out)], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )
        while not (out / "index.csv").exists() or len(read_csv(out / "index.csv")) < rows_before_kill:
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)  # the main process and its workers, mid-write
        process.wait()
        index = read_csv(out / "index.csv")
        assert 0 < len(index) < VGMIDI_SAMPLES
        for entry in index:  # every listed sample is complete
            assert np.load(out / entry["sample"]).shape == (16, 9216)
    assert run_cli(VGMIDI, out).returncode == 0
    index = read_csv(out / "index.csv")
    assert len(index) == VGMIDI_SAMPLES
    assert len({e["sample"] for e in index}) == VGMIDI_SAMPLES
    assert len(list(out.glob("*.npy"))) == VGMIDI_SAMPLES
    assert not list(out.glob("*.part"))


@needs_vgmidi
@pytest.mark.slow
def test_real_samples_survive_the_round_trip(tmp_path):
    checked = 0
    for path in sorted(VGMIDI.glob("*.mid"))[:40:4]:  # 10 files; one is too short for a sample
        try:
            conversion = midi_to_samples(path)
        except SkipFile:
            continue
        for sample in conversion.samples:
            song_to_midi(sample, tmp_path / "back.mid")
            assert np.array_equal(midi_to_samples(tmp_path / "back.mid").samples[0], sample)
            checked += 1
    assert checked == 25  # the samples of the other 9: none was passed over


def test_convert_bench_times_every_file_and_profiles_the_slowest():
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "convert_speed.py"), str(REPO / "examples" / "midi"), "--repeat", "0",
         "--slowest", "3"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert "Each of the 32 files converted alone in this process" in result.stdout
    row = r"^  (demo\S+\.mid) +\d+ +\d+ +\d+ +([\d.]+) +([\d.]+) +(-?[\d.]+) +([\d.]+)$"  # file KB ... convert ...
    rows = re.findall(row, result.stdout, re.M)
    assert len(rows) == 3, result.stdout
    assert [float(row[1]) for row in rows] == sorted((float(row[1]) for row in rows), reverse=True)
    assert "together: convert" in result.stdout and "mido/midifiles/midifiles.py" in result.stdout
