"""How a trained run's notes are picked, and what that does to its songs: is a narrow pitch
use the decoder's, or the rule's that keeps the strongest cells?

    python bench/note_picking.py RUN_DIR [--split validation|test] [--songs 100]

Decodes --songs songs from the run's song density (the noise of train's final songs), then
picks their notes several ways and judges each set against the run's --split songs, which
training never saw: the run's expected rule with a cap of 2, 3 or 4 pitches a step and with
none, and Bernoulli sampling, every cell a note with its probability sharpened by a
temperature (1 and 0.7) and scaled so that songs have the training samples' average note
count. Beside them: the pitch-class entropy of the decoder's own expected notes (its
probabilities summed per pitch class), and, for each cap, the reconstruction F1 of the split's
songs. Prints a Markdown table.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from music_vae import music_metrics  # noqa: E402
from music_vae.config import TrainConfig  # noqa: E402
from music_vae.dataset import read_data, read_sample  # noqa: E402
from music_vae.evaluation import reconstruct  # noqa: E402
from music_vae.backend import keras  # noqa: E402
from music_vae.run_folder import RunFolder, data_settings  # noqa: E402
from music_vae.samples import PITCHES  # noqa: E402
from music_vae.songs import NoteRule, decode, fitted_rule, fixed_noise  # noqa: E402

FEATURES = ("pitch_class_entropy", "pitch_range", "polyphony", "top_line_leaps", "notes_per_measure_spread")
SONG_SEED = 1  # as train's final songs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder made by train")
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--songs", type=int, default=100)
    args = parser.parse_args()
    run = RunFolder.open(args.run)
    state = run.load_state()
    config = TrainConfig.of_run(state["parameters"])
    settings = data_settings(state)
    data = read_data(
        state["data"]["folder"], config.validation_split, config.seed, settings, config.test_split,
    )
    real = [read_sample(path) for path in getattr(data, args.split)]
    encoder = keras.saving.load_model(run.model / "encoder.keras")
    decoder = keras.saving.load_model(run.model / "decoder.keras")
    notes = state["data"]["mean_notes"]
    density = run.latent_density(config.sample_from, decoder.input_shape[-1], fit=None)
    noise = fixed_noise(args.songs, len(density.mean), config.seed + SONG_SEED)
    values = decode(decoder, density.latents(noise, config.temperature))

    rules = {
        cap: fitted_rule(
            NoteRule.of_run(dataclasses.replace(config, max_pitches_per_step=cap, threshold=None), notes),
            decoder, density, config.temperature, config.seed,
        )
        for cap in (2, 3, 4, 0)
    }
    # The split's songs are encoded and decoded once; each cap picks its notes from the same values.
    rebuilt, _ = reconstruct(encoder, decoder, real, rules[0])
    rows = []
    for cap, rule in rules.items():
        picked = [(kept >= threshold).astype(np.uint8) for kept, threshold in map(rule.apply, values)]
        rebuilt_notes = np.stack([(kept >= threshold) for kept, threshold in map(rule.apply, rebuilt)])
        f1 = music_metrics.onset_scores(np.stack(real), rebuilt_notes.astype(np.uint8))["f1"]
        rows.append((f"{config.note_rule} rule, cap {cap or 'none'}", judged(picked, real, settings), f1))
    rng = np.random.default_rng(0)
    probabilities = np.clip(values.astype(np.float64), 1e-7, 1 - 1e-7)
    for temperature in (1.0, 0.7):
        sharpened = 1 / (1 + np.exp(-np.log(probabilities / (1 - probabilities)) / temperature))
        sharpened = np.clip(sharpened * notes / sharpened.sum(axis=(1, 2)).mean(), 0, 1)
        sampled = (rng.random(values.shape) < sharpened).astype(np.uint8)
        rows.append((f"Bernoulli, temperature {temperature}", judged(sampled, real, settings), None))

    data_features = music_metrics.compare({}, real, settings.lowest_pitch)["features"]
    print(f"{len(real)} {args.split} songs, {args.songs} songs of {run.path.name}")
    print(f"pitch-class entropy of the decoder's expected notes: {expected_entropy(values, settings):.2f} bits\n")
    header = ["mean overlap", "diversity", *[music_metrics.FEATURES[feature][1] for feature in FEATURES], "F1"]
    print("| notes picked by | " + " | ".join(header) + " |")
    print("| --- |" + " ---: |" * len(header))
    means = " | ".join(f"{data_features[feature]['data_mean']:.2f}" for feature in FEATURES)
    print(f"| the {args.split} songs | | | {means} | |")
    for name, compared, f1 in rows:
        cells = [
            f"{compared['mean_overlap']:.2f}", f"{compared['diversity']:.2f}",
            *[f"{compared['features'][name]['generated_mean']:.2f} ({compared['features'][name]['overlap']:.2f})"
              for name in FEATURES],
            "" if f1 is None else f"{f1:.3f}",
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


def judged(songs, real, settings):
    return music_metrics.compare({str(number): song for number, song in enumerate(songs)}, real, settings.lowest_pitch)


def expected_entropy(values, settings):
    """Mean pitch-class entropy (bits) of the decoder's expected notes: each song's
    probabilities summed per pitch class."""
    per_pitch = values.reshape(len(values), settings.measures, PITCHES, -1).sum(axis=(1, 3))
    classes = np.zeros((len(values), 12))
    for row in range(PITCHES):
        classes[:, (row + settings.lowest_pitch) % 12] += per_pitch[:, row]
    shares = classes / classes.sum(axis=1, keepdims=True)
    return float(np.mean(-(shares * np.log2(np.maximum(shares, 1e-12))).sum(axis=1)))


if __name__ == "__main__":
    sys.exit(main())
