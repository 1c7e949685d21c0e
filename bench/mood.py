"""Whether a run's mood directions work: how well its code predicts each label, whether
steering along a direction changes the notes the way the label does in the labelled
pieces, with bootstrap intervals over the labelled files, and whether steered songs are
still music.

    python bench/mood.py --run RUN_DIR [--labels CSV] [--data MIDI_DIR] [--songs 64]
                         [--bootstraps 100] [--json FILE]

The labels default to VGMIDI's (../shared/midi/vgmidi_emotion.csv, the files in
../shared/midi/vgmidi); ``--labels key`` labels every file of --data by its own key instead
(major +1, minor -1), a control: a direction the code must hold if it knows the mode. The
directions are learned as ``music_generator.py moods`` learns them (music_vae/moods.py), with
--songs songs drawn from the run's density and --bootstraps resamplings of the labelled files,
and the run is left as it is (no moods.json written).
Prints, for each label column:

- the classifier: a logistic regression on the encoded windows, cross-validated by file (5
  folds, no file on both sides), its accuracy and balanced accuracy against always saying
  the majority class; and the median cosine between the directions of the bootstraps and
  the direction of all files (1: every resampling finds the same direction);
- the features (major-key share and mean pitch for valence, notes per measure and short
  onsets for arousal, all four for every label): of the -1 and +1 pieces and their
  difference, of the songs steered -2, -1, 0, +1, +2 standard deviations, and the change
  from -2 to +2, each difference with its 95% bootstrap interval; "moves" names the
  features steering changes beyond the interval the same way as the pieces differ;
- music: the mean overlapping area of the steered songs' features with the run's held-out
  songs (the evaluation's), their diversity, and silent songs, beside the unsteered (0).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from music_vae import music_metrics  # noqa: E402
from music_vae.dataset import read_sample, subset  # noqa: E402
from music_vae.moods import (  # noqa: E402
    AMOUNTS, BOOTSTRAPS, MOOD_FEATURES, OWN_FEATURES, STEERED_SONGS, feature_counts, features_of_counts,
    learn_directions, read_labels, steered_base,
)
from music_vae.samples import SkipFile, midi_to_samples  # noqa: E402
from music_vae.songs import decode  # noqa: E402
from music_vae.trained_run import TrainedRun  # noqa: E402

SHARED = REPO.parent / "shared" / "midi"
REAL_SONGS = 200  # held-out songs the steered songs are compared with
UNITS = {"major_share": 100, "mean_pitch": 1, "notes_per_measure": 1, "short_onsets": 100}  # shares in percent
HEADINGS = {"major_share": "major key (%)", "mean_pitch": "mean pitch (MIDI)", "notes_per_measure": "notes / measure",
            "short_onsets": "onsets <= a 16th apart (%)"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run trained on the labelled files' collection")
    parser.add_argument(
        "--labels", default=str(SHARED / "vgmidi_emotion.csv"),
        help="a labels CSV, or 'key': each file of --data labelled major +1 or minor -1 by its own notes, a control",
    )
    parser.add_argument("--data", default=str(SHARED / "vgmidi"), help="the folder of the labelled MIDI files")
    parser.add_argument("--songs", type=int, default=STEERED_SONGS, help="steered songs at each amount")
    parser.add_argument("--bootstraps", type=int, default=BOOTSTRAPS)
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args()

    trained = TrainedRun(args.run)
    files, labels = key_labels(args.data, trained.settings) if args.labels == "key" else read_labels(args.labels)
    seed = trained.config.seed
    base = steered_base(trained.density, seed, trained.config.temperature, args.songs)
    directions, report = learn_directions(
        trained.encoder, trained.decoder, base, trained.style.rule, files, labels, args.data, trained.settings, seed,
        args.bootstraps, progress=lambda text: None,
    )
    held_out = trained.data()
    real = [read_sample(path) for path in subset(held_out.test or held_out.validation, REAL_SONGS, seed)]
    print(f"Run {trained.run.path.name}; labels {args.labels}: {report['windows']} windows of "
          f"{len(files) - len(report['skipped'])} files ({len(report['skipped'])} give none); "
          f"{args.songs} steered songs, {args.bootstraps} bootstraps; note rule {trained.style.rule.method}\n")
    print(classifier_table(report["directions"]) + "\n")
    for name, direction in directions.items():
        music = {amount: music_metrics.compare(steered_songs(trained, direction.steer(base, amount)), real,
                                               trained.settings.lowest_pitch) for amount in AMOUNTS}
        report["directions"][name]["music"] = {
            str(amount): {"mean_overlap": values["mean_overlap"], "diversity": values["diversity"],
                          "silent_songs": len(values["silent_songs"])} for amount, values in music.items()
        }
        report["directions"][name]["music"]["data_diversity"] = music[0.0]["data_diversity"]
        print(feature_table(name, report["directions"][name]) + "\n")
    print(music_table(report["directions"]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"\nWrote {args.json}")


def key_labels(folder, settings):
    """Every MIDI file under ``folder`` labelled "major" +1 where most of its windows' notes are
    in a major key and -1 where most are in a minor one (moods.py's key): a label the notes
    themselves give, so that its direction shows whether the code knows the mode at all."""
    files, major = [], []
    for path in sorted(Path(folder).rglob("*.mid")):
        try:
            windows = midi_to_samples(path, settings).samples
        except (SkipFile, OSError):
            continue
        counts = feature_counts(windows, settings.lowest_pitch)
        files.append(str(path.relative_to(folder)))
        major.append(1.0 if features_of_counts(counts)["major_share"] > 0.5 else -1.0)
    return files, {"major": np.array(major)}


def steered_songs(trained, latents):
    """{name: notes} of the songs of ``latents``, by the run's note rule."""
    songs = {}
    for number, values in enumerate(decode(trained.decoder, latents)):
        kept, passing = trained.style.rule.apply(values)
        songs[f"song{number:03d}"] = (kept >= passing).astype(np.uint8)
    return songs


def classifier_table(directions):
    rows = [
        "| label | files +1 / -1 | windows +1 / -1 | accuracy | balanced accuracy | majority class "
        "| bootstrap cosine |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, values in directions.items():
        scores = values["classifier"]
        if scores is None:
            files = f"{values['files']['+1']} / {values['files']['-1']}"
            rows.append(f"| {name} | {files} | too few files on one side to cross-validate |")
            continue
        rows.append(
            f"| {name} | {values['files']['+1']} / {values['files']['-1']} | {values['windows']['+1']} / "
            f"{values['windows']['-1']} | {scores['accuracy']:.3f} | {scores['balanced_accuracy']:.3f} | "
            f"{scores['majority']:.3f} (balanced 0.500) | {values['effect']['cosine']:.2f} |"
        )
    return "\n".join(rows)


def feature_table(name, values):
    """One row a set of songs, one column a feature; shares in percent."""
    def cell(feature, value, interval=None):
        text = f"{value * UNITS[feature]:.2f}"
        if interval is not None:
            low, high = (bound * UNITS[feature] for bound in interval)
            text += f" [{low:.2f}, {high:.2f}]"
        return text

    heading = " | ".join(HEADINGS[feature] for feature in MOOD_FEATURES)
    own = ", ".join(OWN_FEATURES.get(name, MOOD_FEATURES))
    rows = [f"**{name}** (its features: {own}; moves: {', '.join(values['moves']) or 'none beyond its interval'})", "",
            f"| songs | {heading} |", "| --- |" + " --- |" * len(MOOD_FEATURES)]
    data, effect = values["data"], values["effect"]
    rows.append("| labelled -1 | " + " | ".join(cell(f, data["minus"][f]) for f in MOOD_FEATURES) + " |")
    rows.append("| labelled +1 | " + " | ".join(cell(f, data["plus"][f]) for f in MOOD_FEATURES) + " |")
    rows.append("| +1 minus -1 [95%] | " + " | ".join(
        cell(f, data["difference"][f], data["interval"][f]) for f in MOOD_FEATURES) + " |")
    for amount, features in values["steered"].items():
        cells = " | ".join(cell(f, features[f]) for f in MOOD_FEATURES)
        rows.append(f"| steered {float(amount):+.0f} sd | {cells} |")
    rows.append("| steered +2 minus -2 [95%] | " + " | ".join(
        cell(f, effect["change"][f], effect["interval"][f]) for f in MOOD_FEATURES) + " |")
    return "\n".join(rows)


def music_table(directions):
    amounts = [f"{amount:+.0f}" for amount in AMOUNTS]
    rows = ["Steered songs as music: mean overlap with the held-out songs' features / diversity / silent songs", "",
            "| label | " + " | ".join(amounts) + " | data diversity |", "| --- |" + " --- |" * (len(amounts) + 1)]
    for name, values in directions.items():
        music = values["music"]
        steered = [music[str(amount)] for amount in AMOUNTS]
        cells = [f"{one['mean_overlap']:.3f} / {one['diversity']:.3f} / {one['silent_songs']}" for one in steered]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {music['data_diversity']:.3f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
