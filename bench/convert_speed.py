"""How fast data_loader.py converts a folder of MIDI files, against a bare pretty_midi parse.

    python bench/convert_speed.py [MIDI_DIR] [--repeat 3]

Converts MIDI_DIR (default ../shared/midi/vgmidi) with 1 worker and with all workers, each
into a fresh folder, and times a loop of bare ``pretty_midi.PrettyMIDI(path)`` over the same
files. Each figure is the best of ``--repeat`` rounds, interleaved, so that a noisy machine
slows all three alike. Prints files/s and the two ratios with their targets:

- all workers / 1 worker >= 1.8 (on 2 cores)
- 1 worker / bare pretty_midi parse >= 0.8 (conversion adds at most a quarter to parsing)
"""

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pretty_midi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from music_vae.convert import convert_folder, find_midi_files  # noqa: E402

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "midi" / "vgmidi"


def parse_loop(paths):
    """Seconds for pretty_midi to parse every file, failures included."""
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pretty_midi warns about odd but readable files
        for path in paths:
            try:
                pretty_midi.PrettyMIDI(str(path))
            except Exception:
                pass
    return time.perf_counter() - started


def convert(midi_dir, workers):
    """Seconds for a whole data_loader run, pool start-up and writing included."""
    with tempfile.TemporaryDirectory() as output_dir:
        started = time.perf_counter()
        convert_folder(midi_dir, output_dir, workers=workers, progress=False)
        return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("midi_dir", nargs="?", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best of each is kept")
    args = parser.parse_args()
    if not args.midi_dir.is_dir():
        sys.exit(f"convert_speed.py: error: no MIDI folder at {args.midi_dir}")

    paths = find_midi_files(args.midi_dir)
    cores = os.cpu_count() or 1
    best = {"parse": float("inf"), "one": float("inf"), "all": float("inf")}
    for _ in range(args.repeat):
        best["parse"] = min(best["parse"], parse_loop(paths))
        best["one"] = min(best["one"], convert(args.midi_dir, 1))
        best["all"] = min(best["all"], convert(args.midi_dir, cores))
    rate = {name: len(paths) / seconds for name, seconds in best.items()}

    print(f"{len(paths)} MIDI files in {args.midi_dir}, {cores} cores, best of {args.repeat} rounds")
    print(f"  bare pretty_midi.PrettyMIDI loop  {rate['parse']:7.1f} files/s")
    print(f"  data_loader, 1 worker             {rate['one']:7.1f} files/s")
    print(f"  data_loader, {cores} workers            {rate['all']:7.1f} files/s")
    print(f"  {cores} workers / 1 worker:     {rate['all'] / rate['one']:.2f}  (target >= 1.8)")
    print(f"  1 worker / bare parse:  {rate['one'] / rate['parse']:.2f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
