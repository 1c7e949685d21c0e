"""Resident memory of a training run, epoch after epoch: it must stay flat.

    python bench/memory.py [--epochs 20] [--samples 128] [--batch-size 16] [--json FILE]

Runs ``music_generator.py train`` in this process, reading random samples from .npy files
in a temporary folder (one batch at a time, as by default), with everything a real run
does after each epoch: saving the models and the info file, writing songs (MIDI, PNG),
logging to TensorBoard. Prints the resident memory after each epoch and its growth from
epoch 2 to the last (key ``rss_growth_2_20``), which must stay under 5%. Linux only: it
reads /proc/self/statm.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import music_generator as mg  # noqa: E402
from music_vae.callbacks import EpochEnd  # noqa: E402
from train_speed import write_samples  # noqa: E402


def resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def resident_per_epoch(epochs, samples, batch_size, extra=()):
    """Train a run of ``epochs`` epochs; return the resident bytes after each epoch."""
    resident = []
    real_on_epoch_end = EpochEnd.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):  # after the run's own end-of-epoch work
        real_on_epoch_end(self, epoch, logs)
        resident.append(resident_bytes())

    EpochEnd.on_epoch_end = on_epoch_end
    try:
        with tempfile.TemporaryDirectory() as folder:
            data = Path(folder, "samples")
            data.mkdir()
            write_samples(data, samples)
            argv = [
                "train", "--data", str(data), "--output-dir", str(Path(folder, "runs")), "--epochs", str(epochs),
                "--batch-size", str(batch_size), "--lr", "0.0001", "--songs", "1", *extra,
            ]
            if mg.main(argv) != 0:
                raise RuntimeError("training failed")
    finally:
        EpochEnd.on_epoch_end = real_on_epoch_end
    return resident


def growth(resident):
    """Growth from the second epoch to the last, as a share of the second: the first epoch
    builds the step, fills the caches and the allocator's pools."""
    return resident[-1] / resident[1] - 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    resident = resident_per_epoch(args.epochs, args.samples, args.batch_size)
    for epoch, rss in enumerate(resident, start=1):
        print(f"epoch {epoch:3d}: resident {rss / 2**20:8.1f} MiB")
    key = f"rss_growth_2_{args.epochs}"
    print(f"{key}: {growth(resident):+.2%}   target < 5%")
    if args.json:
        args.json.write_text(
            json.dumps({key: growth(resident), "resident_mib": [r / 2**20 for r in resident]}, indent=2)
        )


if __name__ == "__main__":
    main()
