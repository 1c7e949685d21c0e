"""How musical the songs of each training configuration are, judged on songs training never saw.

    python bench/music_quality.py [MIDI_DIR] [--configs default,-cap] [--budget 16000]
                                  [--songs 100] [--work DIR] [--json FILE] [--extra "--latent 8"]

Converts MIDI_DIR (default ../shared/midi/vgmidi) into samples once, with data_loader.py (a
later run converts only what is missing), then trains each configuration of CONFIGS with
the same seed for the same budget of training samples (whole epochs, at least one), writes
--songs songs with ``generate`` and judges them with the project's own evaluation against
the run's validation split, which training never saw. Configurations that differ only in
how songs are drawn and picked share one trained run, and a run an earlier bench trained the
same way in --work is taken again. The figures:

- diversity between the songs, against the data's; the overlapping area of every feature's
  distribution with the data's (polyphony, notes per measure, repeated measures, pitch
  range, MusPy's scale and groove consistency, ...), against the ceiling the data reach
  against themselves (one half of the validation split against the other, by MIDI file);
  each feature's mean beside the data's; songs inside the data's 10-90% note range, and
  silent songs;
- originality: the Jaccard index of each song and its nearest training sample (mean, max,
  share of near copies at 0.5 or more), with the validation songs' own as the reference,
  so that a model that replays its training songs does not pass for a good one;
- KL per song and active units, held-out reconstruction precision, recall and F1; the
  epochs the validation loss rose after its best one;
- training samples/s and minutes.

Prints one table, metric by configuration, marking each figure that misses the target of
issue 13 with "*", and writes everything as JSON. --extra adds train options to every
configuration (a smaller model, to try the bench quickly).
"""

import argparse
import json
import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from music_vae import music_metrics  # noqa: E402
from music_vae.dataset import read_data, read_sample  # noqa: E402
from music_vae.evaluation import evaluate_songs, originality  # noqa: E402
from music_vae.model import keras  # noqa: E402
from music_vae.run_folder import RunFolder, data_settings, environment  # noqa: E402
from music_vae.songs import song_source  # noqa: E402
from music_vae.training import DEFAULTS, SONG_OPTIONS, run_parameters, with_defaults  # noqa: E402

import music_generator  # noqa: E402

DEFAULT_MIDI = REPO.parent / "shared" / "midi" / "vgmidi"
SEED = 0
VALIDATION_SPLIT = 0.1
# The configurations, as train options. "paper": the paper's settings (--preset paper).
# "baseline": those issue 13 measured the failure with; then the levers, one added at a
# time. "default": this program's defaults; then the default less each lever. All but the
# paper's train in mixed bfloat16 from memory, which changes their speed, not what they learn.
SPEED = ["--precision", "bfloat16", "--cache"]
BASELINE = ["--preset", "paper", "--reconstruction", "bce", "--lr", "0.001", "--batch-size", "64", *SPEED]
DATA = ["--sample-from", "data"]
CALIBRATED = ["--note-rule", "calibrated"]
CAP = ["--max-pitches-per-step", "4"]
TRANSPOSE = ["--transpose", "6"]
CONFIGS = {
    "paper": ["--preset", "paper"],
    "baseline": BASELINE,
    "data": BASELINE + DATA,
    "calibrated": BASELINE + DATA + CALIBRATED,
    "cap": BASELINE + DATA + CALIBRATED + CAP,
    "transpose": BASELINE + DATA + CALIBRATED + CAP + TRANSPOSE,
    "dropout": BASELINE + DATA + CALIBRATED + CAP + TRANSPOSE + ["--dropout", "0.2"],
    "kl-cycle": BASELINE + DATA + CALIBRATED + CAP + TRANSPOSE + ["--kl-cycle", "4", "--free-bits", "16"],
    "default": SPEED,
    "-kl-cycle": SPEED + ["--kl-cycle", "0", "--free-bits", "0"],
    "-data": SPEED + ["--sample-from", "prior"],
    "-expected": SPEED + ["--note-rule", "per-song"],
    "-cap": SPEED + ["--max-pitches-per-step", "0"],
    "-bce": SPEED + ["--reconstruction", "mse"],
    "+transpose": SPEED + ["--transpose", "6"],
    "+dropout": SPEED + ["--dropout", "0.2"],
    "-random-start": SPEED + ["--no-random-start"],
    "-latent-bn": SPEED + ["--latent-batch-norm", "0"],
    "-both": SPEED + ["--no-random-start", "--latent-batch-norm", "0"],
    "batch-16": SPEED + ["--batch-size", "16"],
}
# Options that do not change what a run's model learns: runs that differ in them only are alike.
NOT_LEARNT = {
    "run_name", "run_info", "output_dir", "preset", "cache", "jit", "log_every", "songs_per_epoch", "songs", "bpm",
    "audio", "soundfont", *SONG_OPTIONS,
}
SONG_SEED = 1  # of the judged songs' noise, as train's final songs
LIKE_DATA = 0.25  # polyphony, notes per measure and repeated measures within 25% of the data's


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("midi", nargs="?", type=Path, default=DEFAULT_MIDI, help="folder of MIDI files")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)} (default: all)")
    parser.add_argument("--budget", type=int, default=16_000, help="training samples per configuration")
    parser.add_argument("--songs", type=int, default=100, help="final songs judged per configuration")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "music_quality", help="samples and runs")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--extra", default="", help="train options added to every configuration")
    args = parser.parse_args()
    names = args.configs.split(",")
    if unknown := [name for name in names if name not in CONFIGS]:
        parser.error(f"unknown configuration {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    if not args.midi.is_dir():
        parser.error(f"{args.midi} is not a folder of MIDI files")

    samples = args.work / "samples" / args.midi.name
    command = [sys.executable, str(REPO / "data_loader.py"), str(args.midi), str(samples)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)  # converts only what is missing
    data = read_data(samples, VALIDATION_SPLIT, SEED)
    epochs = max(1, round(args.budget / len(data.training)))
    print(f"{len(data.training)} training and {len(data.validation)} validation samples; {epochs} epochs each")
    results = {
        "midi": str(args.midi), "budget": args.budget, "epochs": epochs, "songs": args.songs,
        "environment": environment(), "data": data_against_itself(data), "configs": {},
    }
    trained = {}  # training options -> the run they trained: configurations that differ in songs only share it
    for name in names:
        flags = CONFIGS[name] + shlex.split(args.extra)
        results["configs"][name] = judge_config(name, flags, samples, data, epochs, args, trained)
        if args.json:  # after every configuration: an hour's figures survive a later failure
            args.json.write_text(json.dumps(results, indent=1))
    print()
    print(table(results))
    return 0 if all("error" not in result for result in results["configs"].values()) else 1


def judge_config(name, flags, samples, data, epochs, args, trained):
    """Train configuration ``name`` (or take the run of one that trained alike), write its
    songs with ``generate`` and judge them; its figures as a dict."""
    run_name = name.replace("+", "plus")  # a run name has no "+"
    command = [
        "train", "--data", str(samples), f"--run-name={run_name}", "--output-dir", str(args.work / "runs"), "--epochs",
        str(epochs), "--songs", "0", "--songs-per-epoch", "0", "--no-audio", "--seed", str(SEED),
        "--validation-split", str(VALIDATION_SPLIT), "--run-info", f"music_quality bench: {shlex.join(flags)}", *flags,
    ]
    settings = vars(with_defaults(music_generator.parse_args(command)))
    alike = json.dumps(learnt(settings), sort_keys=True)  # runs trained so learn the same
    if alike not in trained:
        trained[alike] = train_run(name, command, learnt(settings), args)
    run = trained[alike]
    if run is None:
        return {"flags": flags, "error": "train failed"}
    # All of them, not only those given: the run may have been trained with other ones.
    song_options = {key: settings[key] for key in SONG_OPTIONS if settings[key] is not None}
    folder = args.work / "songs" / name
    shutil.rmtree(folder, ignore_errors=True)
    command = [
        sys.executable, str(REPO / "music_generator.py"), "generate", "--run", str(run.path), "--songs",
        str(args.songs), "--seed", str(SONG_SEED), "--output-dir", str(folder), "--no-audio", *flatten(song_options),
    ]
    generated = subprocess.run(command, capture_output=True, text=True)
    if generated.returncode != 0:
        print(f"{name}: generate failed: {generated.stderr.strip().splitlines()[-1:]}")
        return {"flags": flags, "error": "generate failed"}
    state = run.load_state()
    parameters = {**run_parameters(state), **song_options}
    encoder = keras.saving.load_model(run.model / "encoder.keras")
    decoder = keras.saving.load_model(run.model / "decoder.keras")
    _, rule = song_source(run, parameters, state["data"]["mean_notes"], decoder, fit=None)  # generate fitted it
    evaluation = evaluate_songs(
        encoder, decoder, sorted((folder / "midi").glob("*.mid")), data_paths=data.validation,
        held_out=data.validation, training=data.training, rule=rule, settings=data_settings(state),
        samples=len(data.validation), seed=SEED,
    )
    history = state["history"]
    validation_losses = [row.get("val_loss", math.inf) for row in history]
    best = int(np.argmin(validation_losses)) + 1
    result = {
        "flags": flags, "run": str(run.path), "minutes": sum(row["seconds"] for row in history) / 60,
        "samples_per_s": float(np.mean([row["samples_per_s"] for row in history if "samples_per_s" in row])),
        "best_validation_epoch": best, "epochs_after_best": len(history) - best,
        **figures(evaluation),
    }
    print(f"{name}: diversity {result['diversity']:.2f}, mean overlap {result['mean_overlap']:.2f}")
    return result


def train_run(name, command, settings, args):
    """Train a run with ``command`` (music_generator.py's arguments), or take the finished
    one an earlier bench trained with the same learnt ``settings``; its RunFolder, or None
    if training failed."""
    for state_file in sorted((args.work / "runs").glob("*/state.json"), reverse=True):
        state = json.loads(state_file.read_text())
        if state["status"] == "finished" and learnt(run_parameters(state)) == settings:
            print(f"{name}: trained alike before: {state_file.parent}", flush=True)
            return RunFolder.open(state_file.parent)
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"{name}: music_generator.py {shlex.join(command)}", flush=True)
    with open(logs / f"{name}.log", "w") as log:
        finished = subprocess.run(
            [sys.executable, str(REPO / "music_generator.py"), *command], stdout=log, stderr=subprocess.STDOUT
        )
    lines = (logs / f"{name}.log").read_text().splitlines()
    done = [line.split(": ", 1)[1] for line in lines if line.startswith("Done: ")]
    if finished.returncode != 0 or not done:
        print(f"{name}: train failed (exit {finished.returncode}); see {logs / f'{name}.log'}")
        return None
    return RunFolder.open(done[-1])


def learnt(parameters):
    """Of a run's ``parameters``, those that change what its model learns."""
    return {key: value for key, value in parameters.items() if key in DEFAULTS and key not in NOT_LEARNT}


def flatten(song_options):
    return [part for key, value in song_options.items() for part in (f"--{key.replace('_', '-')}", str(value))]


def figures(evaluation):
    """The figures of one evaluation (evaluate_songs' results) that the table shows."""
    features = evaluation["features"]
    means = {feature: values["generated_mean"] for feature, values in features.items()}
    scores = evaluation["reconstruction"] or {}
    return {
        "diversity": evaluation["diversity"], **song_figures(evaluation, means, evaluation["originality"]["generated"]),
        "kl_per_song": evaluation["latent"]["kl_per_song"], "active_units": evaluation["latent"]["active_units"],
        **{key: scores.get(key) for key in ("precision", "recall", "f1")},
    }


def data_against_itself(data):
    """The data's own figures, the ceiling of the configurations': one half of the
    validation split (by MIDI file, as it is ordered) judged against the other, the feature
    means of all of it, and how near its songs come to the training samples."""
    songs = [read_sample(path) for path in data.validation]
    half = len(songs) // 2
    halves = music_metrics.compare({f"v{number}": song for number, song in enumerate(songs[:half])}, songs[half:])
    whole = music_metrics.compare({}, songs)
    means = {feature: values["data_mean"] for feature, values in whole["features"].items()}
    copies = originality({}, songs, data.training)["held_out"]
    return {"diversity": whole["data_diversity"], **song_figures(halves, means, copies)}


def song_figures(compared, means, copies):
    """The figures of songs that music_metrics.compare judged against others, with the
    songs' feature ``means`` and the copy_summary of their nearest training samples."""
    overlaps = [values["overlap"] for values in compared["features"].values() if values["overlap"] is not None]
    in_range = compared["in_range"]
    copies = copies or {}
    return {
        "mean_overlap": compared["mean_overlap"], "lowest_overlap": min(overlaps) if overlaps else None,
        **{f"overlap_{feature}": values["overlap"] for feature, values in compared["features"].items()},
        **{f"mean_{feature}": mean for feature, mean in means.items()},
        "in_range": in_range["songs"] / in_range["of"] if in_range["of"] else None,
        "silent_songs": len(compared["silent_songs"]),
        "nearest_mean": copies.get("mean"), "nearest_max": copies.get("max"), "copies": share(copies),
    }


def share(copies):
    """The share of near copies among the songs of a copy_summary."""
    return copies["copies"] / copies["songs"] if copies else None


def targets(data):
    """Issue 13's targets: metric -> (text, test of a configuration's value)."""

    def like_data(key):
        mean = data[key]
        return f"data ±{LIKE_DATA:.0%}", lambda value: abs(value - mean) <= LIKE_DATA * mean

    return {
        "diversity": (">= 0.8 x data", lambda value: value >= 0.8 * data["diversity"]),
        "mean_overlap": (">= 0.85 x data", lambda value: value >= 0.85 * data["mean_overlap"]),
        "lowest_overlap": (">= 0.5", lambda value: value >= 0.5),
        "mean_polyphony": like_data("mean_polyphony"),
        "mean_notes_per_measure": like_data("mean_notes_per_measure"),
        "mean_repeated_measures": like_data("mean_repeated_measures"),
        "in_range": (">= 0.9", lambda value: value >= 0.9),
        "silent_songs": ("0", lambda value: value == 0),
        "copies": ("<= 0.05", lambda value: value <= 0.05),
        "f1": (">= 0.25", lambda value: value >= 0.25),
    }


def rows():
    """(key, label) of every row of the table, in order."""
    features = [(feature, label) for feature, (label, _) in music_metrics.FEATURES.items()]
    return [
        ("diversity", "diversity between songs"), ("mean_overlap", "mean overlapping area"),
        ("lowest_overlap", "lowest overlapping area"),
        *[(f"overlap_{feature}", f"  overlap: {label}") for feature, label in features],
        *[(f"mean_{feature}", f"  mean: {label}") for feature, label in features],
        ("in_range", "songs in the data's 10-90% note range"), ("silent_songs", "silent songs"),
        ("nearest_mean", "nearest training sample, Jaccard mean"), ("nearest_max", "  max"),
        ("copies", "  share >= 0.5 (near copies)"), ("kl_per_song", "KL per song (nats)"),
        ("active_units", "active latent units"), ("precision", "held-out reconstruction precision"),
        ("recall", "  recall"), ("f1", "  F1"), ("best_validation_epoch", "best validation epoch"),
        ("epochs_after_best", "  epochs after it"), ("samples_per_s", "training samples/s"),
        ("minutes", "minutes of training"),
    ]


def table(results):
    """The results as text: a row per metric, a column for the data and each configuration."""
    configs = results["configs"]
    goals = targets(results["data"])
    width = max(len(name) for name in [*configs, "12345678"]) + 2
    lines = [f"{'':46}{'data':>9}{'target':>16}" + "".join(f"{name:>{width}}" for name in configs)]
    for key, label in rows():
        goal, test = goals.get(key, ("", None))
        cells = []
        for result in configs.values():
            value = result.get(key)
            missed = test is not None and value is not None and not test(value)
            cells.append(f"{number(value)}{'*' if missed else ' '}".rjust(width))
        lines.append(f"{label[:45]:46}{number(results['data'].get(key)):>9}{goal:>16}" + "".join(cells))
    lines.append(
        f"data: one half of the validation split against the other; * misses its target. {results['epochs']} epochs, "
        f"{results['songs']} songs per configuration."
    )
    return "\n".join(lines)


def number(value):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 10:
        return f"{value:.0f}"
    return f"{value:.3g}" if abs(value) >= 100 else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
