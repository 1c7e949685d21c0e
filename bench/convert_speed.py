"""How fast data_loader.py converts a folder of MIDI files, against a bare pretty_midi parse.

    python bench/convert_speed.py [MIDI_DIR] [--repeat 3] [--slowest 10]

Converts MIDI_DIR (default ../shared/midi/vgmidi) with 1 worker and with all workers, each
into a fresh folder, and times a loop of bare ``pretty_midi.PrettyMIDI(path)`` over the same
files. Each figure is the best of ``--repeat`` rounds, interleaved, so that a noisy machine
slows all three alike. Prints files/s and the two ratios with their targets:

- all workers / 1 worker >= 1.8 (on 2 cores)
- 1 worker / bare pretty_midi parse >= 0.8 (conversion adds at most a quarter to parsing)

``--slowest N`` then converts every file alone in this process, as a worker does, and shows
the N slowest: their size and messages, and their time (best of 3) split into mido's parse
(``read_midi``) and the rest (our conversion and writing), beside a bare pretty_midi parse;
then cProfile's heaviest functions over those N files. ``--repeat 0`` skips the rounds.
"""

import argparse
import cProfile
import io
import os
import pstats
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pretty_midi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # REPO, for music_vae
from music_vae.convert import FILE_TIMEOUT_S, convert_file, convert_folder, find_midi_files  # noqa: E402
from music_vae.files import remove_partial_files  # noqa: E402
from music_vae.samples import DataSettings, SkipFile, read_midi  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO.parent / "shared" / "midi" / "vgmidi"


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


def timed(function, *args):
    """Seconds that ``function(*args)`` takes; a file it rejects counts as done."""
    started = time.perf_counter()
    try:
        function(*args)
    except Exception:  # SkipFile, or a file that pretty_midi cannot read
        pass
    return time.perf_counter() - started


def convert_alone(path, output_dir):
    """Seconds for a worker's whole job on one file, writing its ``.part`` files (removed after)."""
    seconds = timed(convert_file, path, path.name, output_dir, DataSettings())
    remove_partial_files(output_dir)
    return seconds


def parse_alone(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pretty_midi.PrettyMIDI(str(path))


def describe(path):
    """Size in KB, MIDI messages, and the share of them that are control changes."""
    try:
        midi = read_midi(path)
    except SkipFile:
        return path.stat().st_size / 1024, 0, 0.0
    messages = [message.type for track in midi.tracks for message in track]
    control = sum(kind == "control_change" for kind in messages)
    return path.stat().st_size / 1024, len(messages), control / max(len(messages), 1)


def slowest_files(paths, count):
    """Time every file's conversion alone; print the ``count`` slowest and where their time goes."""
    with tempfile.TemporaryDirectory() as output_dir:
        seconds = {path: convert_alone(path, output_dir) for path in paths}
        slowest = sorted(paths, key=seconds.get, reverse=True)[:count]
        rows = []
        for path in slowest:  # best of 3: the first pass shared the machine with the rest of the run
            convert = min(seconds[path], *(convert_alone(path, output_dir) for _ in range(2)))
            parse = min(timed(read_midi, path) for _ in range(3))
            bare = min(timed(parse_alone, path) for _ in range(3))
            rows.append((path.name, *describe(path), convert, parse, bare))
        rows.sort(key=lambda row: row[4], reverse=True)
        profile = cProfile.Profile()
        profile.enable()
        for path in slowest:
            convert_alone(path, output_dir)
        profile.disable()

    total = sum(seconds.values())
    print(
        f"\nEach of the {len(paths)} files converted alone in this process: {total:.1f} s in all, "
        f"median {sorted(seconds.values())[len(paths) // 2] * 1000:.1f} ms, "
        f"slowest {max(seconds.values()):.3f} s (a worker gives up on a file after {FILE_TIMEOUT_S} s)."
    )
    print(f"The {len(slowest)} slowest, in seconds: convert = mido parse + ours (conversion, writing); a bare")
    print("pretty_midi parse of the same file beside them:")
    width = min(max(len(name) for name, *_ in rows), 48)
    print(f"  {'file':{width}}      KB  messages  control%  convert  parse   ours  pretty_midi")
    for name, kb, messages, control, convert, parse, bare in rows:
        name = name if len(name) <= width else name[: width - 3] + "..."
        print(
            f"  {name:{width}} {kb:7.0f} {messages:9d} {100 * control:8.0f}  {convert:7.3f} {parse:6.3f} "
            f"{convert - parse:6.3f} {bare:12.3f}"
        )
    convert, parse = sum(row[4] for row in rows), sum(row[5] for row in rows)
    print(
        f"  together: convert {convert:.2f} s = mido parse {parse:.2f} s ({parse / convert:.0%}) "
        f"+ ours {convert - parse:.2f} s"
    )

    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text)
    stats.sort_stats("cumulative").print_stats(12)
    print(f"cProfile of converting the {len(slowest)} slowest, heaviest functions (cumulative):")
    lines = text.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    for line in lines[start:]:
        if line.strip():
            print("  " + re.sub(rf"\S*/site-packages/|{re.escape(str(REPO))}/", "", line))


def rounds(midi_dir, paths, repeat):
    """The three loops, interleaved, ``repeat`` times; print the best of each and the ratios."""
    cores = os.cpu_count() or 1
    best = {"parse": float("inf"), "one": float("inf"), "all": float("inf")}
    for _ in range(repeat):
        best["parse"] = min(best["parse"], parse_loop(paths))
        best["one"] = min(best["one"], convert(midi_dir, 1))
        best["all"] = min(best["all"], convert(midi_dir, cores))
    rate = {name: len(paths) / seconds for name, seconds in best.items()}

    print(f"{len(paths)} MIDI files in {midi_dir}, {cores} cores, best of {repeat} rounds")
    print(f"  bare pretty_midi.PrettyMIDI loop  {rate['parse']:7.1f} files/s")
    print(f"  data_loader, 1 worker             {rate['one']:7.1f} files/s")
    print(f"  data_loader, {cores} workers            {rate['all']:7.1f} files/s")
    print(f"  {cores} workers / 1 worker:     {rate['all'] / rate['one']:.2f}  (target >= 1.8)")
    print(f"  1 worker / bare parse:  {rate['one'] / rate['parse']:.2f}  (target >= 0.8)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("midi_dir", nargs="?", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best of each is kept (0: none)")
    parser.add_argument(
        "--slowest", type=int, default=0, metavar="N", help="then time every file alone and profile the N slowest",
    )
    args = parser.parse_args()
    if not args.midi_dir.is_dir():
        sys.exit(f"convert_speed.py: error: no MIDI folder at {args.midi_dir}")

    paths = find_midi_files(args.midi_dir)
    if not paths:
        sys.exit(f"convert_speed.py: error: no MIDI files in {args.midi_dir}")
    if args.repeat > 0:
        rounds(args.midi_dir, paths, args.repeat)
    if args.slowest > 0:
        slowest_files(paths, args.slowest)


if __name__ == "__main__":
    main()
