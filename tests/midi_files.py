"""MIDI files for the tests: musical ones built with pretty_midi or mido, and broken ones.

Times are in quarter-note beats at 480 ticks per beat and 120 bpm, so beat ``b`` is tick
``480 * b`` and a step of a 4/4 measure is 20 ticks.
"""

import struct
from pathlib import Path

import mido
import pretty_midi

RESOLUTION = 480
SECONDS_PER_BEAT = 0.5  # 120 bpm


def write_midi(path, notes, meters=(), drums=(), tracks=1, resolution=RESOLUTION):
    """Write a piano piece with pretty_midi.

    Parameters
    ----------
    notes : list of (beat, pitch) or (beat, pitch, length_in_beats)
        Spread round-robin over ``tracks`` piano tracks.
    meters : list of (beat, numerator, denominator)
        Time signature changes; none means pretty_midi's 4/4.
    drums : list of (beat, pitch)
        Notes of a drum track (channel 10).
    """
    midi = pretty_midi.PrettyMIDI(resolution=resolution, initial_tempo=60 / SECONDS_PER_BEAT)
    for beat, numerator, denominator in meters:
        midi.time_signature_changes.append(pretty_midi.TimeSignature(numerator, denominator, beat * SECONDS_PER_BEAT))
    pianos = [pretty_midi.Instrument(program=0) for _ in range(tracks)]
    for i, note in enumerate(notes):
        beat, pitch, length = note if len(note) == 3 else (*note, 0.25)
        pianos[i % tracks].notes.append(_note(beat, pitch, length))
    midi.instruments.extend(pianos)
    if drums:
        kit = pretty_midi.Instrument(program=0, is_drum=True)
        kit.notes.extend(_note(beat, pitch, 0.25) for beat, pitch in drums)
        midi.instruments.append(kit)
    midi.write(str(path))
    return Path(path)


def _note(beat, pitch, length):
    return pretty_midi.Note(
        velocity=90, pitch=pitch, start=beat * SECONDS_PER_BEAT, end=(beat + length) * SECONDS_PER_BEAT
    )


def write_midi_ticks(path, notes, tempos=(), resolution=RESOLUTION):
    """Write a one-track 4/4 file with mido, in exact ticks.

    ``notes``: (tick, pitch) onsets, each 10 ticks long; ``tempos``: (tick, bpm).
    """
    events = [(0, mido.MetaMessage("time_signature", numerator=4, denominator=4))]
    events += [(tick, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))) for tick, bpm in tempos]
    for tick, pitch in notes:
        events.append((tick, mido.Message("note_on", note=pitch, velocity=90)))
        events.append((tick + 10, mido.Message("note_off", note=pitch)))
    track = mido.MidiTrack()
    now = 0
    for tick, message in sorted(events, key=lambda event: event[0]):
        track.append(message.copy(time=tick - now))
        now = tick
    midi = mido.MidiFile(ticks_per_beat=resolution)
    midi.tracks.append(track)
    midi.save(str(path))
    return Path(path)


def song_notes(measures, pitch=60):
    """One quarter note per beat of ``measures`` 4/4 measures, climbing a C major scale."""
    scale = [0, 2, 4, 5, 7, 9, 11, 12]
    return [(beat, pitch + scale[beat % len(scale)]) for beat in range(4 * measures)]


def header(tracks=1, resolution=RESOLUTION, length=6, kind=1):
    return b"MThd" + struct.pack(">LHHH", length, kind, tracks, resolution)


def track_chunk(body, length=None):
    return b"MTrk" + struct.pack(">L", len(body) if length is None else length) + body


def many_events_file(path, events):
    """A valid file of ``events`` zero-delta note-ons in running status: 3 bytes each."""
    body = b"\x00\x90\x3c\x40" + b"\x00\x3c\x40" * (events - 1) + b"\x00\xff\x2f\x00"
    Path(path).write_bytes(header() + track_chunk(body))
    return Path(path)
