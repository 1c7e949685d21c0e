"""Listening to and judging a run: WAV audio, the run page (in headless Chromium), the
TensorBoard audio and scalars, and the music metrics of the evaluate command."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import music_generator as mg
from music_vae import music_metrics as mm
from music_vae.audio import (
    AUDIO_PEAK, AUDIO_SAMPLE_RATE, AUDIO_TAIL_S, HIDE_FLUIDSYNTH, SOUNDFONTS, Synthesizer, has_fluidsynth, wav_writer,
)
from music_vae.dataset import read_data
from music_vae.evaluation import evaluation_image, evaluation_table, histogram_edges, json_safe
from music_vae.files import UsageError, atomic_write
from music_vae.run_page import song_groups
from music_vae.samples import (
    DEFAULT_BPM, LOWEST_PITCH, MEASURE_SIZE, PITCHES, STEPS_PER_MEASURE, SkipFile, midi_to_song, song_to_midi,
)
from helpers import REPO, make_samples, parameters_to_run, run_cli, tensorboard_events, train

SONG_SECONDS = 16 * 4 * 60 / DEFAULT_BPM  # 32 s: 16 measures of 4/4 at 120 bpm


def melody(measures=16, notes_in=range(16)):
    """A song with a C major arpeggio on every beat of the measures in ``notes_in``."""
    song = np.zeros((measures, PITCHES, STEPS_PER_MEASURE), np.uint8)
    for measure in notes_in:
        for beat, pitch in enumerate((60, 64, 67, 72)):
            song[measure, pitch - LOWEST_PITCH, beat * 24] = 1
    return song.reshape(measures, MEASURE_SIZE)


def rms(audio, start_s, end_s, rate=AUDIO_SAMPLE_RATE):
    return float(np.sqrt(np.mean(np.square(audio[int(start_s * rate) : int(end_s * rate)]))))


# --- audio -------------------------------------------------------------------------------------


def synthesizers():
    """The sine-wave synthesizer, and FluidSynth where it is installed."""
    soundfont = next((path for path in SOUNDFONTS if Path(path).is_file()), None)
    reason = "FluidSynth is not installed (Debian: apt install fluidsynth fluid-soundfont-gm; pip install pyfluidsynth)"
    fluidsynth = pytest.param(soundfont, id="fluidsynth", marks=pytest.mark.skipif(not has_fluidsynth(), reason=reason))
    return [pytest.param(None, id="sine"), fluidsynth]


@pytest.mark.parametrize("soundfont", synthesizers())
def test_a_song_sounds_where_it_has_notes_and_lasts_its_measures(soundfont):
    synthesizer = Synthesizer(soundfont)
    midi = song_to_midi(melody(notes_in=range(8)))  # the second half is silent
    audio = synthesizer.render(midi, SONG_SECONDS)
    assert audio.dtype == np.float32
    assert len(audio) == round((SONG_SECONDS + AUDIO_TAIL_S) * AUDIO_SAMPLE_RATE)
    assert np.abs(audio).max() == pytest.approx(AUDIO_PEAK)
    assert rms(audio, 1, 15) > 0.02  # measures 1-8 play
    assert rms(audio, 18, 32) < rms(audio, 1, 15) / 100  # measures 10-16 are silent
    # Nothing of that song rings on into the next, whose first half is silent.
    second_half = synthesizer.render(song_to_midi(melody(notes_in=range(8, 16))), SONG_SECONDS)
    assert not second_half[: 15 * AUDIO_SAMPLE_RATE].any() and rms(second_half, 17, 31) > 0.02


@pytest.mark.parametrize("soundfont", synthesizers())
def test_a_silent_song_is_silence_of_its_length(soundfont):
    audio = Synthesizer(soundfont).render(song_to_midi(np.zeros((16, MEASURE_SIZE))), SONG_SECONDS)
    assert len(audio) == round((SONG_SECONDS + AUDIO_TAIL_S) * AUDIO_SAMPLE_RATE)
    assert not audio.any()


def test_the_best_synthesizer_is_fluidsynth_with_a_general_midi_soundfont_where_installed():
    synthesizer = Synthesizer.best()
    if has_fluidsynth():
        assert synthesizer.fluidsynth and Path(synthesizer.soundfont).is_file()
        assert str(synthesizer).startswith("FluidSynth with ")
    else:
        assert synthesizer.fluidsynth is None and "sine waves" in str(synthesizer)


@pytest.mark.slow
def test_fluidsynth_hidden_by_the_environment_is_as_if_not_installed_and_training_says_so(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv(HIDE_FLUIDSYNTH, "1")
    assert not has_fluidsynth() and Synthesizer.best().fluidsynth is None
    with pytest.raises(UsageError, match="needs FluidSynth"):
        Synthesizer(SOUNDFONTS[-1])
    code, run = train(tmp_path, "--songs", "1", epochs=1)
    assert code == 0
    assert "note: the songs' WAV files are rendered with pretty_midi's sine waves" in capsys.readouterr().err
    assert re.search(r"audio\s+pretty_midi's sine waves", next(run.glob("*_info.txt")).read_text())


@pytest.mark.slow
def test_importing_the_modules_prints_nothing_even_under_ci():
    # pyfluidsynth announces its library on stdout when $CI is set, which broke scripts
    # (and a test) that read what our commands print.
    env = {**os.environ, "CI": "true"}
    code = (
        "import data_loader, music_generator, fluidsynth" if has_fluidsynth() else "import data_loader, music_generator"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == ""


def test_wav_files_are_16_bit_mono_pcm_of_the_audio(tmp_path):
    audio = np.sin(np.linspace(0, 2 * np.pi * 440, AUDIO_SAMPLE_RATE, dtype=np.float32)) * 0.5
    atomic_write(tmp_path / "a.wav", wav_writer(audio))
    with wave.open(str(tmp_path / "a.wav")) as file:
        assert (file.getnchannels(), file.getsampwidth(), file.getframerate(), file.getnframes()) == (
            1, 2, AUDIO_SAMPLE_RATE, len(audio),
        )
        pcm = np.frombuffer(file.readframes(len(audio)), "<i2")
    assert np.allclose(pcm / 32767, audio, atol=1 / 32767)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.wav"]


def test_a_soundfont_that_is_not_one_is_a_usage_error(tmp_path):
    (tmp_path / "fake.sf2").write_bytes(b"RIFF not a soundfont")
    with pytest.raises(UsageError, match="not a SoundFont|needs FluidSynth"):
        Synthesizer(tmp_path / "fake.sf2")


def test_midi_to_song_reads_back_what_song_to_midi_wrote_silent_measures_included():
    song = melody(notes_in=[0, 3, 7])  # measures 8-16 silent: the MIDI file ends at measure 8
    assert np.array_equal(midi_to_song(_midi_bytes(song)), song)
    assert not midi_to_song(_midi_bytes(np.zeros((16, MEASURE_SIZE)))).any()
    with pytest.raises(SkipFile, match="not a MIDI file"):
        midi_to_song(b"random bytes")


def _midi_bytes(song):
    import io

    buffer = io.BytesIO()
    song_to_midi(song).write(buffer)
    return buffer.getvalue()


# --- music metrics, with known answers ---------------------------------------------------------


def test_features_of_a_song_built_by_hand():
    song = np.zeros((16, PITCHES, STEPS_PER_MEASURE), np.uint8)
    for measure in range(8):  # measures 9-16 stay empty
        for step in (0, 3):  # 0 is on the 16th-note grid (6 steps), 3 is not
            song[measure, [60 - LOWEST_PITCH, 67 - LOWEST_PITCH], step] = 1  # C and G together
    features = mm.song_features(song.reshape(16, -1))
    assert features["notes_per_measure"] == 32 / 16
    assert features["empty_measures"] == 8
    assert features["pitch_range"] == 7
    assert features["pitch_class_entropy"] == pytest.approx(1.0)  # two pitch classes, equally often
    assert features["polyphony"] == 2  # two onsets on every onset step
    assert features["sixteenth_grid"] == 0.5
    # 8 equal measures give 28 repeated pairs, 8 empty ones 28 more, of 120 pairs.
    assert features["repeated_measures"] == pytest.approx(56 / 120)
    assert features["scale_consistency"] == 1  # C and G: in C major (and 11 more scales)
    # The onset positions {0, 3} change only from measure 8 to 9: 2 of 96 positions, once in 15 pairs.
    assert features["groove_consistency"] == pytest.approx(1 - 2 / (96 * 15))
    # Measures of 4 notes and of none, as many of each: a standard deviation of 2.
    assert features["notes_per_measure_spread"] == 2
    # The top line is G throughout: 15 moves, none a leap.
    assert features["top_line_leaps"] == 0


def test_the_top_line_is_the_highest_onset_of_each_step_and_its_leaps_are_beyond_a_fifth():
    song = np.zeros((16, PITCHES, STEPS_PER_MEASURE), np.uint8)
    tops = [60, 67, 75, 76, 64]  # moves of 7, 8, 1 and 12 semitones: two leaps in four
    for beat, top in enumerate(tops):
        song[0, top - LOWEST_PITCH, beat * 12] = 1
        song[0, 40 - LOWEST_PITCH, beat * 12] = 1  # a bass note under each: not the top line
    song[3, 30 - LOWEST_PITCH, 0] = 1  # a later note, lower than all: a move of 34
    features = mm.song_features(song.reshape(16, -1))
    assert features["top_line_leaps"] == pytest.approx(3 / 5)
    counts = np.array([10, 0, 0, 1] + [0] * 12)
    assert features["notes_per_measure_spread"] == pytest.approx(counts.std())
    assert math.isnan(mm.song_features(np.zeros((16, MEASURE_SIZE)))["top_line_leaps"])


def test_scale_consistency_is_the_share_in_the_best_major_or_minor_scale():
    song = np.zeros((16, PITCHES, STEPS_PER_MEASURE), np.uint8)
    song[0, np.arange(60, 72) - LOWEST_PITCH, np.arange(12) * 8] = 1  # all 12 pitch classes, once each
    assert mm.song_features(song.reshape(16, -1))["scale_consistency"] == pytest.approx(7 / 12)
    song[1, [69 - LOWEST_PITCH, 71 - LOWEST_PITCH, 72 - LOWEST_PITCH], 0] = 1  # A, B, C: 3 more in A minor
    song[2, [61 - LOWEST_PITCH], 0] = 1  # and C#, which is not
    assert mm.song_features(song.reshape(16, -1))["scale_consistency"] == pytest.approx(10 / 16)
    silent = mm.song_features(np.zeros((16, MEASURE_SIZE)))
    assert math.isnan(silent["scale_consistency"]) and math.isnan(silent["groove_consistency"])


def training_measures(count=9, seed=5):
    """``count`` random training samples, as chunks of (measures, places) with each sample its
    own file (file number ``n`` for sample ``n``), and the samples."""
    rng = np.random.default_rng(seed)
    samples = np.zeros((count, 16, PITCHES, STEPS_PER_MEASURE), np.uint8)
    cells = rng.integers(0, [count, 16, 60, STEPS_PER_MEASURE], size=(count * 16 * 12, 4))
    samples[cells[:, 0], cells[:, 1], cells[:, 2] + 20, cells[:, 3]] = 1  # pitch rows 20-79: room to move
    samples = samples.reshape(count, 16, MEASURE_SIZE)
    places = (np.arange(count)[:, None] << 32) + np.arange(16)
    chunks = [(samples[start : start + 4].reshape(-1, MEASURE_SIZE), places[start : start + 4].ravel())
              for start in range(0, count, 4)]
    return chunks, samples


def transposed(measures, semitones):
    return np.roll(measures.reshape(-1, PITCHES, STEPS_PER_MEASURE), semitones, axis=1).reshape(measures.shape)


def test_a_training_phrase_moved_up_3_semitones_and_5_measures_on_is_found_as_a_phrase_copy():
    chunks, samples = training_measures()
    rng = np.random.default_rng(9)
    copy = (rng.random((16, MEASURE_SIZE)) < 0.002).astype(np.uint8)  # unlike any training measure
    copy[5:9] = transposed(samples[6, 2:6], 3)  # measures 3-6 of file 6, from measure 6 on, 3 semitones up
    shuffled = copy.copy()
    shuffled[5:9] = copy[[6, 5, 8, 7]]  # the same measures, out of order: copies, but no phrase
    sparse_song = np.zeros((16, MEASURE_SIZE), np.uint8)
    sparse_song[:, 60 * STEPS_PER_MEASURE] = 1  # one note a measure: too plain to judge
    copied, copies = mm.replayed_measures(np.stack([copy, shuffled, sparse_song]), chunks)
    assert copied.shape == (3, 16)
    assert (copied[0, 5:9] == 1).all() and (copied[0, [0, 1, 2, 3, 4, 9]] == 0).all()
    assert np.isnan(copied[2]).all()
    found = {tuple(row) for row in copies.tolist() if row[0] == 0}
    assert found == {(0, measure, 3, (6 << 32) + measure - 3) for measure in range(5, 9)}
    assert mm.phrase_copies(copies) == [0]
    summary = mm.replay_summary(copied[:2], copies[copies[:, 0] < 2])
    assert summary["measures"] == 32 and summary["copied_share"] == 8 / 32 and summary["phrase_copies"] == 1
    # Down 6 is found too; a move that takes a note out of the pitch window is not a transposition.
    assert mm.replayed_measures(transposed(samples[1], -6)[None], chunks)[0][0].min() == 1
    high = samples[2].reshape(16, PITCHES, STEPS_PER_MEASURE).copy()
    high[:, 95, 0] = 1  # the top row: nothing can move up
    _, copies = mm.replayed_measures(transposed(high.reshape(16, -1), -2)[None], chunks)
    assert set(copies[:, 2].tolist()) == {-2}  # found, though it cannot move back up 2


def test_a_replay_of_three_measures_or_of_two_files_is_no_phrase_copy():
    chunks, samples = training_measures()
    song = np.zeros((16, MEASURE_SIZE), np.uint8)
    song[0:3] = samples[4, 8:11]
    song[8:10], song[10:12] = samples[1, 0:2], samples[2, 2:4]  # 2 measures of one file, then 2 of another
    copied, copies = mm.replayed_measures(song[None], chunks)
    assert np.count_nonzero(copied[0] == 1) == 7 and mm.phrase_copies(copies) == []
    assert mm.phrase_copies(copies, length=3) == [0]


def test_replayed_measures_are_exactly_those_a_comparison_of_every_pair_finds():
    chunks, samples = training_measures(count=6, seed=3)
    rng = np.random.default_rng(4)
    songs = (rng.random((3, 16, MEASURE_SIZE)) < 0.0015).astype(np.uint8)
    training = samples.reshape(-1, MEASURE_SIZE)
    for number in range(24):  # near copies: a few cells dropped and added, so that some just pass and some miss
        song, measure, source = number % 3, number % 16, rng.integers(len(training))
        near = transposed(training[source], int(rng.integers(-6, 7))).copy()
        notes = np.flatnonzero(near)
        near[rng.choice(notes, size=int(rng.integers(0, 4)), replace=False)] = 0
        near[rng.integers(0, MEASURE_SIZE, size=int(rng.integers(0, 3)))] = 1
        songs[song, measure] = near
    _, copies = mm.replayed_measures(songs, chunks)
    found = set()
    places = np.concatenate([place for _, place in chunks])
    for song in range(3):
        for measure in range(16):
            if songs[song, measure].sum() < mm.COPY_MIN_ONSETS:
                continue
            for semitones in range(-6, 7):
                pitches = np.flatnonzero(songs[song, measure].reshape(PITCHES, -1).any(axis=1)) - semitones
                if pitches.min() < 0 or pitches.max() >= PITCHES:  # no such transposition
                    continue
                moved = transposed(songs[song, measure], -semitones)
                shared = training.astype(int) @ moved.astype(int)
                union = training.sum(axis=1) + moved.sum() - shared
                for source in np.flatnonzero(5 * shared >= 4 * union):
                    found.add((song, measure, semitones, places[source]))
    assert {tuple(row) for row in copies.tolist()} == found and len(found) > 10


def test_onsets_a_step_off_count_within_a_step_of_tolerance_once_each_across_bar_lines():
    true, predicted = np.zeros((2, 16, PITCHES, STEPS_PER_MEASURE), np.uint8)  # one song each
    true[0, 10, [1, 2]] = 1
    predicted[0, 10, [2, 3]] = 1  # exactly: 1 of 2; a step off: both, each with its own
    true[0, 20, 95], predicted[1, 20, 0] = 1, 1  # the last step of measure 1, the first of measure 2
    predicted[0, 30, 50] = 1  # wrong, however near
    true, predicted = true.reshape(16, MEASURE_SIZE), predicted.reshape(16, MEASURE_SIZE)
    exact, near = mm.onset_scores(true, predicted), mm.onset_scores(true, predicted, tolerance=1)
    assert (exact["correct_notes"], near["correct_notes"]) == (1, 3)
    assert near["precision"] == 3 / 4 and near["recall"] == 1 and exact["recall"] == 1 / 3
    doubled = predicted.copy()
    doubled.reshape(16, PITCHES, STEPS_PER_MEASURE)[0, 10, 0] = 1  # a second guess near one true onset
    assert mm.matched_onsets(true, doubled, tolerance=1) == 3  # each true onset counts once
    assert mm.matched_onsets(np.stack([true, true]), np.stack([predicted, doubled]), tolerance=1) == 6


def test_identical_songs_have_diversity_0_and_one_measure_throughout_repeats_fully():
    song = melody()
    assert mm.diversity([song, song, song]) == 0
    assert mm.song_features(song)["repeated_measures"] == 1
    other = np.roll(song, 5, axis=1)  # the same notes five steps later: nothing shared
    assert mm.diversity([song, other]) == 1
    assert mm.diversity([song]) is None


def test_a_dataset_against_itself_overlaps_fully_and_far_apart_values_do_not():
    real = make_real_songs(40)
    results = mm.compare({f"s{i}": song for i, song in enumerate(real)}, real)
    assert all(values["overlap"] == pytest.approx(1.0) for values in results["features"].values())
    assert results["mean_overlap"] == pytest.approx(1.0)
    assert mm.overlapping_area([0, 1, 2, 1.5], [100, 101, 102]) < 1e-6
    assert mm.overlapping_area([3, 3, 3], [3, 3]) == pytest.approx(1.0)
    assert mm.overlapping_area([np.nan], [1, 2]) is None


def test_the_evaluation_picture_is_drawn_for_values_equal_up_to_rounding():
    real = make_real_songs(6)
    results = _finished(mm.compare({f"s{i}": song for i, song in enumerate(real)}, real))
    # A song and its transposition: the same pitch-class shares, summed in another order, give
    # entropies that differ in their last bits.
    results["data_features"]["pitch_class_entropy"] = [2.0, 2.0 - 2**-52]
    for values in results["songs"].values():
        values["pitch_class_entropy"] = 2.0
    assert evaluation_image(results).shape[2] == 4
    assert list(histogram_edges(np.array([2.0, 2.0]), bins=2)) == [1.5, 2.0, 2.5]


def test_a_silent_song_is_reported_and_left_out_of_the_features_it_has_none_of():
    real = make_real_songs(20)
    results = mm.compare({"loud": real[0], "silent": np.zeros((16, MEASURE_SIZE), np.uint8)}, real)
    assert results["silent_songs"] == ["silent"]
    silent = results["songs"]["silent"]
    assert silent["notes_per_measure"] == 0 and silent["empty_measures"] == 16
    assert math.isnan(silent["pitch_range"]) and math.isnan(silent["polyphony"])
    assert results["features"]["pitch_range"]["generated_mean"] == results["songs"]["loud"]["pitch_range"]
    assert "silent songs" in evaluation_table(_finished(results)) and "silent" in evaluation_table(_finished(results))
    saved = json_safe({key: value for key, value in _finished(results).items() if key != "data_features"})
    assert json.loads(json.dumps(saved, allow_nan=False))["songs"]["silent"]["pitch_range"] is None  # JSON has no NaN
    assert "silent" in evaluation_table(saved)


def test_onset_scores_and_active_units():
    true = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
    predicted = np.array([[1, 0, 1, 0], [1, 0, 0, 1]])
    scores = mm.onset_scores(true, predicted)
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.5, 2 / 3, pytest.approx(4 / 7))
    assert mm.onset_scores(true, np.zeros_like(true))["precision"] is None
    z_mean = np.array([[0.0, 1.0, 0.05], [0.0, -1.0, -0.05]])
    kl = mm.kl_per_dimension(z_mean, np.zeros_like(z_mean))
    assert kl.tolist() == pytest.approx([0, 0.5, 0.00125])
    assert np.sum(kl > mm.ACTIVE_KL) == 1


def make_real_songs(count, seed=0):
    rng = np.random.default_rng(seed)
    songs = []
    for _ in range(count):
        song = np.zeros((16, PITCHES, STEPS_PER_MEASURE), np.uint8)
        cells = rng.integers(0, [16, PITCHES, STEPS_PER_MEASURE], size=(int(rng.integers(50, 300)), 3))
        song[cells[:, 0], cells[:, 1], cells[:, 2]] = 1
        songs.append(song.reshape(16, -1))
    return songs


def _finished(results):
    """``results`` of compare() as evaluate_songs completes them."""
    return {
        **results, "latent": {"active_units": 0, "of": 4, "kl_per_song": 0, "kl_per_dimension": [0] * 4},
        "reconstruction": None, "compared": {"data_samples": 20},
    }


# --- a run: its audio, page, TensorBoard and evaluation ----------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A short run (2 epochs, 2 songs per epoch, 3 final ones), shared by the tests below."""
    tmp_path = tmp_path_factory.mktemp("listen")
    code, run = train(tmp_path, "--run-info", "a <page> & its songs", "--songs-per-epoch", "2", "--songs", "3")
    assert code == 0
    return run


def song_names(run):
    return sorted(path.stem for path in (run / "generated" / "img").glob("*.png"))


def test_the_page_lists_final_songs_then_epochs_newest_first_past_epoch_999(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("epoch999_song01", "epoch1000_song01", "epoch002_song01", "final_song01", "sample_song01"):
        (tmp_path / "img" / f"{name}.png").touch()
    assert [heading for heading, _ in song_groups(tmp_path)] == [
        "Final songs", "Songs from generate", "Epoch 1000", "Epoch 999", "Epoch 2",
    ]


@pytest.mark.slow
def test_every_song_has_a_wav_file_of_its_length(run):
    assert song_names(run) == [
        "epoch001_song01", "epoch001_song02", "epoch002_song01", "epoch002_song02", "final_song01", "final_song02",
        "final_song03",
    ]
    for name in song_names(run):
        with wave.open(str(run / "generated" / "wav" / f"{name}.wav")) as file:
            seconds = file.getnframes() / file.getframerate()
            assert seconds >= SONG_SECONDS + AUDIO_TAIL_S and seconds < SONG_SECONDS + 3, name
            assert np.abs(np.frombuffer(file.readframes(file.getnframes()), "<i2")).max() > 1000, name  # not silent
    info = next(run.glob("*_info.txt")).read_text()
    assert re.search(r"audio\s+(FluidSynth with |pretty_midi's sine waves)", info)


@pytest.mark.slow
def test_the_run_page_links_every_song_with_relative_links_to_files_that_exist(run):
    page = (run / "index.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert links and all(not re.match(r"[a-z]+:|/", link) for link in links), links  # relative only
    assert all((run / link).is_file() for link in links), [link for link in links if not (run / link).is_file()]
    assert "a &lt;page&gt; &amp; its songs" in page  # the --run-info text, escaped
    for name in song_names(run):
        for kind, suffix in (("img", ".png"), ("wav", ".wav"), ("midi", ".mid")):
            assert f"generated/{kind}/{name}{suffix}" in links
    headings = re.findall(r"<h2>([^<]+)</h2>", page)
    assert headings == ["Losses", "Evaluation", "Final songs", "Epoch 2", "Epoch 1"]  # newest epoch first
    assert page.count("<audio") == 7 and "losses.png" in links and "evaluation.png" in links
    # The loss picture on top; the table of every epoch folded away, not between a listener and the songs.
    losses = page[page.index("<h2>Losses</h2>") : page.index("<h2>Evaluation</h2>")]
    assert (
        losses.index('src="losses.png"')
        < losses.index("<details>")
        < losses.index("<td>2</td>")
        < losses.index("</details>")
    )


@pytest.mark.slow
def test_the_run_page_shows_every_picture_and_plays_every_song_in_chromium(run, tmp_path, chromium, screenshots):
    """The page as a user sees it, opened from disk in a copy of the run folder."""
    copy = shutil.copytree(run, tmp_path / "copied run")  # a space: links must be quoted
    with chromium.sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium.path,
            args=[
                "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto((copy / "index.html").as_uri())
        page.wait_for_load_state("load")
        found = page.evaluate(
            """async () => {
                for (const image of document.images) {  // song pictures load lazily, when seen
                    image.scrollIntoView();
                    if (!image.complete) await new Promise(done => {
                        image.addEventListener("load", done);
                        image.addEventListener("error", done);
                    });
                }
                window.scrollTo(0, 0);
                const audios = [...document.querySelectorAll("audio")];
                await Promise.all(audios.map(audio => audio.readyState >= 1 ? null : new Promise(done => {
                    audio.addEventListener("loadedmetadata", done);
                    audio.addEventListener("error", done);
                })));
                return {
                    lazy: document.querySelectorAll('img[loading="lazy"]').length,
                    images: [...document.images].map(
                        image => [image.getAttribute("src"), image.complete && image.naturalWidth > 0]),
                    audio: audios.map(audio => [audio.getAttribute("src"), audio.duration]),
                };
            }"""
        )
        page.screenshot(path=str(screenshots / "run_page.png"), full_page=True)
        browser.close()
    assert len(found["images"]) == 2 + 7 and all(loaded for _, loaded in found["images"]), found["images"]
    assert found["lazy"] == 7  # a 100-epoch run page need not load its 300 pictures at once
    assert len(found["audio"]) == 7
    for source, duration in found["audio"]:
        assert SONG_SECONDS + AUDIO_TAIL_S - 0.01 <= duration < SONG_SECONDS + 3, (source, duration)
    assert (screenshots / "run_page.png").stat().st_size > 10_000


@pytest.mark.slow
def test_tensorboard_has_the_songs_audio_the_learning_rate_and_samples_per_second(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    songs = EventAccumulator(str(run / "logs" / "songs"), size_guidance={"tensors": 0})
    songs.Reload()
    for tag in ("song01", "song02"):
        sounds = songs.Tensors(f"{tag}_audio")
        assert [event.step for event in sounds] == [1, 2]
        assert all(event.tensor_proto.string_val[0][:4] == b"RIFF" for event in sounds)  # WAV files
    train_events = tensorboard_events(run / "logs" / "train")
    assert [value for _, value in train_events["epoch_learning_rate"]] == pytest.approx([0.001, 0.001])
    assert all(value > 0 for _, value in train_events["epoch_samples_per_s"])
    evaluation = tensorboard_events(run / "logs" / "evaluation")
    tags = ("mean_overlap", "diversity", "kl_per_song", "reconstruction_f1", "training_reconstruction_f1")
    for tag in (*tags, "copied_measure_share", "phrase_copy_songs"):
        assert [step for step, _ in evaluation[f"evaluation/{tag}"]] == [2]


@pytest.mark.slow
def test_training_ends_with_an_evaluation_in_the_info_file_json_and_picture(run):
    results = json.loads((run / "evaluation.json").read_text())
    assert sorted(results["songs"]) == ["final_song01", "final_song02", "final_song03"]
    assert set(results["features"]) == set(mm.FEATURES)
    assert 0 <= results["mean_overlap"] <= 1 and 0 <= results["diversity"] <= 1
    latent = results["latent"]
    assert latent["of"] == 4 and 0 <= latent["active_units"] <= 4
    assert (
        latent["kl_per_song"] == pytest.approx(sum(latent["kl_per_dimension"]), abs=1e-3) and latent["kl_per_song"] > 0
    )
    scores = results["reconstruction"]
    assert scores["samples"] == 1 and scores["true_notes"] == np.count_nonzero(np.load(run_data(run).test[0]))
    assert scores["predicted_notes"] == round(json.loads((run / "state.json").read_text())["data"]["mean_notes"])
    assert 0 <= scores["f1"] <= scores["within_1_step"]["f1"] <= 1
    assert results["training_reconstruction"]["samples"] == 1  # as many as the held-out ones
    info = next(run.glob("*_info.txt")).read_text()
    assert "Evaluation (the latest" in info and "mean overlap with the data" in info and "KL per song" in info
    assert "copied measures (J >= 0.8, any place, +-6 semitones)" in info and "1 for test" in info
    originality = results["originality"]
    assert sorted(originality["songs"]) == sorted(results["songs"])
    assert originality["training_samples"] == json.loads((run / "state.json").read_text())["data"]["training"]
    assert originality["generated"]["songs"] == 3 and originality["held_out"]["songs"] == 1
    assert (run / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def run_data(run):
    """The run's data, split as in training."""
    parameters = json.loads((run / "state.json").read_text())["parameters"]
    return read_data(
        json.loads((run / "state.json").read_text())["data"]["folder"], parameters["validation_split"],
        parameters["seed"], test_split=parameters["test_split"],
    )


def own_copy(run, tmp_path):
    """A copy of the shared run, for a test that changes it: the others see it as trained."""
    return shutil.copytree(run, tmp_path / "run")


# The commands that succeed run in this process (a fresh one would import TensorFlow anew: 4.5
# s); the mistakes below, which must say one line and nothing else, each in a fresh one.
@pytest.mark.slow
def test_evaluate_judges_the_songs_a_glob_picks(run, tmp_path, capsys):
    run = own_copy(run, tmp_path)
    validation = make_samples(tmp_path / "held_out", 3, seed=7)
    options = ["--songs", "epoch001_*", "--validation", str(validation), "--samples", "5"]
    assert mg.main(["evaluate", "--run", str(run), *options]) == 0
    out = capsys.readouterr().out
    assert "repeated measure pairs" in out and "epoch001_song02" in out
    results = json.loads((run / "evaluation.json").read_text())
    assert sorted(results["songs"]) == ["epoch001_song01", "epoch001_song02"]
    assert results["compared"]["data_samples"] == 5 and results["reconstruction"]["samples"] == 3
    assert "Evaluation" in (run / "index.html").read_text()


@pytest.mark.slow
def test_a_song_that_replays_a_training_phrase_in_another_key_and_place_is_judged_a_copy_of_it(run, tmp_path, capsys):
    run = own_copy(run, tmp_path)
    replayed = np.load(run_data(run).training[1]).reshape(16, PITCHES, STEPS_PER_MEASURE)
    song = np.zeros_like(replayed)
    song[5:] = np.roll(replayed, 3, axis=1)[:11]  # 3 semitones up, from measure 6 on
    song_to_midi(song.reshape(16, -1)).write(str(run / "generated" / "midi" / "replay_song01.mid"))
    assert mg.main(["evaluate", "--run", str(run), "--songs", "*_song01.mid"]) == 0
    originality = json.loads((run / "evaluation.json").read_text())["originality"]
    assert originality["songs"]["replay_song01"] == {"measures": 11, "copied": 11, "phrase_copy": True}
    assert originality["generated"]["phrase_copies"] >= 1
    assert "11 of 11, a phrase copy" in capsys.readouterr().out
    assert "songs with a phrase copy" in (run / "index.html").read_text()


@pytest.mark.slow
def test_generate_without_audio_adds_its_songs_to_the_page_with_no_player(run, tmp_path):
    run = own_copy(run, tmp_path)
    assert mg.main(["generate", "--run", str(run), "--songs", "2", "--seed", "3", "--no-audio"]) == 0
    assert not list((run / "generated" / "wav").glob("sample_*"))
    page = (run / "index.html").read_text()
    assert "<h2>Songs from generate: 2 songs, seed 3</h2>" in page and "generated/img/sample_song02.png" in page
    assert page.count("<audio") == 7  # the training songs' players only


EVALUATE_MISTAKES = [  # (evaluate's options, what its error says)
    (["--songs", "nothing_*.mid"], "no songs match 'nothing_\\*.mid'"),
    (["--data", "{tmp}/missing"], "data folder .* does not exist"),
    (["--samples", "0"], "argument --samples: must be"), (["--songs", ""], "is not a pattern of MIDI files"),
    (["--songs", "."], "is not a pattern of MIDI files"), (["--validation", "{tmp}"], "no .npy samples in"),
]


@pytest.fixture(scope="module")
def evaluate_mistakes(request, run, tmp_path_factory):
    """{mistake: (a copy of the shared run, a future of its evaluate process)} for the mistake
    tests of this module that are to run (their ``mistake``, an index into EVALUATE_MISTAKES),
    two processes at a time: each spends most of its 4.5 s importing TensorFlow on one core of
    the two. Each on a copy, so that each test sees what its own process left."""
    mistakes = parameters_to_run(request, "mistake")
    pool = ThreadPoolExecutor(max_workers=2)
    started = {}
    for mistake in mistakes:  # the folders made here, in pytest's thread, not in the pool's
        copy = own_copy(run, tmp_path_factory.mktemp("mistake"))
        args = [arg.format(tmp=tmp_path_factory.mktemp("empty")) for arg in EVALUATE_MISTAKES[mistake][0]]
        started[mistake] = copy, pool.submit(run_cli, "evaluate", "--run", copy, *args)
    yield started
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("mistake", range(len(EVALUATE_MISTAKES)), ids=[" ".join(a) for a, _ in EVALUATE_MISTAKES])
@pytest.mark.slow
def test_evaluate_mistakes_get_one_line_and_exit_code_2(run, evaluate_mistakes, mistake):
    """Each in a fresh process, which must say one line: what TensorFlow says as it starts would show."""
    message = EVALUATE_MISTAKES[mistake][1]
    copy, process = evaluate_mistakes[mistake]
    result = process.result()
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and re.search(message, result.stderr), result.stderr
    assert (copy / "evaluation.json").read_bytes() == (run / "evaluation.json").read_bytes()  # left as it was


def test_a_bad_soundfont_stops_training_before_a_run_folder_is_made(tmp_path):
    (tmp_path / "fake.sf2").write_text("not a soundfont")
    code, run = train(tmp_path, "--soundfont", str(tmp_path / "fake.sf2"))
    assert code == 2 and run is None
