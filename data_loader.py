"""Turn a folder of MIDI files into the paper's training samples, and samples back into MIDI.

A sample is 16 consecutive measures of one MIDI file (section 3.2.2 of the paper). Each
measure is a 96 (pitch) x 96 (step) piano roll of note onsets, flattened, so a sample is a
(16, 9216) uint8 array of 0/1 saved as one ``.npy`` file. Cell ``pitch * 96 + step`` of row
``m`` is 1 where a note of a non-drum instrument starts at that pitch in that step of
measure ``m``; durations and velocities are dropped.

Measures follow the file's own bar lines, computed in ticks from its time signatures (4/4
where it has none), so tempo changes never move the grid. Every measure spans 96 steps
whatever its meter, and onsets are rounded to the nearest step. A pickup bar (a time
signature of less than a bar, such as 1/4, before the piece's meter) is left out, so that
measure 0 is the first full bar and the 16-measure windows follow the phrases.

    python data_loader.py INPUT_DIR OUTPUT_DIR [--workers N] ...

writes one ``.npy`` per sample into OUTPUT_DIR, plus ``index.csv`` (every sample) and
``skipped.csv`` (every file that gave none, with the reason). Running it again on the same
OUTPUT_DIR resumes where it stopped. ``song_to_midi`` is the way back, from an array
(0/1, or probabilities and a threshold) to a playable MIDI file.
"""

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import sys
import tempfile
import time
import wave
from collections import Counter
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import as_completed
from pathlib import Path, PurePath

import mido
import numpy as np
from pebble import ProcessExpired, ProcessPool
from tqdm import tqdm

# pretty_midi imports pyfluidsynth, which prints where it found its library whenever $CI is
# set; our stdout carries results that scripts read, so that line is swallowed.
with contextlib.redirect_stdout(io.StringIO()):
    import pretty_midi

# The sample format (paper, section 3.2.2). Other tools rely on these numbers.
PITCHES = 96  # rows of a measure: MIDI notes LOWEST_PITCH .. LOWEST_PITCH + 95
STEPS_PER_MEASURE = 96  # columns of a measure; divisible by 2, 3, 4, 6, 8, 12, 16, 24, 32
MEASURE_SIZE = PITCHES * STEPS_PER_MEASURE  # 9216: one flattened measure
MEASURES_PER_SAMPLE = 16
LOWEST_PITCH = 16  # MIDI 16-111: the 96 pitches around the piano's centre

DRUM_CHANNEL = 9  # General MIDI channel 10, counted from 0
MIDI_SUFFIXES = (".mid", ".midi")

# Bounds that keep one absurd file from stalling or sinking a 30,000-file run.
MAX_FILE_MB = 16  # real MIDI files are kilobytes; black-MIDI curiosities are not music
MAX_MEASURES = 10_000  # more than 5 hours of 4/4 at 120 bpm: a corrupt delta time, not a song
FILE_TIMEOUT_S = 60
WORKER_MEMORY_MB = 2048

# How song_to_midi plays an onset.
NOTE_STEPS = 12  # an eighth note in 4/4
VELOCITY_RANGE = (40, 100)  # for the weakest and the strongest onset above the threshold
DEFAULT_BPM = 120

INDEX_COLUMNS = ("sample", "source", "first_measure", "n_notes")
SKIPPED_COLUMNS = ("source", "reason")


# --------------------------------------------------------------------------------------
# MIDI -> samples
# --------------------------------------------------------------------------------------


class SkipFile(Exception):
    """A file that gives no sample. The message is ``"category: detail"``."""


@dataclasses.dataclass
class Conversion:
    """What one MIDI file gave.

    Attributes
    ----------
    samples : np.ndarray
        (n_samples, measures, 9216) uint8 of 0/1, one row per measure.
    first_measures : list of int
        0-based measure of the file where each sample starts.
    n_measures : int
        Measures in the file, up to the one holding the last onset.
    n_notes : int
        Onsets of non-drum notes read from the file.
    notes_out_of_range : int
        Onsets outside the pitch window, moved by octaves into it or dropped.
    notes_in_pickup : int
        Onsets in a pickup bar, left out: measure 0 is the first full bar.
    """

    samples: np.ndarray
    first_measures: list
    n_measures: int
    n_notes: int
    notes_out_of_range: int
    notes_in_pickup: int


def read_midi(source):
    """Parse a Standard MIDI File.

    Parameters
    ----------
    source : str, os.PathLike, bytes or mido.MidiFile
        A path, the file's bytes, or an already parsed file.

    Returns
    -------
    mido.MidiFile

    Raises
    ------
    SkipFile
        The file is empty, not MIDI, corrupt or truncated.
    """
    if isinstance(source, mido.MidiFile):
        return source
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if not data:
        raise SkipFile("empty file: 0 bytes")
    # RIFF-wrapped (.rmi) and MacBinary files carry the MIDI data after a header of their own.
    start = data.find(b"MThd", 0, 1024)
    if start < 0:
        raise SkipFile("not a MIDI file: no MThd header")
    try:
        # Parsing from memory is a third faster than from the file object.
        return mido.MidiFile(file=io.BytesIO(data[start:]))
    except EOFError:
        raise SkipFile("truncated: the file ends inside a track") from None
    except MemoryError:
        raise
    except Exception as error:  # mido raises OSError, ValueError, KeyError... on bad bytes
        raise SkipFile(f"corrupt: {error or type(error).__name__}") from None


def read_onsets(midi):
    """Collect the note onsets and time signatures of all tracks, in ticks.

    Parameters
    ----------
    midi : mido.MidiFile

    Returns
    -------
    ticks : np.ndarray
        (n,) int64 onset times of non-drum notes.
    pitches : np.ndarray
        (n,) int64 MIDI note numbers of those onsets.
    time_signatures : list of (int, int, int)
        (tick, numerator, denominator) of every time signature event, in file order.
    n_drum_notes : int
        Onsets on the drum channel, left out.
    """
    ticks, pitches, time_signatures = [], [], []
    n_drum_notes = 0
    for track in midi.tracks:
        tick = 0
        for message in track:
            tick += message.time
            if message.type == "note_on" and message.velocity > 0:
                if message.channel == DRUM_CHANNEL:
                    n_drum_notes += 1
                else:
                    ticks.append(tick)
                    pitches.append(message.note)
            elif message.type == "time_signature":
                time_signatures.append((tick, message.numerator, message.denominator))
    return np.array(ticks, np.int64), np.array(pitches, np.int64), time_signatures, n_drum_notes


def meter_changes(time_signatures, ticks_per_beat):
    """The file's meters as a list of ``(start_tick, ticks_per_bar_num, ticks_per_bar_den)``.

    A bar of n/d lasts ``4 * n * ticks_per_beat / d`` ticks, kept as an exact fraction
    (numerator, denominator) because odd resolutions and meters give fractional bars.
    Every time signature starts a new bar, even one placed mid-bar; the last of several
    at one tick wins; 4/4 holds until the first one.
    """
    by_tick = {0: (4, 4)}
    for tick, numerator, denominator in sorted(time_signatures, key=lambda event: event[0]):
        if numerator >= 1 and 1 <= denominator <= 256:  # mido gives powers of two only
            by_tick[tick] = (numerator, denominator)
    return [
        (tick, 4 * numerator * ticks_per_beat, denominator)
        for tick, (numerator, denominator) in sorted(by_tick.items())
    ]


def is_pickup(meters, time_signatures):
    """True when the file opens with an anacrusis bar, as notation programs export one.

    That is a time signature at tick 0 for a single bar (1/4, 1/8...) that is shorter
    than a bar of the meter that follows it.
    """
    if len(meters) < 2 or not any(tick == 0 for tick, _, _ in time_signatures):
        return False
    (_, bar_num, bar_den), (next_tick, next_num, next_den) = meters[0], meters[1]
    return next_tick * bar_den <= bar_num and next_tick * next_den < next_num


def onset_positions(ticks, meters):
    """Place onsets on the global step grid: ``measure * 96 + step``.

    Parameters
    ----------
    ticks : np.ndarray
        (n,) int64 onset times.
    meters : list of (int, int, int)
        From ``meter_changes``.

    Returns
    -------
    np.ndarray
        (n,) int64 position of each onset, rounded to the nearest step. An onset that
        rounds onto the end of a meter's last bar (full, or cut short by the next time
        signature) moves to the next meter's downbeat.
    """
    starts = np.array([tick for tick, _, _ in meters], np.int64)
    # Where each meter's bars start on the grid, and where its last bar ends.
    firsts, ends = [0], []
    for (tick, bar_num, bar_den), (next_tick, _, _) in zip(meters, meters[1:]):
        ends.append(firsts[-1] + _steps(next_tick - tick, bar_num, bar_den))
        bars = -(-(next_tick - tick) * bar_den // bar_num)
        firsts.append(firsts[-1] + STEPS_PER_MEASURE * bars)
    ends.append(np.iinfo(np.int64).max)
    firsts, ends = np.array(firsts, np.int64), np.array(ends, np.int64)
    next_firsts = np.append(firsts[1:], np.iinfo(np.int64).max)

    segment = np.searchsorted(starts, ticks, side="right") - 1
    bar_num = np.array([num for _, num, _ in meters], np.int64)[segment]
    bar_den = np.array([den for _, _, den in meters], np.int64)[segment]
    positions = firsts[segment] + _steps(ticks - starts[segment], bar_num, bar_den)
    return np.where(positions >= ends[segment], next_firsts[segment], positions)


def _steps(elapsed_ticks, bar_num, bar_den):
    """round(96 * elapsed / bar) for a bar of bar_num / bar_den ticks, in integers so that
    no tie is lost to floating point; halves round up."""
    return (2 * STEPS_PER_MEASURE * elapsed_ticks * bar_den + bar_num) // (2 * bar_num)


def fit_pitches(pitches, lowest_pitch, out_of_range):
    """Bring pitches into the window ``lowest_pitch .. lowest_pitch + 95``.

    Returns
    -------
    rows : np.ndarray
        (n,) int64 pitch row of each onset (0 = ``lowest_pitch``).
    kept : np.ndarray
        (n,) bool: False for onsets left out.
    n_outside : int
        Onsets that were outside the window. ``out_of_range="fold"`` moves them by whole
        octaves into it; ``"drop"`` leaves them out.
    """
    rows = pitches - lowest_pitch
    outside = (rows < 0) | (rows >= PITCHES)
    if out_of_range == "drop":
        return rows, ~outside, int(outside.sum())
    octaves_up = -(-np.maximum(-rows, 0) // 12)
    octaves_down = -(-np.maximum(rows - (PITCHES - 1), 0) // 12)
    return rows + 12 * (octaves_up - octaves_down), np.ones(len(rows), bool), int(outside.sum())


def midi_to_samples(
    source,
    lowest_pitch=LOWEST_PITCH,
    measures=MEASURES_PER_SAMPLE,
    out_of_range="fold",
):
    """Convert one MIDI file into the paper's samples.

    Parameters
    ----------
    source : str, os.PathLike, bytes or mido.MidiFile
        The MIDI file.
    lowest_pitch : int
        MIDI note of pitch row 0; the window spans 96 pitches from it.
    measures : int
        Measures per sample. Samples are consecutive, non-overlapping windows from
        measure 0; leftover measures at the end and windows without notes are dropped.
    out_of_range : {"fold", "drop"}
        What happens to notes outside the pitch window: moved by octaves into it, or
        left out.

    Returns
    -------
    Conversion
        ``samples`` has shape (n_samples, measures, 9216), dtype uint8.

    Raises
    ------
    SkipFile
        The file gives no sample; the message says why.
    """
    midi = read_midi(source)
    if midi.ticks_per_beat <= 0:
        raise SkipFile("unsupported: SMPTE time division instead of ticks per beat")
    ticks, pitches, time_signatures, n_drum_notes = read_onsets(midi)
    if len(ticks) == 0:
        if n_drum_notes:
            raise SkipFile(f"drums only: {n_drum_notes} drum notes and no other note")
        raise SkipFile("no notes: the file has no note")
    # No bar is longer than 1,020 beats (255/1), so this file has too many measures; the
    # check also keeps the integer arithmetic below far from overflowing.
    if ticks.max() // midi.ticks_per_beat > 1024 * MAX_MEASURES:
        raise SkipFile(f"too long: more than {MAX_MEASURES} measures")

    meters = meter_changes(time_signatures, midi.ticks_per_beat)
    positions = onset_positions(ticks, meters)
    if is_pickup(meters, time_signatures):
        # The pickup bar is positions 0..95; the first full bar becomes measure 0.
        in_pickup = positions < STEPS_PER_MEASURE
        positions, pitches = positions[~in_pickup] - STEPS_PER_MEASURE, pitches[~in_pickup]
        notes_in_pickup = int(in_pickup.sum())
    else:
        notes_in_pickup = 0
    if len(positions) == 0:
        raise SkipFile("no notes: only a pickup bar")

    n_measures = int(positions.max()) // STEPS_PER_MEASURE + 1
    if n_measures > MAX_MEASURES:
        raise SkipFile(f"too long: {n_measures} measures, more than {MAX_MEASURES}")
    if n_measures < measures:
        raise SkipFile(f"too short: {n_measures} measures, a sample needs {measures}")

    rows, kept, n_outside = fit_pitches(pitches, lowest_pitch, out_of_range)
    n_windows = n_measures // measures
    roll = np.zeros((n_windows * measures, PITCHES, STEPS_PER_MEASURE), np.uint8)
    measure, step = np.divmod(positions, STEPS_PER_MEASURE)
    kept &= measure < len(roll)
    roll[measure[kept], rows[kept], step[kept]] = 1
    windows = roll.reshape(n_windows, measures, MEASURE_SIZE)
    has_notes = windows.any(axis=(1, 2))
    if not has_notes.any():
        raise SkipFile(f"no notes: all {n_windows} complete {measures}-measure windows are silent")
    return Conversion(
        samples=windows[has_notes],
        first_measures=[int(w) * measures for w in np.flatnonzero(has_notes)],
        n_measures=n_measures,
        n_notes=len(ticks),
        notes_out_of_range=n_outside,
        notes_in_pickup=notes_in_pickup,
    )


def midi_to_song(source, lowest_pitch=LOWEST_PITCH, measures=MEASURES_PER_SAMPLE, out_of_range="fold"):
    """The first ``measures`` measures of a MIDI file as one song, silent ones included.

    The way back from ``song_to_midi`` (the round trip gives the song's onsets), and a
    way to judge any MIDI file, generated elsewhere too, as the samples are judged. Unlike
    ``midi_to_samples`` it keeps a silent or short file, as the silence it is, and reads
    bars from tick 0 (a pickup bar is measure 0).

    Parameters
    ----------
    source : str, os.PathLike, bytes or mido.MidiFile
        The MIDI file.
    lowest_pitch, measures, out_of_range
        As for ``midi_to_samples``.

    Returns
    -------
    np.ndarray
        (measures, 9216) uint8 onsets.

    Raises
    ------
    SkipFile
        The file is not readable MIDI.
    """
    midi = read_midi(source)
    if midi.ticks_per_beat <= 0:
        raise SkipFile("unsupported: SMPTE time division instead of ticks per beat")
    ticks, pitches, time_signatures, _ = read_onsets(midi)
    song = np.zeros((measures, PITCHES, STEPS_PER_MEASURE), np.uint8)
    if len(ticks):
        positions = onset_positions(ticks, meter_changes(time_signatures, midi.ticks_per_beat))
        rows, kept, _ = fit_pitches(pitches, lowest_pitch, out_of_range)
        measure, step = np.divmod(positions, STEPS_PER_MEASURE)
        kept &= measure < measures
        song[measure[kept], rows[kept], step[kept]] = 1
    return song.reshape(measures, MEASURE_SIZE)


# --------------------------------------------------------------------------------------
# samples -> MIDI
# --------------------------------------------------------------------------------------


def song_to_midi(
    song,
    path=None,
    bpm=DEFAULT_BPM,
    threshold=0.5,
    lowest_pitch=LOWEST_PITCH,
    program=0,
):
    """Turn a song array into a MIDI file, one 4/4 measure per row.

    Parameters
    ----------
    song : np.ndarray
        (measures, 9216) or (measures, 96, 96): onsets as 0/1, or as probabilities.
    path : str or os.PathLike, optional
        Where to write the ``.mid`` file (atomically). Nothing is written when None.
    bpm : float
        Tempo in quarter notes per minute.
    threshold : float
        Cells with a value at or above it become notes.
    lowest_pitch : int
        MIDI note of pitch row 0.
    program : int
        General MIDI program of the instrument (0: acoustic grand piano).

    Returns
    -------
    pretty_midi.PrettyMIDI
        Each onset lasts an eighth note, or up to the next onset of its pitch when that
        comes sooner. Velocity grows with the cell's value, from 40 for the weakest note
        above the threshold to 100 for the strongest (0/1 songs play at 100).
    """
    song = np.asarray(song, dtype=np.float32)
    measures = song.reshape(-1, PITCHES, STEPS_PER_MEASURE)
    # (pitch, time) over the whole song, so a note can ring into the next measure.
    roll = measures.transpose(1, 0, 2).reshape(PITCHES, -1)
    step_seconds = 60.0 / bpm * 4 / STEPS_PER_MEASURE

    # 480 ticks per quarter: a step of a 4/4 measure is exactly 20 ticks.
    midi = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=bpm)
    midi.time_signature_changes.append(pretty_midi.TimeSignature(4, 4, 0.0))
    instrument = pretty_midi.Instrument(program=program)
    onsets = roll >= threshold
    strongest = roll[onsets].max(initial=threshold)
    low, high = VELOCITY_RANGE
    for row, time_steps in enumerate(onsets):
        starts = np.flatnonzero(time_steps)
        if len(starts) == 0:
            continue
        lengths = np.minimum(np.diff(starts, append=starts[-1] + NOTE_STEPS), NOTE_STEPS)
        strength = (roll[row, starts] - threshold) / max(strongest - threshold, 1e-9)
        velocities = np.where(strongest > threshold, low + (high - low) * strength, high)
        for start, length, velocity in zip(starts, lengths, velocities):
            instrument.notes.append(
                pretty_midi.Note(
                    velocity=int(round(velocity)),
                    pitch=lowest_pitch + row,
                    start=start * step_seconds,
                    end=(start + length) * step_seconds,
                )
            )
    midi.instruments.append(instrument)
    if path is not None:
        atomic_write(path, midi.write)
    return midi


# --------------------------------------------------------------------------------------
# MIDI -> audio
# --------------------------------------------------------------------------------------

AUDIO_SAMPLE_RATE = 22050  # Hz: the piano's range and more; a 32 s song is 1.4 MB of 16-bit mono
AUDIO_PEAK = 0.9  # loudest sample, of full scale: every song as loud, none clipped
AUDIO_TAIL_S = 1.0  # after the song's end: the last notes' release, and room before the next
# General MIDI SoundFonts where systems install them, best first: Debian and Ubuntu's
# fluid-soundfont-gm, then Fedora's and Arch's. pretty_midi's own small one comes last.
SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    str(Path(pretty_midi.__file__).with_name("TimGM6mb.sf2")),
)


HIDE_FLUIDSYNTH = "MUSIC_VAE_NO_FLUIDSYNTH"  # =1: render as on a machine without FluidSynth


def has_fluidsynth():
    """Whether pyfluidsynth and the FluidSynth library it loads are installed, and not
    hidden by the environment variable HIDE_FLUIDSYNTH (so that tests, and a user
    comparing, can see what a machine without FluidSynth does)."""
    if os.environ.get(HIDE_FLUIDSYNTH) == "1":
        return False
    try:
        import fluidsynth  # noqa: F401
    except (ImportError, OSError):  # pyfluidsynth raises ImportError when the library is missing
        return False
    return True


class Synthesizer:
    """Renders MIDI as audio: with FluidSynth and a SoundFont, which sounds like the
    instrument, or with pretty_midi's sine waves, which need nothing installed.

    Parameters
    ----------
    soundfont : str or os.PathLike, optional
        A ``.sf2`` file, loaded once for every song. None: sine waves.
    sample_rate : int
        Samples per second of the audio.

    Raises
    ------
    UsageError
        ``soundfont`` is given but FluidSynth is missing or cannot read it.
    """

    def __init__(self, soundfont=None, sample_rate=AUDIO_SAMPLE_RATE):
        self.soundfont = soundfont
        self.sample_rate = sample_rate
        self.fluidsynth = None
        if soundfont is None:
            return
        if not has_fluidsynth():
            raise UsageError("a SoundFont needs FluidSynth: install its library (Debian: apt install fluidsynth) and pip install pyfluidsynth")
        import fluidsynth

        synth = fluidsynth.Synth(samplerate=float(sample_rate))
        font = synth.sfload(str(soundfont)) if Path(soundfont).is_file() else -1
        if font < 0:
            synth.delete()
            raise UsageError(f"{soundfont} is not a SoundFont (.sf2) that FluidSynth can read")
        self.fluidsynth = synth, font

    @classmethod
    def best(cls, sample_rate=AUDIO_SAMPLE_RATE):
        """FluidSynth with the first of SOUNDFONTS that is installed, where FluidSynth is;
        else sine waves."""
        if has_fluidsynth():
            for soundfont in SOUNDFONTS:
                if Path(soundfont).is_file():
                    return cls(soundfont, sample_rate)
        return cls(None, sample_rate)

    def __str__(self):
        if self.fluidsynth:
            return f"FluidSynth with {self.soundfont}"
        return "pretty_midi's sine waves (install FluidSynth for a piano: see README)"

    def render(self, midi, seconds=0.0):
        """The sound of ``midi``.

        Parameters
        ----------
        midi : pretty_midi.PrettyMIDI
        seconds : float
            Length of the song. The audio lasts at least AUDIO_TAIL_S more, silence
            padding it, so that a song's silent last measures (or a silent song) last as
            long as they should.

        Returns
        -------
        np.ndarray
            (samples,) float32 mono audio at ``sample_rate``, its loudest sample at
            +-AUDIO_PEAK (0 throughout for a silent song).
        """
        if self.fluidsynth:
            synth, font = self.fluidsynth
            audio = midi.fluidsynth(self.sample_rate, synthesizer=synth, sfid=font, normalize=False)
            synth.system_reset()  # no note of this song rings on into the next
        else:
            audio = midi.synthesize(self.sample_rate, normalize=False)  # normalizing silence gives NaN
        audio = np.asarray(audio, np.float32)
        peak = float(np.abs(audio).max(initial=0.0))
        if peak > 0:
            audio *= AUDIO_PEAK / peak
        missing = round((seconds + AUDIO_TAIL_S) * self.sample_rate) - len(audio)
        return np.pad(audio, (0, max(missing, 0)))


def wav_writer(audio, sample_rate=AUDIO_SAMPLE_RATE):
    """A ``write(path)`` function for ``atomic_write`` that saves ``audio``, float in
    [-1, 1], as a 16-bit mono PCM WAV file: the format every browser and player opens."""
    pcm = np.round(np.clip(audio, -1, 1) * 32767).astype("<i2")

    def write(path):
        with wave.open(str(path), "wb") as file:
            file.setnchannels(1)
            file.setsampwidth(2)
            file.setframerate(sample_rate)
            file.writeframes(pcm.tobytes())

    return write


# --------------------------------------------------------------------------------------
# Files on disk
# --------------------------------------------------------------------------------------


UMASK = os.umask(0o022)  # read once, at import (setting it is the only way to read it)
os.umask(UMASK)


PART = ".part"  # in the name of every file being written; see write_part


def write_part(path, write, suffix=""):
    """Call ``write(part)`` for a new file ``part`` beside ``path``; return ``part``.

    The part file, ``<name>.<random>.part<suffix>``, becomes ``path`` by ``os.replace``,
    in one step, once complete. Whatever stops the writing (a crash, a full disk) leaves
    at most a part file, which ``remove_partial_files`` removes on the next run.
    """
    path = Path(path)
    descriptor, part = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=PART + suffix)
    os.close(descriptor)
    try:
        write(part)
        # mkstemp makes the file private (0600); give it the mode any new file gets.
        os.chmod(part, 0o666 & ~UMASK)
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise
    return part


def atomic_write(path, write, suffix=""):
    """Call ``write(temporary_path)`` and move the result to ``path``: readers see the old
    file or the complete new one, never a half-written one, even after a power cut (both
    the file and its new name reach the disk before this returns). ``suffix`` ends the
    temporary name, for writers that insist on one (Keras wants ``.keras``)."""
    part = write_part(path, write, suffix)
    flush_to_disk(part)
    os.replace(part, path)
    flush_to_disk(Path(path).parent)


def flush_to_disk(path):
    """Wait until the file or folder ``path`` is on the disk, not only in the system's cache
    (for a folder: the names in it; Windows cannot, and does without)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # a folder, on Windows
        return
    try:
        os.fsync(descriptor)
    except OSError:  # not every file system can
        pass
    finally:
        os.close(descriptor)


def remove_partial_files(folder, recursive=False):
    """Remove the part files that writers killed mid-write left in ``folder`` (and its
    subfolders where ``recursive``). Only for a folder that nothing is writing to."""
    for path in Path(folder).rglob("*") if recursive else Path(folder).iterdir():
        if re.search(rf"{re.escape(PART)}(\.\w+)?$", path.name) and path.is_file():
            path.unlink()


def npy_writer(array):
    """A ``write(path)`` function for ``write_part`` and ``atomic_write`` that saves
    ``array`` in ``.npy`` format at exactly ``path`` (``np.save`` would append ``.npy``)."""
    buffer = io.BytesIO()
    np.save(buffer, array)

    def write(path):
        # One write of the finished bytes: a full disk raises OSError with its errno
        # ("No space left on device"); numpy's own file writer does not say why.
        with open(path, "wb") as file:
            file.write(buffer.getbuffer())

    return write


def find_midi_files(input_dir):
    """All ``.mid`` / ``.midi`` files under ``input_dir``, any letter case, sorted."""
    found = []
    for folder, subfolders, files in os.walk(input_dir):
        subfolders.sort()
        found.extend(
            Path(folder, name) for name in sorted(files) if name.lower().endswith(MIDI_SUFFIXES)
        )
    return found


def sample_stem(source):
    """Stable, collision-free file stem for the samples of ``source``.

    ``source`` is the path relative to INPUT_DIR. The readable part is the path with
    odd characters replaced; the hash of the exact path keeps ``a/x.mid`` and ``a_x.mid``
    (or ``x.mid`` in two folders) apart, and is the same on every operating system.
    """
    posix = PurePath(source).as_posix()
    readable = re.sub(r"[^A-Za-z0-9.-]+", "_", posix.rsplit(".", 1)[0]).strip("._")[:60]
    digest = hashlib.sha1(posix.encode("utf-8")).hexdigest()[:12]
    return f"{readable or 'song'}-{digest}"


def sample_name(source, first_measure):
    return f"{sample_stem(source)}_m{first_measure:04d}.npy"


# --------------------------------------------------------------------------------------
# Converting a folder
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    """What decides the content of a sample; a resumed run must use the same."""

    lowest_pitch: int = LOWEST_PITCH
    measures: int = MEASURES_PER_SAMPLE
    out_of_range: str = "fold"


@dataclasses.dataclass
class ConvertedFile:
    """A worker's report on one file whose samples wait in ``.part`` files.

    ``samples`` holds ``(part_path, sample_name, first_measure, n_notes)`` per sample.
    """

    samples: list
    n_notes: int
    notes_out_of_range: int
    notes_in_pickup: int


def convert_file(path, source, output_dir, settings, max_file_mb=MAX_FILE_MB):
    """Worker: convert one file and write its samples as ``.part`` files in ``output_dir``.

    Returns
    -------
    ConvertedFile or str
        The report, or the reason the file gave no sample. A bad file never raises;
        a failed write (a full disk) does, and ends the run.
    """
    try:
        size = os.path.getsize(path)
        if size > max_file_mb * 2**20:
            return f"too large: {size / 2**20:.1f} MB, more than {max_file_mb:g} MB"
        conversion = midi_to_samples(path, settings.lowest_pitch, settings.measures, settings.out_of_range)
    except SkipFile as skip:
        return str(skip)
    except MemoryError:
        return "out of memory: the file needs more than the worker's memory limit"
    except OSError as error:
        return f"unreadable: {error.strerror or error}"
    samples = []
    for sample, first_measure in zip(conversion.samples, conversion.first_measures):
        name = sample_name(source, first_measure)
        part = write_part(Path(output_dir, name), npy_writer(sample))
        samples.append((part, name, first_measure, int(sample.sum())))
    return ConvertedFile(samples, conversion.n_notes, conversion.notes_out_of_range, conversion.notes_in_pickup)


def _limit_worker_memory(memory_mb):
    """Cap a worker's address space where the OS can, so that a file too big fails alone."""
    try:
        import resource

        limit = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # Windows has no resource module
        pass


class OutputFolder:
    """OUTPUT_DIR: the samples, ``index.csv``, ``skipped.csv`` and ``settings.json``.

    Workers write samples as ``.part`` files; rows are appended only after all of a
    file's samples are moved into place, one write per file, so a run killed at any
    moment leaves an index that lists only complete samples, and no truncated ``.npy``.
    """

    def __init__(self, path, settings):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._check_settings(settings)
        remove_partial_files(self.path)  # from a run that was killed mid-write
        self.index = self._open_csv("index.csv", INDEX_COLUMNS)
        self.skipped = self._open_csv("skipped.csv", SKIPPED_COLUMNS)

    def _check_settings(self, settings):
        file = self.path / "settings.json"
        wanted = dataclasses.asdict(settings)
        if file.exists():
            try:
                found = json.loads(file.read_text())
            except ValueError:
                raise UsageError(f"{file} is not readable JSON; use a new output folder") from None
            different = [f"{key}={found.get(key)}" for key in wanted if found.get(key) != wanted[key]]
            if different:
                raise UsageError(
                    f"{self.path} holds samples made with {', '.join(different)}; "
                    "use the same options to resume, or a new output folder"
                )
        else:
            atomic_write(file, lambda temporary: Path(temporary).write_text(json.dumps(wanted, indent=2)))

    def _open_csv(self, name, columns):
        """Open a CSV for appending, writing its header when new and dropping a torn last line."""
        path = self.path / name
        if path.exists():
            text = path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):
                path.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")
        file = open(path, "a", newline="", encoding="utf-8")
        if file.tell() == 0:
            csv.writer(file).writerow(columns)
            file.flush()
        return file

    def done_sources(self):
        """Sources already converted or skipped by an earlier run."""
        done = set()
        for file in (self.index, self.skipped):
            with open(file.name, newline="", encoding="utf-8") as reader:
                done.update(row["source"] for row in csv.DictReader(reader))
        return done

    def add(self, source, converted):
        """Move a file's samples into place, then list them. Returns the number added."""
        for part, name, _, _ in converted.samples:
            os.replace(part, self.path / name)
        self._append(self.index, [(name, source, first, notes) for _, name, first, notes in converted.samples])
        return len(converted.samples)

    def skip(self, source, reason):
        self._append(self.skipped, [(source, reason)])

    @staticmethod
    def _append(file, rows):
        buffer = io.StringIO()
        csv.writer(buffer).writerows(rows)
        file.write(buffer.getvalue())  # one write per file: a kill cannot split its rows
        file.flush()

    def close(self):
        """Close the CSVs and remove ``.part`` files of workers that were stopped."""
        self.index.close()
        self.skipped.close()
        remove_partial_files(self.path)


@dataclasses.dataclass
class Summary:
    files_found: int = 0
    files_done_before: int = 0
    files_read: int = 0
    files_converted: int = 0
    samples_written: int = 0
    notes: int = 0
    notes_out_of_range: int = 0
    notes_in_pickup: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)
    seconds: float = 0.0

    def text(self, output_dir, settings):
        """The one-paragraph report printed at the end of a run."""
        rate = self.files_read / self.seconds if self.seconds else 0.0
        read = f"Read {self.files_read} of {self.files_found} MIDI files in {self.seconds:.1f} s ({rate:.0f} files/s)"
        if self.files_done_before:
            read += f"; the other {self.files_done_before} were done by an earlier run"
        written = f"{self.samples_written} samples written from {self.files_converted} files"
        if self.skipped:
            reasons = ", ".join(f"{count} {reason}" for reason, count in self.skipped.most_common())
            written += f"; {sum(self.skipped.values())} files skipped ({reasons})"
        window = f"MIDI {settings.lowest_pitch}-{settings.lowest_pitch + PITCHES - 1}"
        moved = "moved by octaves into it" if settings.out_of_range == "fold" else "dropped"
        notes = f"{self.notes_out_of_range} of {self.notes} notes were outside {window} and {moved}"
        if self.notes_in_pickup:
            notes += f"; {self.notes_in_pickup} notes of pickup bars were left out"
        listed = f"Samples are listed in {Path(output_dir, 'index.csv')}"
        if self.skipped:
            listed += f", skipped files and why in {Path(output_dir, 'skipped.csv')}"
        return ". ".join([read, written, notes, listed]) + "."


def convert_folder(
    input_dir,
    output_dir,
    settings=Settings(),
    workers=None,
    timeout=FILE_TIMEOUT_S,
    max_file_mb=MAX_FILE_MB,
    memory_mb=WORKER_MEMORY_MB,
    progress=None,
    verbose=False,
):
    """Convert every MIDI file under ``input_dir`` into samples in ``output_dir``.

    Files run in ``workers`` processes (default: one per core). A file larger than
    ``max_file_mb``, taking longer than ``timeout`` seconds, needing more than
    ``memory_mb`` or crashing its worker is skipped; the worker is replaced. Files listed
    in ``output_dir``'s CSVs are not read again. ``progress``: show a progress bar (None:
    when writing to a terminal). Returns a ``Summary``.
    """
    started = time.perf_counter()
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise UsageError(f"input folder {input_dir} does not exist")
    try:
        output = OutputFolder(output_dir, settings)
    except OSError as error:
        raise UsageError(f"cannot write to output folder {output_dir}: {error.strerror or error}") from None

    summary = Summary()
    paths = find_midi_files(input_dir)
    summary.files_found = len(paths)
    done = output.done_sources()
    sources = {path: path.relative_to(input_dir).as_posix() for path in paths}
    todo = [path for path in paths if sources[path] not in done]
    summary.files_done_before = len(paths) - len(todo)

    def record(source, outcome):
        summary.files_read += 1
        if isinstance(outcome, ConvertedFile):
            summary.files_converted += 1
            summary.samples_written += output.add(source, outcome)
            summary.notes += outcome.n_notes
            summary.notes_out_of_range += outcome.notes_out_of_range
            summary.notes_in_pickup += outcome.notes_in_pickup
        else:
            output.skip(source, outcome)
            summary.skipped[outcome.split(":")[0]] += 1
            if verbose:
                tqdm.write(f"skipped {source}: {outcome}")

    bar = tqdm(total=len(todo), unit="file", disable=None if progress is None else not progress)
    pool = ProcessPool(
        max_workers=workers or os.cpu_count() or 1,
        initializer=_limit_worker_memory,
        initargs=(memory_mb,),
    )
    try:
        futures = {
            pool.submit(convert_file, timeout, path, sources[path], output.path, settings, max_file_mb): path
            for path in todo
        }
        for future in as_completed(futures):
            record(sources[futures[future]], _outcome(future, timeout))
            bar.set_postfix_str(f"{summary.samples_written} samples", refresh=False)
            bar.update()
    finally:
        pool.stop()
        pool.join()
        bar.close()
        output.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _outcome(future, timeout):
    """A worker's ConvertedFile or skip reason, also when the worker itself failed."""
    try:
        return future.result()
    except FutureTimeout:  # before OSError: since Python 3.11 it is one
        return f"timeout: no result after {timeout:g} s"
    except ProcessExpired as error:
        return f"worker crashed: exit code {error.exitcode}"
    except OSError:  # writing failed: a full disk or a vanished folder ends the run
        raise
    except MemoryError:
        return "out of memory: the file needs more than the worker's memory limit"
    except Exception as error:  # a bug of ours: the run goes on, the file is reported
        return f"error: {type(error).__name__}: {error}"


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


class UsageError(Exception):
    """A mistake of the user's: reported in one line, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a mistake in the flags reported in one line rather than the usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv=None):
    parser = ArgumentParser(
        description="Turn a folder of MIDI files into the paper's training samples: "
        "one .npy per 16 measures, shape (measures, 9216), uint8 0/1 note onsets "
        "(index pitch * 96 + step). Runs again on the same OUTPUT_DIR resume.",
    )
    parser.add_argument("input_dir", metavar="INPUT_DIR", help="folder searched recursively for .mid/.midi files (any letter case)")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder for the .npy samples, index.csv and skipped.csv")
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1, help="processes converting files in parallel (default: all %(default)s cores)")
    parser.add_argument("--lowest-pitch", type=int_between(0, 128 - PITCHES), default=LOWEST_PITCH, metavar="0..32", help="MIDI note of pitch row 0; the window spans 96 pitches from it (default: %(default)s, so MIDI 16-111)")
    parser.add_argument("--measures", type=positive_int, default=MEASURES_PER_SAMPLE, help="measures per sample (default: %(default)s)")
    parser.add_argument("--out-of-range", choices=("fold", "drop"), default="fold", help="notes outside the pitch window are moved by octaves into it (fold, the default) or dropped; either way they are counted in the summary")
    parser.add_argument("--timeout", type=positive_float, default=FILE_TIMEOUT_S, help="seconds one file may take before it is skipped (default: %(default)s)")
    parser.add_argument("--max-file-size", type=positive_float, default=MAX_FILE_MB, metavar="MB", help="larger files are skipped unread (default: %(default)s MB)")
    parser.add_argument("--worker-memory", type=positive_int, default=WORKER_MEMORY_MB, metavar="MB", help="memory one worker may use before its file is skipped, on Linux and macOS (default: %(default)s MB)")
    parser.add_argument("--verbose", "-v", action="store_true", help="print every skipped file as it happens")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def int_between(low, high=None):
    """An argparse type: an integer from ``low`` to ``high`` (no upper bound when None)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"must be {bounds}, not {value}")
        return value

    return parse


positive_int = int_between(1)


def number(text):
    """An argparse type: any number; the types below add their bounds."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None


def positive_float(text):
    value = number(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def main(argv=None):
    args = parse_args(argv)
    settings = Settings(args.lowest_pitch, args.measures, args.out_of_range)
    try:
        summary = convert_folder(
            args.input_dir,
            args.output_dir,
            settings,
            workers=args.workers,
            timeout=args.timeout,
            max_file_mb=args.max_file_size,
            memory_mb=args.worker_memory,
            progress=False if args.no_progress else None,
            verbose=args.verbose,
        )
    except UsageError as error:
        print(f"data_loader.py: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("data_loader.py: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except OSError as error:  # a full disk or a folder that went away mid-run
        where = f" ({error.filename})" if error.filename else ""
        print(f"data_loader.py: error: {error.strerror or error}{where}; "
              "what was written so far is complete, run again to resume", file=sys.stderr)
        return 1
    print(summary.text(args.output_dir, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
