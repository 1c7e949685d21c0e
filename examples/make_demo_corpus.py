"""Write the demo corpus: short songs with melody, chords and bass, made by this script.

    python examples/make_demo_corpus.py [OUTPUT_DIR] [--songs 32] [--seed 2020]

Every song has an intro, verses and choruses that repeat (the same melody each time),
a bridge and an outro: 48 measures, so three 16-measure samples. Songs differ in key
(C, G and F major and their relative minors, which share most of their notes, so that
a model's first, averaged songs still sound in key), meter (4/4, 3/4, 6/8), tempo and
progression; some open with a pickup, some have a drum track. The same seed writes the
same files.
"""

import argparse
from pathlib import Path

import numpy as np
import pretty_midi

TONICS = {"major": [0, 7, 5], "minor": [-3, 4, 2]}  # C, G, F major; A, E, D minor
MAJOR = [0, 2, 4, 5, 7, 9, 11]
MINOR = [0, 2, 3, 5, 7, 8, 10]
PROGRESSIONS = {  # scale degrees from 0, one chord per measure
    "major": [[0, 5, 3, 4], [0, 4, 5, 3], [0, 3, 4, 4], [3, 4, 2, 5], [0, 3, 0, 4]],
    "minor": [[0, 5, 2, 6], [0, 3, 4, 0], [0, 6, 5, 4], [5, 6, 0, 0], [0, 3, 6, 2]],
}
METERS = {  # beats per measure (quarter notes), where chords and bass strike, melody rhythms
    (4, 4): dict(beats=4, chords=[0, 1, 2, 3], bass=[0, 2],
                 rhythms=[[0, 1, 2, 2.5, 3], [0, 0.5, 1, 2, 3], [0, 1.5, 2, 3, 3.5]]),
    (3, 4): dict(beats=3, chords=[1, 2], bass=[0], rhythms=[[0, 1, 2], [0, 1, 1.5, 2], [0, 2]]),
    (6, 8): dict(beats=3, chords=[0, 1.5], bass=[0, 1.5],
                 rhythms=[[0, 1, 1.5, 2.5], [0, 0.5, 1, 1.5], [0, 1.5, 2, 2.5]]),
}
SECTIONS = ["intro", "verse", "chorus", "verse", "chorus", "bridge", "chorus", "outro"]
SECTION_MEASURES = {"intro": 4, "verse": 8, "chorus": 8, "bridge": 4, "outro": 4}


def chord(scale, tonic, degree, octave):
    """MIDI notes of the triad on ``degree`` of ``scale``, from ``octave``."""
    return [tonic + 12 * octave + scale[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in (0, 2, 4)]


def phrase(rng, scale, tonic, progression, rhythms):
    """A four-measure melody: (measure, beat, pitch) on chord tones at strong beats and
    scale steps between, moving mostly by step."""
    notes, position = [], 4  # index into the scale, near the tonic's fifth
    for measure, degree in enumerate(progression):
        rhythm = rhythms[rng.integers(len(rhythms))]
        for beat in rhythm:
            if beat == 0:  # land on a chord tone
                position = min((degree + k for k in (0, 2, 4, 7)), key=lambda p: abs(p - position))
            else:
                position += int(rng.choice([-2, -1, -1, 1, 1, 2]))
                position = int(np.clip(position, 0, 11))
            notes.append((measure, beat, tonic + 60 + scale[position % 7] + 12 * (position // 7)))
    return notes


def song(rng, number):
    """One song as a pretty_midi.PrettyMIDI."""
    mode = "major" if number % 3 else "minor"
    scale = MAJOR if mode == "major" else MINOR
    tonic = int(rng.choice(TONICS[mode]))
    meter = [(4, 4), (4, 4), (3, 4), (6, 8)][number % 4]
    style = METERS[meter]
    bpm = float(rng.integers(84, 144))
    seconds_per_beat = 60 / bpm
    progressions = rng.choice(len(PROGRESSIONS[mode]), size=2, replace=False)
    verse_chords, chorus_chords = (PROGRESSIONS[mode][i] for i in progressions)
    melodies = {  # the same melody every time a section comes back
        "verse": phrase(rng, scale, tonic, verse_chords, style["rhythms"]),
        "chorus": phrase(rng, scale, tonic + 12 if number % 5 == 0 else tonic, chorus_chords, style["rhythms"]),
    }

    midi = pretty_midi.PrettyMIDI(initial_tempo=bpm)
    pickup = number % 8 == 1  # an anacrusis: one beat before the first full measure
    start = seconds_per_beat if pickup else 0.0
    if pickup:
        midi.time_signature_changes.append(pretty_midi.TimeSignature(1, 4, 0))
    midi.time_signature_changes.append(pretty_midi.TimeSignature(*meter, start))
    melody = pretty_midi.Instrument(program=[0, 73, 80, 11][number % 4], name="melody")
    harmony = pretty_midi.Instrument(program=[0, 4, 48, 0][number % 4], name="chords")
    bass = pretty_midi.Instrument(program=[32, 33, 34, 32][number % 4], name="bass")
    drums = pretty_midi.Instrument(program=0, is_drum=True, name="drums")

    def add(instrument, measure, beat, pitch, length, velocity):
        time = start + (measure * style["beats"] + beat) * seconds_per_beat
        instrument.notes.append(pretty_midi.Note(velocity, int(pitch), time, time + length * seconds_per_beat))

    if pickup:
        melody.notes.append(pretty_midi.Note(80, tonic + 67, 0.0, seconds_per_beat * 0.9))
    measure = 0
    for section in SECTIONS:
        chords = chorus_chords if section in ("chorus", "bridge") else verse_chords
        loud = section == "chorus"
        for bar in range(SECTION_MEASURES[section]):
            degree = 0 if section == "outro" and bar >= 2 else chords[bar % 4]
            triad = chord(scale, tonic, degree, octave=4)
            for beat in style["chords"] if section != "outro" or bar < 3 else [0]:
                for pitch in triad:
                    add(harmony, measure, beat, pitch, 0.9, 70 if loud else 55)
            for beat in style["bass"]:
                root = triad[0] - 24 if beat == 0 else triad[2] - 24
                add(bass, measure, beat, root, 0.9, 90)
            if section in melodies:
                for phrase_measure, beat, pitch in melodies[section]:
                    if phrase_measure == bar % 4:
                        add(melody, measure, beat, pitch, 0.45, 100 if loud else 85)
            if number % 4 == 0:  # a drum track, which the converter leaves out
                for beat in range(style["beats"]):
                    add(drums, measure, beat, 36 if beat == 0 else 42, 0.1, 80)
            measure += 1
    midi.instruments.extend([melody, harmony, bass] + ([drums] if drums.notes else []))
    return midi, f"demo{number:02d}_{mode}_{meter[0]}-{meter[1]}.mid"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", nargs="?", type=Path, default=Path(__file__).parent / "midi")
    parser.add_argument("--songs", type=int, default=32)
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for number in range(args.songs):
        midi, name = song(rng, number)
        midi.write(str(args.output_dir / name))
    print(f"{args.songs} songs in {args.output_dir}")


if __name__ == "__main__":
    main()
