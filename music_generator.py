"""Train the paper's stacked VAE on 16-measure samples, and generate songs with it.

    python music_generator.py train --data SAMPLES_DIR --run-name RUN01 --run-info "why"
    python music_generator.py train --resume RUN_DIR
    python music_generator.py generate --run RUN_DIR [--songs N] [--seed S]
    python music_generator.py evaluate --run RUN_DIR [--data SAMPLES_DIR] [--songs GLOB]
    python music_generator.py encode --run RUN_DIR SONG.mid [...] [--measure M]
    python music_generator.py reconstruct --run RUN_DIR SONG.mid [...] [--measure M]
    python music_generator.py interpolate --run RUN_DIR --from A.mid --to B.mid [--steps 8]
    python music_generator.py variations --run RUN_DIR SONG.mid [--songs 8] [--spread S]
    python music_generator.py explore --run RUN_DIR [--port 8000] [--host 127.0.0.1]

Each run gets its own folder: an info file, TensorBoard logs, the models, and songs decoded
from the same latent vectors after every epoch, as .npy, MIDI, piano-roll PNG and WAV, so
that progress can be heard on the same seeds, all shown on one HTML page. ``evaluate`` (run
at the end of training too) measures the songs against the data. This file is the command
line; the work is done in music_vae/ (README, "How the code is laid out").
"""

import argparse
import sys
from pathlib import Path

import numpy as np

try:
    from music_vae.dataset import find_samples
    from music_vae.evaluation import EVALUATION_SAMPLES, evaluate_songs, evaluation_table, find_songs, write_evaluation
    from music_vae.explore import (
        encode_command, explore_command, interpolate_command, reconstruct_command, variations_command,
    )
    from music_vae.explore_server import SLIDERS
    from music_vae.files import (
        ArgumentParser, UsageError, int_between, non_negative_float, positive_float, probability, share,
    )
    from music_vae.model import PRECISIONS
    from music_vae.run_page import write_run_page
    from music_vae.run_songs import RunSongs, song_list
    from music_vae.samples import PITCHES
    from music_vae.songs import fixed_noise
    from music_vae.settings import DEFAULTS
    from music_vae.training import train
except ImportError as error:
    if __name__ != "__main__":
        raise
    sys.exit(f"music_generator.py: error: {error}; install the requirements: pip install -r requirements.txt")


def generate(args):
    """The generate command: new songs from a run's decoder, into RUN_DIR/generated (or
    ``--output-dir``), and onto the run's page."""
    songs = RunSongs(args)
    seed = args.seed if args.seed is not None else int(np.random.default_rng().integers(2**31))
    noise = fixed_noise(args.songs, songs.decoder.input_shape[-1], seed)
    written = songs.write(songs.density.latents(noise, songs.parameters["temperature"]), "sample")
    print(f"{len(written)} songs with seed {seed} in {songs.folder}: {song_list(written)}")
    return 0


def evaluate(args):
    """The evaluate command: judge a run's songs and model against the data."""
    songs = RunSongs(args)
    run, state, parameters, settings = songs.run, songs.state, songs.parameters, songs.settings
    song_paths = find_songs(run.generated / "midi", args.songs)
    folder = state["data"]["folder"]
    data_paths = find_samples(args.data, settings.shape)[0] if args.data else None
    held_out = find_samples(args.validation, settings.shape)[0] if args.validation else None
    training = None  # where the run's data folder is gone, the table says that no song was compared with them
    if data_paths is None or held_out is None or Path(folder).is_dir():  # the run's own data, split as in training
        own = songs.data(needed_for="pass --data SAMPLES_DIR and --validation SAMPLES_DIR (held-out samples)")
        data_paths = own.training + own.validation + own.test if data_paths is None else data_paths
        held_out = (own.test or own.validation) if held_out is None else held_out
        training = own.training
    results = evaluate_songs(
        songs.encoder, songs.decoder, song_paths, data_paths=data_paths, held_out=held_out, training=training,
        rule=songs.style.rule, settings=settings, samples=args.samples, seed=parameters["seed"], data_folder=folder,
    )
    if not results["songs"]:
        raise UsageError(f"none of the {len(song_paths)} files that match {args.songs!r} is a readable MIDI file")
    results["compared"]["data_folder"] = str(Path(args.data or folder).resolve())
    state["evaluation"], _ = write_evaluation(run.path, results)
    run.save(state)
    write_run_page(run, state)
    print(f"Evaluation of {run.path.name}: " + evaluation_table(results))
    print(f"Wrote {run.path / 'evaluation.json'} and {run.path / 'evaluation.png'}")
    return 0


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    # The options of train default to None, so that --resume knows which were given; their
    # defaults are settings.DEFAULTS.
    def option(group, flag, help, **kwargs):
        default = DEFAULTS[flag[2:].replace("-", "_")]
        if default is not None and default is not False and default != "":  # 0 is a default to show
            help += f" (default: {'on' if default is True else default})"
        group.add_argument(flag, default=None, help=help, **kwargs)

    train_parser = commands.add_parser(
        "train",
        help="train a VAE and write a run folder",
        description="Train the paper's VAE on a folder of samples; every run gets its own folder with songs after "
        "every epoch.",
    )
    group = train_parser.add_argument_group("data and run")
    option(
        group, "--data", "folder of .npy samples made by data_loader.py (searched recursively)", metavar="SAMPLES_DIR"
    )
    option(group, "--run-name", "name of the run; its folder is <output-dir>/<YYYYMMDDHHMMSS>_<run-name>")
    option(group, "--run-info", "why this run: written at the top of its info file")
    option(group, "--output-dir", "where run folders go")
    option(
        group, "--preset", "paper: the paper's settings (squared error, --lr 0.01, --batch-size 1, KL weight 1 "
        "throughout, songs from the prior, each song's strongest cells as notes) for every option not given",
        choices=("paper",),
    )
    group.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a stopped run from its last completed epoch, "
        "with its own parameters; --epochs, --batch-size and a few more may change, as a note says",
    )
    group = train_parser.add_argument_group("model (paper, section 4.1)")
    option(group, "--measure-hidden", "hidden units of the measure encoder and decoder", type=int_between(1))
    option(group, "--measure-features", "features per measure", type=int_between(1))
    option(group, "--song-hidden", "hidden units of the song VAE", type=int_between(1))
    option(group, "--latent", "latent dimensions", type=int_between(1))
    option(group, "--kl-weight", "weight of the KL term in the loss", type=non_negative_float)
    option(
        group, "--kl-warmup", "epochs over which the KL weight rises from 0 to --kl-weight at the start",
        type=int_between(0),
    )
    option(
        group, "--kl-cycle", "a cyclical KL weight: rising from 0 over the first half of every this many epochs",
        type=int_between(0),
    )
    option(
        group, "--free-bits", "bits of KL per song that cost nothing (MusicVAE's free bits)", type=non_negative_float
    )
    option(group, "--dropout", "share of hidden units dropped in training, after every hidden layer", type=share)
    option(
        group, "--pitch-step-terms", "the measure encoder also reads each measure's notes per pitch and per step, "
        "and the measure decoder adds a term per pitch and per step to every cell's logit",
        action=argparse.BooleanOptionalAction,
    )
    option(
        group, "--latent-batch-norm",
        "batch-normalise the latent means to this spread (a BN-VAE: a floor on the KL); 0: none",
        type=non_negative_float, metavar="SCALE",
    )
    option(
        group, "--reconstruction",
        "reconstruction loss summed over the song: squared error (the paper) or binary cross-entropy",
        choices=("mse", "bce"),
    )
    option(
        group, "--note-weight", "weight of the note cells in the reconstruction loss against the silent ones",
        type=positive_float,
    )
    group = train_parser.add_argument_group("training (paper, section 3.4)")
    option(group, "--epochs", "epochs to train", type=int_between(1))
    option(group, "--batch-size", "samples per step", type=int_between(1))
    option(group, "--lr", "Adam's learning rate", type=positive_float)
    option(group, "--validation-split", "share of the songs held out for validation", type=share)
    option(
        group, "--test-split", "share of the songs held out for testing: the evaluation's held-out songs",
        type=share,
    )
    option(group, "--seed", "seed of the weights, the data order and the songs' latent vectors", type=int_between(0))
    option(
        group, "--transpose", "move each training song by up to this many semitones up or down, anew every epoch",
        type=int_between(0, 48),
    )
    option(
        group, "--random-start",
        "start each training song at a measure drawn anew every epoch, running on into the file's next sample",
        action=argparse.BooleanOptionalAction,
    )
    option(
        group,
        "--cache",
        "keep all samples in memory, bit-packed (18 KB each), when they fit in half of it; "
        "by default one batch at a time is read from disk",
        action="store_true",
    )
    option(
        group, "--precision", "compute precision: mixed bfloat16 or float16 keep the weights and the loss in float32",
        choices=tuple(PRECISIONS),
    )
    option(
        group, "--jit",
        "compile each step with XLA (default: where that is faster: with JAX, and with TensorFlow on a GPU)",
        action=argparse.BooleanOptionalAction,
    )
    option(group, "--log-every", "batches between per-batch TensorBoard points", type=int_between(1))
    group = train_parser.add_argument_group("several devices and machines (README, \"Training on several GPUs\")")
    option(
        group, "--distribute",
        "data-parallel: spread every batch over the devices, each with a copy of the model (JAX or TensorFlow); "
        "several machines join through the KERAS_DISTRIBUTION_* environment variables (JAX)",
        choices=("none", "data-parallel"),
    )
    option(
        group, "--devices", "with --distribute data-parallel: how many of this machine's GPUs (else CPUs) to use "
        "(default: all)", type=int_between(1),
    )
    group = train_parser.add_argument_group("songs")
    option(
        group, "--songs-per-epoch", "songs written after every epoch, from the same latent vectors each time",
        type=int_between(0),
    )
    option(group, "--songs", "songs written at the end", type=int_between(0))
    add_song_options(group, DEFAULTS)
    train_parser.set_defaults(run_command=train)

    generate_parser = commands.add_parser(
        "generate", help="write new songs with a trained run's decoder",
        description="Decode random latent vectors with a run's decoder into .npy, MIDI, PNG and WAV songs.",
    )
    add = generate_parser.add_argument
    add("--run", required=True, metavar="RUN_DIR", help="a run folder made by train")
    add("--songs", type=int_between(1), default=DEFAULTS["songs"], help="songs to write (default: %(default)s)")
    add(
        "--seed", type=int_between(0), default=None,
        help="seed of the latent vectors; the same seed gives the same songs (default: a new one, printed)",
    )
    add("--output-dir", help="folder for npy/, midi/, img/ and wav/ (default: RUN_DIR/generated)")
    add_song_options(generate_parser)
    generate_parser.set_defaults(run_command=generate, audio=True)

    evaluate_parser = commands.add_parser(
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
    evaluate_parser.set_defaults(run_command=evaluate, audio=False, output_dir=None)

    def latent_parser(name, help, description, output, measure=1):
        """A command that places MIDI files in a run's latent space, with its shared options."""
        latent = commands.add_parser(name, help=help, description=description)
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
    encode_parser.set_defaults(run_command=encode_command)
    reconstruct_parser = latent_parser(
        "reconstruct", "rebuild MIDI files with a run's model, and say how much of each it keeps",
        "Encode 16 measures of each MIDI file with a run's encoder and decode its latent mean; write the measures "
        "as NAME_original and the rebuild as NAME_reconstruction (npy, MIDI, PNG, WAV), and print the note "
        "precision, recall and F1 of the rebuild, exact and within a step.", "RUN_DIR/generated", measure=None,
    )
    reconstruct_parser.add_argument("midi", nargs="+", metavar="SONG.mid", help="MIDI files")
    add_song_options(reconstruct_parser)
    reconstruct_parser.set_defaults(run_command=reconstruct_command, audio=True)
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
    interpolate_parser.set_defaults(run_command=interpolate_command, audio=True)
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
    variations_parser.set_defaults(run_command=variations_command, audio=True)
    explore_parser = commands.add_parser(
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
    explore_parser.set_defaults(run_command=explore_command, audio=False, output_dir=None)
    return parser.parse_args(argv)


def add_song_options(parser, defaults=None):
    """The options of how songs are made and written, shared by train and generate; all
    default to None, their defaults (``defaults``, else the run's) said in the help."""

    def add(flag, help, **kwargs):
        default = defaults[flag[2:].replace("-", "_")] if defaults else "the run's"
        default = "none" if default is None else default
        parser.add_argument(flag, default=None, help=f"{help} (default: {default})", **kwargs)

    add(
        "--sample-from", "draw the songs' latent vectors from the prior N(0, I), or from a Gaussian fitted to the "
        "encoded training songs after every epoch", choices=("prior", "data"),
    )
    add("--temperature", "scale of the songs' distance from the density's mean", type=positive_float)
    add(
        "--note-rule", "which cells are notes: each song's strongest, as many as the average training sample has "
        "(per-song); those above one threshold for all songs, calibrated so that songs have that many on average "
        "(calibrated); or each measure's strongest, as many as its values sum to: the notes the decoder expects there "
        "(expected)",
        choices=("per-song", "calibrated", "expected"),
    )
    add(
        "--threshold", "notes are the cells at or above this value, in place of --note-rule", type=probability,
    )
    add(
        "--max-pitches-per-step", "only the strongest this many pitches of a step can be notes; 0: no cap",
        type=int_between(0, PITCHES),
    )
    add("--bpm", "tempo of the MIDI files in quarter notes per minute", type=positive_float)
    parser.add_argument(
        "--audio", action=argparse.BooleanOptionalAction, default=None,
        help="render every song as a WAV file too, with FluidSynth where installed, else with sine waves (default: on)",
    )
    parser.add_argument(
        "--soundfont", metavar="SF2",
        help="SoundFont for FluidSynth (default: the General MIDI one installed, e.g. Debian's fluid-soundfont-gm)",
    )


def main(argv=None):
    args = parse_args(argv)
    try:
        return args.run_command(args)
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


def is_out_of_memory(error):
    """Each backend says it its own way: MemoryError, ResourceExhaustedError (TensorFlow),
    RESOURCE_EXHAUSTED (JAX/XLA), OutOfMemoryError (PyTorch)."""
    text = f"{type(error).__name__} {error}"
    words = ("ResourceExhausted", "RESOURCE_EXHAUSTED", "OutOfMemory", "out of memory")
    return isinstance(error, MemoryError) or any(word in text for word in words)


if __name__ == "__main__":
    sys.exit(main())
