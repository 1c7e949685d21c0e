"""How fast the explore page answers a slider move: milliseconds from slider positions to
the notes of the song, for the default model, against the 50 ms a slider may take.

    python bench/explore_speed.py [--run RUN_DIR] [--moves 30]

With --run, a trained run's models and note rule; without, the default model with its
starting weights, in float32 and in mixed bfloat16 (what --precision trains), with the
default note rule. Prints the median and the slowest of --moves moves for each part:
decoding, picking the notes, the whole answer (JSON included).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from music_vae.commands import run_explorer  # noqa: E402
from music_vae.explore_server import SLIDER_RANGE, SLIDERS, Explorer  # noqa: E402
from music_vae.latent import LatentDensity  # noqa: E402
from music_vae.latent_space import PrincipalComponents  # noqa: E402
from music_vae.backend import keras  # noqa: E402
from music_vae.model import ModelConfig, build_vae, precision  # noqa: E402
from music_vae.samples import DataSettings  # noqa: E402
from music_vae.songs import NoteRule, decode  # noqa: E402

BUDGET_MS = 50
NOTES = 224  # an average vgmidi sample's


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: the default model, untrained)")
    parser.add_argument("--moves", type=int, default=30, help="slider moves timed")
    args = parser.parse_args()
    if args.run:
        from music_vae.trained_run import TrainedRun

        explorers = {args.run.name: run_explorer(TrainedRun(args.run), SLIDERS)}
    else:
        explorers = {name: untrained(name) for name in ("float32", "bfloat16")}
    rng = np.random.default_rng(0)
    print(f"{'model':>24} {'part':>14} {'median ms':>10} {'slowest ms':>11} {'x budget':>9}")
    for name, explorer in explorers.items():
        moves = rng.uniform(-SLIDER_RANGE, SLIDER_RANGE, (args.moves, SLIDERS)).astype(np.float32)
        parts = {"decode": [], "notes": [], "whole answer": []}
        explorer.song(moves[0])  # the first call builds the graph
        for positions in moves:
            began = time.perf_counter()
            latents = explorer.components.latents(positions[None])
            values = decode(explorer.decoder, latents)[0]
            decoded = time.perf_counter()
            kept, threshold = explorer.rule.apply(values)
            picked = time.perf_counter()
            json.dumps({"notes": explorer.notes(explorer.song(positions))})
            answered = time.perf_counter()
            parts["decode"].append(decoded - began)
            parts["notes"].append(picked - decoded)
            parts["whole answer"].append(answered - picked)
        for part, seconds in parts.items():
            median, slowest = 1000 * statistics.median(seconds), 1000 * max(seconds)
            print(f"{name:>24} {part:>14} {median:10.1f} {slowest:11.1f} {median / BUDGET_MS:9.2f}")


def untrained(name):
    """An Explorer over the default model with its starting weights, computing in ``name``."""
    with precision(name):
        vae = build_vae(ModelConfig())
    latent = ModelConfig.latent
    density = LatentDensity.prior(latent)
    rule = NoteRule(notes=NOTES, method="expected", max_pitches_per_step=2)
    return Explorer(
        vae.decoder, vae.encoder, PrincipalComponents.of_density(density, SLIDERS), density, rule, DataSettings(), 120
    )


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    main()
