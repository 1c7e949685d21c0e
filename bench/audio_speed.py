"""How long rendering a song's WAV file takes, against the budget of one second a song.

    python bench/audio_speed.py [MIDI_DIR] [--songs 30]

Converts MIDI_DIR (default ../shared/midi/vgmidi, else the bundled examples/midi) into
samples, then renders ``--songs`` of them as a run renders its songs (song_to_midi, then
the synthesizer, then the WAV file), with FluidSynth (where installed) and with the
sine-wave fallback. Also renders the same songs with every note four times over in
density (three more onsets a step later), as an undertrained model's songs can be.
Prints seconds a song (mean and slowest) and the ratio slowest / 1 s, which should stay
below 1.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from music_vae.audio import Synthesizer, wav_writer  # noqa: E402
from music_vae.convert import convert_folder  # noqa: E402
from music_vae.files import atomic_write  # noqa: E402
from music_vae.samples import PITCHES, STEPS_PER_MEASURE, song_to_midi  # noqa: E402

DEFAULT_DIR = REPO.parent / "shared" / "midi" / "vgmidi"
BUDGET_S = 1.0


def render_seconds(synthesizer, songs, folder):
    """Seconds of each song's MIDI -> audio -> WAV file."""
    seconds = []
    for number, song in enumerate(songs):
        started = time.perf_counter()
        midi = song_to_midi(song)
        audio = synthesizer.render(midi, len(song) * 2.0)  # 4/4 at 120 bpm: 2 s a measure
        atomic_write(Path(folder) / f"{number}.wav", wav_writer(audio, synthesizer.sample_rate))
        seconds.append(time.perf_counter() - started)
    return np.array(seconds)


def denser(song):
    """Four onsets where ``song`` has one: the note and three steps after it."""
    cells = song.reshape(len(song), PITCHES, STEPS_PER_MEASURE) != 0
    dense = cells.copy()
    for shift in (3, 6, 9):
        dense[:, :, shift:] |= cells[:, :, :-shift]
    return dense.reshape(song.shape).astype(np.uint8)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "midi_dir", nargs="?", type=Path, default=DEFAULT_DIR if DEFAULT_DIR.is_dir() else REPO / "examples" / "midi"
    )
    parser.add_argument("--songs", type=int, default=30)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        convert_folder(args.midi_dir, Path(folder) / "samples", progress=False)
        paths = sorted((Path(folder) / "samples").glob("*.npy"))
        songs = [np.load(path) for path in np.random.default_rng(0).permutation(paths)[: args.songs]]
        synthesizers = [Synthesizer(None)]
        best = Synthesizer.best()
        if best.fluidsynth:
            synthesizers.insert(0, best)
        else:
            print("FluidSynth is not installed: only the sine-wave synthesizer is timed")
        notes = np.mean([np.count_nonzero(song) for song in songs])
        print(f"{len(songs)} songs of {args.midi_dir}, {notes:.0f} notes on average")
        worst = 0.0
        for synthesizer in synthesizers:
            for label, chosen in (("as in the data", songs), ("4x the notes", [denser(song) for song in songs])):
                seconds = render_seconds(synthesizer, chosen, folder)
                worst = max(worst, seconds.max())
                name = "FluidSynth" if synthesizer.fluidsynth else "sine waves"
                print(f"  {name:11} {label:15} mean {seconds.mean():.3f} s, slowest {seconds.max():.3f} s a song")
        print(f"slowest_vs_budget {worst / BUDGET_S:.2f} (target < 1: under {BUDGET_S:g} s a song)")


if __name__ == "__main__":
    main()
