"""The sample format, and the ways between MIDI files and arrays of it.

A sample is 16 consecutive measures of one MIDI file (section 3.2.2 of the paper). Each
measure is a 96 (pitch) x 96 (step) piano roll of note onsets, flattened, so a sample is a
(16, 9216) uint8 array of 0/1. Cell ``pitch * 96 + step`` of row ``m`` is 1 where a note
of a non-drum instrument starts at that pitch in that step of measure ``m``; durations and
velocities are dropped. A song, made by the model, has the same shape, with 0/1 onsets or
probabilities.

Measures follow the file's own bar lines, computed in ticks from its time signatures (4/4
where it has none), so tempo changes never move the grid. Every measure spans 96 steps
whatever its meter, and onsets are rounded to the nearest step. A pickup bar (a time
signature of less than a bar, such as 1/4, before the piece's meter) is left out, so that
measure 0 is the first full bar and the 16-measure windows follow the phrases.
"""

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import mido
import numpy as np

from music_vae.files import UsageError, atomic_write, text_writer

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
SETTINGS_FILE = "settings.json"  # beside the samples: the DataSettings they were made with

DRUM_CHANNEL = 9  # General MIDI channel 10, counted from 0
MAX_MEASURES = 10_000  # more than 5 hours of 4/4 at 120 bpm: a corrupt delta time, not a song

# How song_to_midi plays an onset.
NOTE_STEPS = 12  # an eighth note in 4/4
VELOCITY_RANGE = (40, 100)  # for the weakest and the strongest onset above the threshold
DEFAULT_BPM = 120


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """What decides the content of a sample: data_loader's options. A folder of samples
    records them in its settings.json, a run in its state; everything that reads or
    writes songs of that data takes them from there, as this object.

    Attributes
    ----------
    lowest_pitch : int
        MIDI note of pitch row 0; the window spans 96 pitches from it.
    measures : int
        Measures per sample.
    out_of_range : {"fold", "drop"}
        What happens to notes outside the pitch window: moved by octaves into it, or left out.
    """

    lowest_pitch: int = LOWEST_PITCH
    measures: int = MEASURES_PER_SAMPLE
    out_of_range: str = "fold"

    def __post_init__(self):
        if not (isinstance(self.lowest_pitch, int) and 0 <= self.lowest_pitch <= 128 - PITCHES):
            raise ValueError(
                f"lowest_pitch must be a whole number from 0 to {128 - PITCHES}, not {self.lowest_pitch!r}"
            )
        if not (isinstance(self.measures, int) and self.measures >= 1):
            raise ValueError(f"measures must be a whole number of 1 or more, not {self.measures!r}")
        if self.out_of_range not in ("fold", "drop"):
            raise ValueError(f"out_of_range must be 'fold' or 'drop', not {self.out_of_range!r}")

    @property
    def shape(self):
        """The shape of a sample: (measures, 9216)."""
        return (self.measures, MEASURE_SIZE)

    @classmethod
    def from_dict(cls, values):
        """The settings that ``values``, a dict, holds (other keys aside).

        Raises
        ------
        ValueError
            A setting is missing or out of its range.
        """
        names = [field.name for field in dataclasses.fields(cls)]
        if not isinstance(values, dict) or any(name not in values for name in names):
            raise ValueError(f"it must hold {', '.join(names)}")
        return cls(**{name: values[name] for name in names})

    @classmethod
    def read(cls, folder):
        """The settings recorded in ``folder``'s settings.json, or None where it has none.

        Raises
        ------
        UsageError
            The file cannot be read, or does not hold settings.
        """
        file = Path(folder) / SETTINGS_FILE
        try:
            return cls.from_dict(json.loads(file.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except OSError as error:
            raise UsageError(f"cannot read {file}: {error.strerror or error}") from None
        except (ValueError, TypeError, AttributeError) as error:
            raise UsageError(f"{file} does not hold the settings of data_loader.py ({error})") from None

    def write(self, folder):
        """Record the settings in ``folder``'s settings.json."""
        atomic_write(Path(folder) / SETTINGS_FILE, text_writer(json.dumps(dataclasses.asdict(self), indent=2)))


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
        The file is empty, not MIDI, corrupt or truncated, or counts time in SMPTE frames.
    """
    if isinstance(source, mido.MidiFile):
        midi = source
    else:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        if not data:
            raise SkipFile("empty file: 0 bytes")
        # RIFF-wrapped (.rmi) and MacBinary files carry the MIDI data after a header of their own.
        start = data.find(b"MThd", 0, 1024)
        if start < 0:
            raise SkipFile("not a MIDI file: no MThd header")
        try:
            # Parsing from memory is a third faster than from the file object.
            midi = mido.MidiFile(file=io.BytesIO(data[start:]))
        except EOFError:
            raise SkipFile("truncated: the file ends inside a track") from None
        except MemoryError:
            raise
        except Exception as error:  # mido raises OSError, ValueError, KeyError... on bad bytes
            raise SkipFile(f"corrupt: {error or type(error).__name__}") from None
    if midi.ticks_per_beat <= 0:
        raise SkipFile("unsupported: SMPTE time division instead of ticks per beat")
    return midi


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


def onset_measures(positions, pitches, measures, settings):
    """The onsets at ``positions`` (steps from the start, as ``onset_positions`` gives them)
    as ``measures`` measures: (measures, 96, 96) uint8, onsets beyond them left out.
    Returns it and the number of onsets that were outside the pitch window."""
    rows, kept, n_outside = fit_pitches(pitches, settings.lowest_pitch, settings.out_of_range)
    roll = np.zeros((measures, PITCHES, STEPS_PER_MEASURE), np.uint8)
    measure, step = np.divmod(positions, STEPS_PER_MEASURE)
    kept &= measure < measures
    roll[measure[kept], rows[kept], step[kept]] = 1
    return roll, n_outside


def midi_to_samples(source, settings=DataSettings()):
    """Convert one MIDI file into the paper's samples.

    Samples are consecutive, non-overlapping windows of ``settings.measures`` measures from
    measure 0; leftover measures at the end and windows without notes are dropped.

    Parameters
    ----------
    source : str, os.PathLike, bytes or mido.MidiFile
        The MIDI file.
    settings : DataSettings
        The pitch window, the measures per sample, and what to do with notes outside.

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
    if n_measures < settings.measures:
        raise SkipFile(f"too short: {n_measures} measures, a sample needs {settings.measures}")

    n_windows = n_measures // settings.measures
    roll, n_outside = onset_measures(positions, pitches, n_windows * settings.measures, settings)
    windows = roll.reshape(n_windows, settings.measures, MEASURE_SIZE)
    has_notes = windows.any(axis=(1, 2))
    if not has_notes.any():
        raise SkipFile(f"no notes: all {n_windows} complete {settings.measures}-measure windows are silent")
    return Conversion(
        samples=windows[has_notes], first_measures=[int(w) * settings.measures for w in np.flatnonzero(has_notes)],
        n_measures=n_measures, n_notes=len(ticks), notes_out_of_range=n_outside, notes_in_pickup=notes_in_pickup,
    )


def midi_to_song(source, settings=DataSettings(), first_measure=0):
    """``settings.measures`` measures of a MIDI file from ``first_measure`` (counted from 0)
    as one song, silent ones included.

    The way back from ``song_to_midi`` (the round trip gives the song's onsets), and a
    way to judge any MIDI file, generated elsewhere too, as the samples are judged. Unlike
    ``midi_to_samples`` it keeps a silent or short file, as the silence it is, and reads
    bars from tick 0 (a pickup bar is measure 0).

    Parameters
    ----------
    source : str, os.PathLike, bytes or mido.MidiFile
        The MIDI file.
    settings : DataSettings

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
    ticks, pitches, time_signatures, _ = read_onsets(midi)
    positions = onset_positions(ticks, meter_changes(time_signatures, midi.ticks_per_beat))
    positions = positions - first_measure * STEPS_PER_MEASURE
    later = positions >= 0
    song, _ = onset_measures(positions[later], pitches[later], settings.measures, settings)
    return song.reshape(settings.measures, MEASURE_SIZE)


# --------------------------------------------------------------------------------------
# Songs -> MIDI
# --------------------------------------------------------------------------------------


def piano_roll(song):
    """A song as one (pitch, time) roll: (96, measures * 96) float32, time in steps, so
    that a note can ring from one measure into the next."""
    measures = np.asarray(song, np.float32).reshape(-1, PITCHES, STEPS_PER_MEASURE)
    return measures.transpose(1, 0, 2).reshape(PITCHES, -1)


def seconds_per_step(bpm):
    """Seconds of one step at ``bpm`` quarter notes a minute: a 4/4 measure is 96 steps."""
    return 60.0 / bpm * 4 / STEPS_PER_MEASURE


def song_seconds(measures, bpm):
    """How long ``measures`` 4/4 measures last at ``bpm``."""
    return measures * STEPS_PER_MEASURE * seconds_per_step(bpm)


def song_to_midi(song, path=None, bpm=DEFAULT_BPM, threshold=0.5, lowest_pitch=LOWEST_PITCH, program=0):
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
    roll = piano_roll(song)
    step_seconds = seconds_per_step(bpm)

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
                    velocity=int(round(velocity)), pitch=lowest_pitch + row, start=start * step_seconds,
                    end=(start + length) * step_seconds,
                )
            )
    midi.instruments.append(instrument)
    if path is not None:
        atomic_write(path, midi.write)
    return midi
