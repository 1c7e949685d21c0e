"""How well each training configuration rebuilds songs and how musical its new songs are,
judged on songs that neither training nor the choice of settings saw.

    python bench/music_quality.py [MIDI_DIR] [--configs default,-note-weight] [--budget 40000]
                                  [--split test|validation] [--songs 100] [--work DIR]
                                  [--json FILE] [--extra "--latent 8"]

Converts MIDI_DIR (default ../shared/midi/vgmidi) into samples once, with data_loader.py (a
later run converts only what is missing), and splits them by MIDI file into training,
validation and test songs (10% each held out, the split train makes). Each configuration of
CONFIGS trains with the same seed for the same budget of training samples (whole epochs, at
least one; a configuration that names its --epochs trains that long), writes --songs songs
with ``generate`` and is judged with the project's own evaluation against the --split
songs: the validation songs to choose settings with, the test songs to report them on.
Configurations that differ only in how songs are drawn and picked share one trained run, and
a run an earlier bench trained alike in --work (the same learnt settings and the same
training code, music_vae's code_version) is taken again; any other is trained afresh. The
figures:

- reconstruction: how many of the notes of the split's songs, and of as many training songs,
  their decoded codes rebuild (precision, recall, F1; exact, and within a step), and the KL
  per song, what the code can carry;
- the new songs: diversity between them against the data's; the overlapping area of every
  feature's distribution with the data's, against the ceiling the data reach against
  themselves (one half of the split against the other, by MIDI file); each feature's mean
  beside the data's; silent songs;
- originality, measure by measure: the share of the songs' measures that replay a training
  measure at any place and transposition, and the share of songs holding a phrase copy, with
  the split's own songs as the reference (real songs of one collection share some too);
- the epochs the validation loss rose after its best one; training samples/s and minutes; and the
  learning curve: the reconstruction F1 of 64 training and 64 validation songs after every
  epoch (train records them), at six points of the run.

Prints one table, metric by configuration, marking each figure that misses its target (issue
22's) with "*" and each that the configuration fixes by construction with "+" (never a
win: a calibrated note count, a capped polyphony, a floor on the KL), then the
rate-distortion table (a configuration a row) and the learning curves as Markdown, and writes
everything as JSON.
--extra adds train options to every configuration (a smaller model, to try the bench
quickly).
"""

import argparse
import datetime
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
from music_vae.config import TrainConfig, flag, given_options, song_option_names  # noqa: E402
from music_vae.evaluation import evaluate_songs, originality  # noqa: E402
from music_vae.backend import keras  # noqa: E402
from music_vae.run_folder import RunFolder, code_version, data_settings, environment  # noqa: E402
from music_vae.samples import PITCHES  # noqa: E402
from music_vae.songs import song_source  # noqa: E402

import music_generator  # noqa: E402

DEFAULT_MIDI = REPO.parent / "shared" / "midi" / "vgmidi"
SEED = 0
VALIDATION_SPLIT = TEST_SPLIT = 0.1
# The configurations, as train options. "paper": the paper's settings (--preset paper);
# "default": this program's defaults; then the default less each of its levers ("-"), and
# the levers of issue 22's sweep, one at a time ("+"). All but the paper's train in mixed
# bfloat16 from memory, which changes their speed, not what they learn.
SPEED = ["--precision", "bfloat16", "--cache"]
CONFIGS = {
    "paper": ["--preset", "paper"],
    "default": SPEED,
    "-pitch-step-terms": SPEED + ["--no-pitch-step-terms"],
    "-transpose": SPEED + ["--transpose", "0"],
    "-random-start": SPEED + ["--no-random-start"],
    "-latent-bn": SPEED + ["--latent-batch-norm", "0"],
    "-kl-cycle": SPEED + ["--kl-cycle", "0"],
    "-expected": SPEED + ["--note-rule", "per-song"],
    "-cap": SPEED + ["--max-pitches-per-step", "0"],
    "-data": SPEED + ["--sample-from", "prior"],
    "free-bits-16": SPEED + ["--free-bits", "16"],
    "free-bits-64": SPEED + ["--free-bits", "64"],
    "free-bits-256": SPEED + ["--free-bits", "256"],
    "kl-weight-0.2": SPEED + ["--kl-weight", "0.2"],
    "kl-weight-0.05": SPEED + ["--kl-weight", "0.05"],
    "latent-bn-1": SPEED + ["--latent-batch-norm", "1"],
    "latent-bn-0.25": SPEED + ["--latent-batch-norm", "0.25"],
    "note-weight-3": SPEED + ["--note-weight", "3"],
    "autoencoder": SPEED + ["--kl-weight", "0", "--latent-batch-norm", "0", "--free-bits", "0", "--kl-cycle", "0"],
    "issue-13": [
        *SPEED, "--transpose", "0", "--no-pitch-step-terms", "--free-bits", "16", "--epochs", "20",
        "--max-pitches-per-step", "2",
    ],
}
# Options that do not change what a run's model learns: runs that differ in them only are alike.
NOT_LEARNT = {
    "run_name", "run_info", "output_dir", "preset", "cache", "jit", "log_every", "songs_per_epoch", "songs", "bpm",
    "audio", "soundfont", *song_option_names(),
}
SONG_SEED = 1  # of the judged songs' noise, as train's final songs
COPY_MARGIN = 0.01  # the songs may replay as many measures as the split's own songs do, and this share more
PHRASE_SONGS = 0.05  # songs holding a phrase copy, at most
TEST_F1 = 0.30


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("midi", nargs="?", type=Path, default=DEFAULT_MIDI, help="folder of MIDI files")
    parser.add_argument("--configs", default="default", help=f"of {', '.join(CONFIGS)} (default: %(default)s)")
    parser.add_argument("--budget", type=int, default=174_000, help="training samples per configuration")
    parser.add_argument(
        "--split", choices=("test", "validation"), default="test",
        help="the held-out songs to judge against: validation to choose settings, test to report them",
    )
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

    samples = convert(args.midi, args.work)
    data = read_data(samples, VALIDATION_SPLIT, SEED, test_split=TEST_SPLIT)
    held_out = data.test if args.split == "test" else data.validation
    epochs = max(1, round(args.budget / len(data.training)))
    print(
        f"{len(data.training)} training, {len(data.validation)} validation and {len(data.test)} test samples; "
        f"{epochs} epochs each; judged on the {args.split} split"
    )
    results = {
        "midi": str(args.midi), "budget": args.budget, "epochs": epochs, "songs": args.songs, "split": args.split,
        "environment": environment(), "data": data_against_itself(data, held_out), "configs": {},
    }
    trained = {}  # training options -> the run they trained: configurations that differ in songs only share it
    for name in names:
        flags = CONFIGS[name] + shlex.split(args.extra)
        results["configs"][name] = judge_config(name, flags, samples, data, held_out, epochs, args, trained)
        if args.json:  # after every configuration: an hour's figures survive a later failure
            args.json.write_text(json.dumps(results, indent=1))
    print()
    print(table(results))
    print()
    print(rate_distortion_table(results))
    print()
    print(learning_curve_table(results))
    return 0 if all("error" not in result for result in results["configs"].values()) else 1


def convert(midi, work):
    """The samples folder of a MIDI folder, converted with data_loader.py (only what is missing)."""
    samples = work / "samples" / midi.name
    command = [sys.executable, str(REPO / "data_loader.py"), str(midi), str(samples)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return samples


def judge_config(name, flags, samples, data, held_out, epochs, args, trained):
    """Train configuration ``name`` (or take the run of one that trained alike), write its
    songs with ``generate`` and judge them against ``held_out``; its figures as a dict."""
    run_name = name.replace("+", "plus")  # a run name has no "+"
    command = [
        "train", "--data", str(samples), f"--run-name={run_name}", "--output-dir", str(args.work / "runs"), "--epochs",
        str(epochs), "--songs", "0", "--songs-per-epoch", "0", "--no-audio", "--seed", str(SEED),
        "--validation-split", str(VALIDATION_SPLIT), "--test-split", str(TEST_SPLIT),
        "--run-info", f"music_quality bench: {shlex.join(flags)}", *flags,  # a configuration's own --epochs wins
    ]
    settings = TrainConfig.new(given_options(music_generator.parse_args(command))).parameters()
    alike = json.dumps(learnt(settings), sort_keys=True)  # runs trained so learn the same
    if alike not in trained:
        trained[alike] = train_run(name, command, learnt(settings), args)
    run = trained[alike]
    if run is None:
        return {"flags": flags, "error": "train failed"}
    # All of them, not only those given: the run may have been trained with other ones.
    song_options = {key: settings[key] for key in song_option_names() if settings[key] is not None}
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
    config = TrainConfig.of_run(state["parameters"]).with_song_options(song_options)
    parameters = config.parameters()
    encoder = keras.saving.load_model(run.model / "encoder.keras")
    decoder = keras.saving.load_model(run.model / "decoder.keras")
    _, rule = song_source(run, config, state["data"]["mean_notes"], decoder, fit=None)  # generate fitted it
    evaluation = evaluate_songs(
        encoder, decoder, sorted((folder / "midi").glob("*.mid")), data_paths=held_out, held_out=held_out,
        training=data.training, rule=rule, settings=data_settings(state), samples=len(held_out), seed=SEED,
        data_folder=data.folder,
    )
    history = state["history"]
    validation_losses = [row.get("val_loss", math.inf) for row in history]
    best = int(np.argmin(validation_losses)) + 1
    result = {
        "flags": flags, "run": str(run.path), "minutes": sum(row["seconds"] for row in history) / 60,
        "wall_minutes": wall_minutes(state["sessions"]),
        "epochs": len(history),
        "samples_per_s": float(np.mean([row["samples_per_s"] for row in history if "samples_per_s" in row])),
        "best_validation_epoch": best, "epochs_after_best": len(history) - best,
        "curve": {row["epoch"]: [row.get("f1"), row.get("val_f1")] for row in history},
        "constructed": sorted(constructed(parameters)), **figures(evaluation),
    }
    print(
        f"{name}: {args.split} F1 {number(result['f1'])}, training F1 {number(result['training_f1'])}, "
        f"KL {number(result['kl_per_song'])}, mean overlap {number(result['mean_overlap'])}, "
        f"diversity {number(result['diversity'])}", flush=True,
    )
    return result


def train_run(name, command, settings, args):
    """Train a run with ``command`` (music_generator.py's arguments), or take the finished
    one an earlier bench trained with the same learnt ``settings`` and training code; its
    RunFolder, or None if training failed."""
    for state_file in sorted((args.work / "runs").glob("*/state.json"), reverse=True):
        state = json.loads(state_file.read_text())
        same_code = state.get("environment", {}).get("music_vae") == code_version()
        parameters = TrainConfig.of_run(state["parameters"]).parameters()
        if state["status"] == "finished" and same_code and learnt(parameters) == settings:
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


def wall_minutes(sessions):
    """Minutes from the start to the end of a run's training sessions (its epochs, the models
    and songs each writes, and the final evaluation), as its state records them."""
    spans = [
        datetime.datetime.fromisoformat(session["ended"]) - datetime.datetime.fromisoformat(session["started"])
        for session in sessions
        if session.get("ended")
    ]
    return sum(span.total_seconds() for span in spans) / 60


def learnt(parameters):
    """Of a run's ``parameters``, those that change what its model learns."""
    options = TrainConfig.__dataclass_fields__
    return {key: value for key, value in parameters.items() if key in options and key not in NOT_LEARNT}


def flatten(song_options):
    return [part for key, value in song_options.items() for part in (flag(key), str(value))]


def constructed(parameters):
    """The figures that a run's ``parameters`` fix or bound by construction, whatever it
    learnt: the note rules give songs the average training sample's note count, and
    per-song and expected never leave a song silent; a cap bounds the polyphony; latent
    batch normalisation keeps every unit active and puts a floor under the KL."""
    fixed = set()
    if parameters["threshold"] is None:
        fixed.add("mean_notes_per_measure")
        if parameters["note_rule"] in ("per-song", "expected"):
            fixed.add("silent_songs")
    if parameters["max_pitches_per_step"]:
        fixed.add("mean_polyphony")
    if parameters["latent_batch_norm"]:
        fixed |= {"active_units", "kl_per_song"}
    return fixed


def figures(evaluation):
    """The figures of one evaluation (evaluate_songs' results) that the table shows."""
    features = evaluation["features"]
    means = {feature: values["generated_mean"] for feature, values in features.items()}
    test, training = evaluation["reconstruction"] or {}, evaluation["training_reconstruction"] or {}
    return {
        "diversity": evaluation["diversity"],
        **song_figures(evaluation, means, (evaluation["originality"] or {}).get("generated")),
        "kl_per_song": evaluation["latent"]["kl_per_song"], "active_units": evaluation["latent"]["active_units"],
        **{key: test.get(key) for key in ("precision", "recall", "f1")},
        "f1_within_1_step": test.get("within_1_step", {}).get("f1"), "training_f1": training.get("f1"),
        "training_f1_within_1_step": training.get("within_1_step", {}).get("f1"),
    }


def data_against_itself(data, held_out):
    """The data's own figures, the ceiling of the configurations': one half of the held-out
    split (by MIDI file, as it is ordered) judged against the other, the feature means of all
    of it, and how much of it replays the training songs."""
    songs = [read_sample(path) for path in held_out]
    half = len(songs) // 2
    halves = music_metrics.compare({f"s{number}": song for number, song in enumerate(songs[:half])}, songs[half:])
    whole = music_metrics.compare({}, songs)
    means = {feature: values["data_mean"] for feature, values in whole["features"].items()}
    copies = originality({}, songs, data.training, data.folder)["held_out"]
    return {
        "diversity": whole["data_diversity"], **song_figures(halves, means, copies), "f1": profile_f1(songs),
    }


def profile_f1(songs):
    """The F1 of songs rebuilt from their pitch profile (notes per pitch over the song) and each
    measure's step profile (notes per step) alone, each measure given its own note count: its
    strongest cells by the product of the two. What a code that knew only which pitches a song
    uses and where its onsets fall would rebuild: a yardstick for the models' F1."""
    correct = true_notes = 0
    for song in songs:
        cells = np.asarray(song, np.float64).reshape(len(song), PITCHES, -1)
        scores = cells.sum(axis=(0, 2))[None, :, None] * cells.sum(axis=1)[:, None, :]
        for measure, score in zip(cells.reshape(len(song), -1), scores.reshape(len(song), -1)):
            count = int(measure.sum())
            if count:
                strongest = np.argsort(-score, kind="stable")[:count]  # ties: the lower cell first
                correct += measure[strongest].sum()
                true_notes += count
    return float(correct / true_notes) if true_notes else None


def song_figures(compared, means, copies):
    """The figures of songs that music_metrics.compare judged against others, with the
    songs' feature ``means`` and the replay_summary of their measures (originality)."""
    overlaps = {feature: values["overlap"] for feature, values in compared["features"].items()}
    judged = {feature: value for feature, value in overlaps.items() if value is not None}
    lowest = min(judged, key=judged.get) if judged else None
    copies = copies or {}
    return {
        "mean_overlap": compared["mean_overlap"], "lowest_overlap": judged.get(lowest),
        "lowest_feature": music_metrics.FEATURES[lowest][1] if lowest else None,
        **{f"overlap_{feature}": overlap for feature, overlap in overlaps.items()},
        **{f"mean_{feature}": mean for feature, mean in means.items()},
        "silent_songs": len(compared["silent_songs"]),
        "copied_measures": copies.get("copied_share"),
        "phrase_copies": copies["phrase_copies"] / copies["songs"] if copies else None,
    }


def targets(data):
    """Issue 22's targets: metric -> (text, test of a configuration's value)."""
    return {
        "diversity": (">= 0.8 x data", lambda value: value >= 0.8 * data["diversity"]),
        "mean_overlap": (">= 0.85 x data", lambda value: value >= 0.85 * data["mean_overlap"]),
        "lowest_overlap": (">= 0.5", lambda value: value >= 0.5),
        "silent_songs": ("0", lambda value: value == 0),
        "copied_measures": (
            f"<= data + {COPY_MARGIN}", lambda value: value <= data["copied_measures"] + COPY_MARGIN
        ),
        "phrase_copies": (f"<= {PHRASE_SONGS}", lambda value: value <= PHRASE_SONGS),
        "f1": (f">= {TEST_F1}", lambda value: value >= TEST_F1),
    }


def rows():
    """(key, label) of every row of the table, in order."""
    features = [(feature, label) for feature, (label, _) in music_metrics.FEATURES.items()]
    return [
        ("f1", "held-out reconstruction F1 (data: from profiles)"), ("f1_within_1_step", "  within a step"),
        ("precision", "  precision"), ("recall", "  recall"), ("training_f1", "training-song reconstruction F1"),
        ("training_f1_within_1_step", "  within a step"), ("kl_per_song", "KL per song (nats)"),
        ("active_units", "active latent units"),
        ("diversity", "diversity between songs"), ("mean_overlap", "mean overlapping area"),
        ("lowest_overlap", "lowest overlapping area"), ("lowest_feature", "  of"),
        *[(f"overlap_{feature}", f"  overlap: {label}") for feature, label in features],
        *[(f"mean_{feature}", f"  mean: {label}") for feature, label in features],
        ("silent_songs", "silent songs"),
        ("copied_measures", "measures replaying a training measure"), ("phrase_copies", "songs with a phrase copy"),
        ("best_validation_epoch", "best validation epoch"), ("epochs_after_best", "  epochs after it"),
        ("samples_per_s", "training samples/s"), ("minutes", "minutes of training epochs"),
        ("wall_minutes", "  minutes of the train command"),
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
            fixed = key in result.get("constructed", ())
            missed = test is not None and value is not None and not fixed and not test(value)
            cells.append(f"{number(value)}{'+' if fixed else '*' if missed else ' '}".rjust(width))
        lines.append(f"{label[:45]:46}{number(results['data'].get(key)):>9}{goal:>16}" + "".join(cells))
    lines.append(
        f"data: one half of the {results['split']} split against the other; * misses its target; + fixed by "
        f"construction (no win). {results['epochs']} epochs, {results['songs']} songs per configuration."
    )
    return "\n".join(lines)


def rate_distortion_table(results):
    """What the code carries against how good the new songs are, a configuration a row, as
    Markdown."""
    columns = [
        ("kl_per_song", "KL (nats)"), ("f1", f"{results['split']} F1"), ("f1_within_1_step", "within a step"),
        ("training_f1", "training F1"), ("mean_overlap", "mean overlap"), ("lowest_overlap", "lowest overlap"),
        ("lowest_feature", "of"), ("diversity", "diversity"), ("copied_measures", "copied measures"),
        ("phrase_copies", "phrase copies"), ("epochs", "epochs"), ("minutes", "minutes"),
        ("wall_minutes", "wall minutes"),
    ]
    lines = [
        "| | " + " | ".join(label for _, label in columns) + " |",
        "| --- |" + " ---: |" * len(columns),
        "| data | " + " | ".join(number(results["data"].get(key)) for key, _ in columns) + " |",
    ]
    for name, result in results["configs"].items():
        cells = []
        for key, _ in columns:
            value = result.get(key)
            cells.append(number(value) + (" +" if key in result.get("constructed", ()) else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def learning_curve_table(results, points=6):
    """How the reconstruction F1 of 64 training songs and 64 validation songs grew, epoch by
    epoch (train records both after every epoch), at ``points`` epochs of each configuration,
    as Markdown."""
    lines = ["| | epoch: training F1 / validation F1 |", "| --- | --- |"]
    for name, result in results["configs"].items():
        curve = {int(epoch): scores for epoch, scores in result.get("curve", {}).items()}
        if not curve:
            continue
        shown = sorted({round(len(curve) * (point + 1) / points) for point in range(points)} & set(curve))
        cells = ", ".join(f"{epoch}: {number(curve[epoch][0])} / {number(curve[epoch][1])}" for epoch in shown)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def number(value):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 10:
        return f"{value:.0f}"
    return f"{value:.3g}" if abs(value) >= 100 else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
