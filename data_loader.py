"""Turn a folder of MIDI files into the paper's training samples.

    python data_loader.py INPUT_DIR OUTPUT_DIR [--workers N] ...

writes one ``.npy`` per sample into OUTPUT_DIR, a (16, 9216) uint8 array of note onsets
(see music_vae/samples.py), plus ``index.csv`` (every sample), ``skipped.csv`` (every file
that gave none, with the reason) and ``settings.json``. Running it again on the same
OUTPUT_DIR resumes where it stopped. The work is done by music_vae/convert.py.

    python data_loader.py INPUT_DIR OUTPUT_DIR/shard2 --shard 2/4

converts only a quarter of the files, on this machine, into a folder complete on its own;
the four shards' folders together hold what one run on all the files writes.
"""

import argparse
import os
import re
import sys

from music_vae.convert import FILE_TIMEOUT_S, MAX_FILE_MB, WORKER_MEMORY_MB, Shard, convert_folder
from music_vae.files import ArgumentParser, UsageError, int_between, positive_float, positive_int
from music_vae.samples import LOWEST_PITCH, MEASURES_PER_SAMPLE, PITCHES, DataSettings


def shard(text):
    """An argparse type: a shard, ``"I/N"`` with I from 0 to N-1."""
    try:
        return Shard.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_args(argv=None):
    parser = ArgumentParser(
        description="Turn a folder of MIDI files into the paper's training samples: "
        "one .npy per 16 measures, shape (measures, 9216), uint8 0/1 note onsets "
        "(index pitch * 96 + step). Runs again on the same OUTPUT_DIR resume.",
    )
    add = parser.add_argument
    add("input_dir", metavar="INPUT_DIR", help="folder searched recursively for .mid/.midi files (any letter case)")
    add("output_dir", metavar="OUTPUT_DIR", help="folder for the .npy samples, index.csv and skipped.csv")
    add(
        "--workers", type=positive_int, default=os.cpu_count() or 1,
        help="processes converting files in parallel (default: all %(default)s cores)",
    )
    add(
        "--lowest-pitch", type=int_between(0, 128 - PITCHES), default=LOWEST_PITCH, metavar="0..32",
        help="MIDI note of pitch row 0; the window spans 96 pitches from it (default: %(default)s, so MIDI 16-111)",
    )
    add("--measures", type=positive_int, default=MEASURES_PER_SAMPLE, help="measures per sample (default: %(default)s)")
    add(
        "--out-of-range",
        choices=("fold", "drop"),
        default="fold",
        help="notes outside the pitch window are moved by octaves into it (fold, the default) or dropped; "
        "either way they are counted in the summary",
    )
    add(
        "--timeout", type=positive_float, default=FILE_TIMEOUT_S,
        help="seconds one file may take before it is skipped (default: %(default)s)",
    )
    add(
        "--max-file-size", type=positive_float, default=MAX_FILE_MB, metavar="MB",
        help="larger files are skipped unread (default: %(default)s MB)",
    )
    add(
        "--worker-memory", type=positive_int, default=WORKER_MEMORY_MB, metavar="MB",
        help="memory one worker may use before its file is skipped, on Linux and macOS (default: %(default)s MB)",
    )
    add(
        "--shard", type=shard, default=Shard(), metavar="I/N",
        help="convert only shard I of N, I counted from 0 to N-1 (as SLURM_ARRAY_TASK_ID of --array=0-3 for N=4): "
        "the MIDI files whose path relative to INPUT_DIR hashes to I modulo N, the same on every machine. "
        "Give each shard its own OUTPUT_DIR, such as OUT/shard0 to OUT/shard3: together they hold what "
        "one run without --shard writes, and train --data OUT reads them all",
    )
    add("--verbose", "-v", action="store_true", help="print every skipped file as it happens")
    add("--no-progress", action="store_true", help="no progress bar")
    # As Python 3.13 has it: "--shard -1/2" passes -1/2 to the option, to be told what is wrong
    # with it, rather than taking it for an unknown option and saying --shard lacks a value.
    parser._negative_number_matcher = re.compile(r"-\.?\d")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    settings = DataSettings(args.lowest_pitch, args.measures, args.out_of_range)
    try:
        summary = convert_folder(
            args.input_dir, args.output_dir, settings, workers=args.workers, timeout=args.timeout,
            max_file_mb=args.max_file_size, memory_mb=args.worker_memory, progress=False if args.no_progress else None,
            verbose=args.verbose, shard=args.shard,
        )
    except UsageError as error:
        print(f"data_loader.py: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("data_loader.py: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except OSError as error:  # a full disk or a folder that went away mid-run
        where = f" ({error.filename})" if error.filename else ""
        print(
            f"data_loader.py: error: {error.strerror or error}{where}; "
            "what was written so far is complete, run again to resume",
            file=sys.stderr,
        )
        return 1
    print(summary.text(args.output_dir, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
