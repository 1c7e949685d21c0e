"""Train the paper's stacked VAE on 16-measure samples, and generate songs with it.

    python music_generator.py train --data SAMPLES_DIR --run-name RUN01 --run-info "why"
    python music_generator.py train --resume RUN_DIR
    python music_generator.py generate --run RUN_DIR [--songs N] [--seed S] [--valence V] [--mood NAME=V]
    python music_generator.py moods --run RUN_DIR --labels LABELS.csv [--data MIDI_DIR]
    python music_generator.py evaluate --run RUN_DIR [--data SAMPLES_DIR] [--songs GLOB]
    python music_generator.py encode --run RUN_DIR SONG.mid [...] [--measure M]
    python music_generator.py reconstruct --run RUN_DIR SONG.mid [...] [--measure M]
    python music_generator.py interpolate --run RUN_DIR --from A.mid --to B.mid [--steps 8]
    python music_generator.py variations --run RUN_DIR SONG.mid [--songs 8] [--spread S]
    python music_generator.py explore --run RUN_DIR [--port 8000] [--host 127.0.0.1]
    python music_generator.py export --run RUN_DIR [--output-dir DIR] [--weights float32|float16|int8]

Each run gets its own folder: an info file, TensorBoard logs, the models, and songs decoded
from the same latent vectors after every epoch, as .npy, MIDI, piano-roll PNG and WAV, so
that progress can be heard on the same seeds, all shown on one HTML page. ``evaluate`` (run
at the end of training too) measures the songs against the data. This file is the command
line: its parser, and ``main``, which calls the command (music_vae/training.py,
music_vae/commands.py; docs/cli.md has every option).
"""

import sys

try:
    from music_vae import commands
    from music_vae.audio import song_synthesizer
    from music_vae.config import (
        RUN_GROUP, TrainConfig, add_song_options, add_train_options, given_options, song_option_names,
    )
    from music_vae.evaluation import EVALUATION_SAMPLES
    from music_vae.explore_server import SLIDERS
    from music_vae.moods import BOOTSTRAPS
    from music_vae.files import ArgumentParser, UsageError, int_between, mood_setting, positive_float, steering
    from music_vae.portable import WEIGHTS
    from music_vae.training import train
except ImportError as error:
    if __name__ != "__main__":
        raise
    sys.exit(f"music_generator.py: error: {error}; install the requirements: pip install -r requirements.txt")


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    subcommands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    train_parser = subcommands.add_parser(
        "train",
        help="train a VAE and write a run folder",
        description="Train the paper's VAE on a folder of samples; every run gets its own folder with songs after "
        "every epoch.",
    )
    groups = add_train_options(train_parser)
    groups[RUN_GROUP].add_argument(
        "--resume", metavar="RUN_DIR",
        help="continue a stopped run from its last completed epoch, with its own parameters; --epochs, "
        "--batch-size and a few more may change, as a note says",
    )

    generate_parser = subcommands.add_parser(
        "generate", help="write new songs with a trained run's decoder",
        description="Decode random latent vectors with a run's decoder into .npy, MIDI, PNG and WAV songs.",
    )
    add = generate_parser.add_argument
    add("--run", required=True, metavar="RUN_DIR", help="a run folder made by train")
    add("--songs", type=int_between(1), default=TrainConfig.songs, help="songs to write (default: %(default)s)")
    add(
        "--seed", type=int_between(0), default=None,
        help="seed of the latent vectors; the same seed gives the same songs (default: a new one, printed)",
    )
    add("--output-dir", help="folder for npy/, midi/, img/ and wav/ (default: RUN_DIR/generated)")
    for name, sense in (("valence", "happier (+) or sadder (-)"), ("arousal", "more intense (+) or calmer (-)")):
        add(
            f"--{name}", type=steering, metavar="V",
            help=f"{sense}: V standard deviations along the run's {name} direction (learned by moods)",
        )
    add(
        "--mood", type=mood_setting, action="append", default=[], metavar="NAME=V",
        help="V standard deviations along the run's direction NAME (one of the label columns moods learned); "
        "may be given once for each direction",
    )
    add_song_options(generate_parser)

    moods_parser = subcommands.add_parser(
        "moods", help="learn directions of mood in a run's latent space from labelled MIDI files",
        description="Encode the 16-measure windows of labelled MIDI files with a run's encoder and save, for each "
        "label column, the direction from the mean code of its -1 windows to that of its +1 windows, with how "
        "reliable it is: how well the code predicts the label (cross-validated by file), and whether steering "
        "along it changes the notes as the label does in the files (bootstrap intervals). Writes RUN_DIR/moods.json "
        "for generate --valence/--arousal/--mood and the explore page.",
    )
    add = moods_parser.add_argument
    add("--run", required=True, metavar="RUN_DIR", help="a run folder made by train")
    add(
        "--labels", required=True, metavar="LABELS.csv",
        help="a CSV file with a 'file' column (MIDI files, relative to --data) and label columns of +1, -1 or empty, "
        "such as VGMIDI's valence and arousal",
    )
    add("--data", metavar="MIDI_DIR", help="the folder of the labelled MIDI files (default: the CSV file's folder)")
    add(
        "--bootstraps", type=int_between(10, 10000), default=BOOTSTRAPS,
        help="resamplings of the labelled files for the intervals (default: %(default)s)",
    )

    evaluate_parser = subcommands.add_parser(
        "evaluate",
        help="judge a run's songs and model against the data",
        description="Compare a run's generated songs with the data (music features, their overlap, diversity) "
        "and with the nearest of its training samples (originality), count the model's active latent units and "
        "score its reconstructions; writes RUN_DIR/evaluation.json and evaluation.png.",
    )
    add = evaluate_parser.add_argument
    add("--run", required=True, metavar="RUN_DIR", help="a run folder made by train")
    add("--data", metavar="SAMPLES_DIR", help="samples to compare the songs with (default: the run's own data folder)")
    add(
        "--songs", default="final_*.mid", metavar="GLOB",
        help="MIDI files to judge, matched in RUN_DIR/generated/midi unless absolute (default: %(default)s)",
    )
    add(
        "--validation", metavar="SAMPLES_DIR",
        help="held-out samples to reconstruct, and to judge originality against "
        "(default: the run's test split, or its validation split where it has none)",
    )
    add(
        "--samples", type=int_between(1), default=EVALUATION_SAMPLES,
        help="data and held-out samples used at most, drawn at random (default: %(default)s)",
    )

    def latent_parser(name, help, description, output, measure=1):
        """A command that places MIDI files in a run's latent space, with its shared options."""
        latent = subcommands.add_parser(name, help=help, description=description)
        latent.add_argument("--run", required=True, metavar="RUN_DIR", help="a run folder made by train")
        first = "the file's first sample, as data_loader.py cuts it" if measure is None else measure
        latent.add_argument(
            "--measure", type=int_between(1), default=measure,
            help=f"the songs start at this measure, a pickup bar counted (default: {first})",
        )
        latent.add_argument("--output-dir", help=f"where to write (default: {output})")
        return latent

    encode_parser = latent_parser(
        "encode", "save the latent means of MIDI files",
        "Encode the first 16 measures of each MIDI file (from --measure) with a run's encoder, and save its latent "
        "mean as NAME.npy.", "RUN_DIR/encoded",
    )
    encode_parser.add_argument("midi", nargs="+", metavar="SONG.mid", help="MIDI files")
    reconstruct_parser = latent_parser(
        "reconstruct", "rebuild MIDI files with a run's model, and say how much of each it keeps",
        "Encode 16 measures of each MIDI file with a run's encoder and decode its latent mean; write the measures "
        "as NAME_original and the rebuild as NAME_reconstruction (npy, MIDI, PNG, WAV), and print the note "
        "precision, recall and F1 of the rebuild, exact and within a step.", "RUN_DIR/generated", measure=None,
    )
    reconstruct_parser.add_argument("midi", nargs="+", metavar="SONG.mid", help="MIDI files")
    add_song_options(reconstruct_parser)
    interpolate_parser = latent_parser(
        "interpolate", "write songs along the path between two MIDI files",
        "Decode points along the great circle between the latent means of two MIDI files (as MusicVAE "
        "interpolates), their reconstructions at the ends, into songs interpolation_songNN.", "RUN_DIR/generated",
    )
    interpolate_parser.add_argument("--from", dest="start", required=True, metavar="A.mid", help="the first song")
    interpolate_parser.add_argument("--to", dest="end", required=True, metavar="B.mid", help="the last song")
    interpolate_parser.add_argument(
        "--steps", type=int_between(2, 100), default=8,
        help="songs along the path, ends included (default: %(default)s)",
    )
    add_song_options(interpolate_parser)
    variations_parser = latent_parser(
        "variations", "write songs around a MIDI file",
        "Decode latent vectors drawn around a MIDI file's latent mean into songs variation_songNN.",
        "RUN_DIR/generated",
    )
    variations_parser.add_argument("midi", metavar="SONG.mid", help="the song to vary")
    variations_parser.add_argument(
        "--songs", type=int_between(1), default=8, help="variations to write (default: %(default)s)"
    )
    variations_parser.add_argument(
        "--spread", type=positive_float, default=0.25,
        help="how far from the song: 1 is as far as the run's songs lie from their mean (default: %(default)s)",
    )
    variations_parser.add_argument(
        "--seed", type=int_between(0), default=None, help="seed of the variations (default: a new one, printed)"
    )
    add_song_options(variations_parser)
    explore_parser = subcommands.add_parser(
        "explore", help="move through a run's songs with sliders in the browser",
        description="Serve a page where sliders move a song along the principal components of the encoded "
        "training songs; it draws and plays the song, and opens and saves MIDI files.",
    )
    explore_parser.add_argument("--run", required=True, metavar="RUN_DIR", help="a run folder made by train")
    explore_parser.add_argument("--host", default="127.0.0.1", help="address to serve at (default: %(default)s)")
    explore_parser.add_argument(
        "--port", type=int_between(0, 65535), default=8000,
        help="port to serve at; 0: any free one (default: %(default)s)",
    )
    explore_parser.add_argument(
        "--sliders", type=int_between(1, 120), default=SLIDERS, help="principal components shown (default: %(default)s)"
    )
    export_parser = subcommands.add_parser(
        "export", help="write a run's decoder and explore page as a folder that plays without Python",
        description="Write RUN_DIR/export: the run's decoder as ONNX (decoder.onnx), what turns slider positions "
        "into a song (song_space.json), and the explore page as static files that decode in the browser with "
        "onnxruntime-web; any static web server serves it. Needs pip install -r requirements-export.txt.",
    )
    export_parser.add_argument("--run", required=True, metavar="RUN_DIR", help="a run folder made by train")
    export_parser.add_argument("--output-dir", metavar="DIR", help="the folder to write (default: RUN_DIR/export)")
    export_parser.add_argument(
        "--weights", choices=WEIGHTS, default="float32",
        help="how decoder.onnx stores its weights: float16 halves the download, int8 quarters it, each changing "
        "a few notes (the export says how many) (default: %(default)s)",
    )
    export_parser.add_argument(
        "--sliders", type=int_between(1, 120), default=SLIDERS, help="principal components shown (default: %(default)s)"
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        return run_command(args)
    except UsageError as error:
        print(f"music_generator.py: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before training began, or in generate or evaluate
        print("music_generator.py: interrupted", file=sys.stderr)
        return 130
    except OSError as error:  # a full disk: the last completed epoch's files are intact
        where = f" ({error.filename})" if error.filename else ""
        print(f"music_generator.py: error: {error.strerror or error}{where}", file=sys.stderr)
        return 1
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        print(
            f"music_generator.py: error: out of memory ({type(error).__name__}); try a smaller --batch-size",
            file=sys.stderr,
        )
        return 1


def run_command(args):
    """Call the command that ``args`` (parsed) names, with its arguments. Returns the exit code."""
    if args.command == "train":
        return train(given_options(args), resume=args.resume)
    if args.command == "evaluate":
        return commands.evaluate(args.run, args.data, args.validation, args.songs, args.samples)
    if args.command == "encode":
        return commands.encode(args.run, args.midi, args.measure, args.output_dir)
    if args.command == "explore":
        return commands.explore(args.run, args.host, args.port, args.sliders)
    if args.command == "export":
        return commands.export(args.run, args.output_dir, args.weights, args.sliders)
    if args.command == "moods":
        return commands.moods(args.run, args.labels, args.data, args.bootstraps)
    writing = dict(
        output_dir=args.output_dir,
        song_options={name: getattr(args, name) for name in song_option_names()},
        synthesizer=song_synthesizer(args.audio is not False, args.soundfont),
    )
    if args.command == "generate":
        return commands.generate(args.run, args.songs, args.seed, steering=steering_of(args), **writing)
    if args.command == "reconstruct":
        return commands.reconstruct(args.run, args.midi, args.measure, **writing)
    if args.command == "interpolate":
        return commands.interpolate(args.run, args.start, args.end, args.steps, args.measure, **writing)
    if args.command == "variations":
        return commands.variations(args.run, args.midi, args.songs, args.spread, args.seed, args.measure, **writing)
    raise ValueError(f"no command {args.command!r}")  # parse_args knows only the commands above


def steering_of(args):
    """generate's --valence, --arousal and --mood NAME=V as {name: standard deviations}."""
    amounts = {name: getattr(args, name) for name in ("valence", "arousal") if getattr(args, name) is not None}
    for name, amount in args.mood:
        if name in amounts:
            raise UsageError(f"the {name} direction is given twice")
        amounts[name] = amount
    return amounts


def is_out_of_memory(error):
    """Each backend says it its own way: MemoryError, ResourceExhaustedError (TensorFlow),
    RESOURCE_EXHAUSTED (JAX/XLA), OutOfMemoryError (PyTorch)."""
    text = f"{type(error).__name__} {error}"
    words = ("ResourceExhausted", "RESOURCE_EXHAUSTED", "OutOfMemory", "out of memory")
    return isinstance(error, MemoryError) or any(word in text for word in words)


if __name__ == "__main__":
    sys.exit(main())
