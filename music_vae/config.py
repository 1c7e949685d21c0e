"""train's options as one dataclass, TrainConfig: each field is an option, with its default,
its help, its group on ``train --help``, the paper's value (``--preset paper``), whether a
resumed run may change it, whether it says how songs are made (``generate`` and the other
commands on a finished run may change those), and what a run made before the option existed
did. The command line, ``--preset paper``, ``--resume``, the info file and the run page are
all made from these fields.

A run records its config, every option's value, as its state's ``parameters``; the bench's
check that two runs were trained alike compares those and the code that turns them into a
model (training.py and the modules it uses, see run_folder.code_version), not this module.
"""

import argparse
import dataclasses

from music_vae.dataset import SEED
from music_vae.files import fraction, int_between, non_negative_float, positive_float, probability
from music_vae.model import PRECISIONS, ModelConfig
from music_vae.samples import DEFAULT_BPM, PITCHES

RUN_GROUP, MODEL_GROUP, TRAINING_GROUP, DEVICES_GROUP, SONGS_GROUP = (
    "data and run", "model (paper, section 4.1)", "training (paper, section 3.4)",
    "several devices and machines (docs/distributed.md)", "songs",
)
PAPER_MODEL = ModelConfig()  # the model's sizes and loss in the paper


def option(default, help, group, paper=dataclasses.MISSING, before=dataclasses.MISSING, resume=False, song=False,
           session=False, page=False, **argument):
    """A field of TrainConfig: the option ``--NAME`` (NAME the field's, dashed).

    Parameters
    ----------
    default : object
        The value where the option is not given.
    help, group : str
        Its help text and its group on ``train --help``.
    paper : object, optional
        Its value under ``--preset paper`` (where not given: ``default``).
    before : object, optional
        What a run made before the option existed did (where not given: ``default``).
    resume : bool
        Whether ``--resume`` may change it: how long and how fast a run trains, where its
        data now are, what it logs and how many songs it writes. The rest would make it
        another run.
    song : bool
        Whether it says how a run's songs are drawn and written: the commands on a finished
        run take it from the run unless given.
    session : bool
        Whether each session's command line decides it (its default where not given), never
        the run: how songs sound is the business of the machine a session runs on (its
        FluidSynth and SoundFont files).
    page : bool
        Whether the run page lists it; the info file lists them all.
    **argument
        argparse's ``type``, ``choices``, ``metavar`` or ``action``.
    """
    metadata = dict(help=help, group=group, resume=resume, song=song, session=session, page=page, argument=argument)
    if paper is not dataclasses.MISSING:
        metadata["paper"] = paper
    if before is not dataclasses.MISSING:
        metadata["before"] = before
    return dataclasses.field(default=default, metadata=metadata)


def model_option(name, help, default=dataclasses.MISSING, page=False, before=dataclasses.MISSING, **argument):
    """A field of TrainConfig that is one of ModelConfig's: the paper's value is ModelConfig's
    default, and so is ``default`` unless given."""
    paper = getattr(PAPER_MODEL, name)
    default = paper if default is dataclasses.MISSING else default
    return option(default, help, MODEL_GROUP, paper=paper, before=before, page=page, **argument)


# The defaults: the model's sizes are the paper's (section 4.1); how it learns and how its
# songs are made won bench/music_quality.py (docs/quality.md).
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every option of train, its value for one run."""

    # data and run
    data: str | None = option(
        None, "folder of .npy samples made by data_loader.py (searched recursively)", RUN_GROUP, resume=True, page=True,
        metavar="SAMPLES_DIR",
    )
    run_name: str = option("RUN", "name of the run; its folder is <output-dir>/<YYYYMMDDHHMMSS>_<run-name>", RUN_GROUP)
    run_info: str = option("", "why this run: written at the top of its info file", RUN_GROUP)
    output_dir: str = option("runs", "where run folders go", RUN_GROUP)
    preset: str | None = option(
        None, "paper: the paper's settings (sections 3.4 and 4.1; its note rule, \"a certain threshold\", is "
        "unstated: each song's strongest cells stand in for it) for every option not given:", RUN_GROUP, page=True,
        choices=("paper",),
    )
    # model
    measure_hidden: int = model_option("measure_hidden", "hidden units of the measure encoder and decoder",
                                       type=int_between(1))
    measure_features: int = model_option("measure_features", "features per measure", type=int_between(1))
    song_hidden: int = model_option("song_hidden", "hidden units of the song VAE", type=int_between(1))
    latent: int = model_option("latent", "latent dimensions", page=True, type=int_between(1))
    kl_weight: float = model_option("kl_weight", "weight of the KL term in the loss", page=True,
                                    type=non_negative_float)
    kl_warmup: int = model_option(
        "kl_warmup", "epochs over which the KL weight rises from 0 to --kl-weight at the start", type=int_between(0)
    )
    # with free bits: about twice the KL in the code, and a lower validation loss
    kl_cycle: int = model_option(
        "kl_cycle", "a cyclical KL weight: rising from 0 over the first half of every this many epochs", default=4,
        before=0, type=int_between(0),
    )
    # room for the song: 16 -> KL 15 nats, F1 0.05; 256 -> 171, 0.27; 1024 -> 554, 0.29
    free_bits: float = model_option(
        "free_bits", "bits of KL per song that cost nothing (MusicVAE's free bits)", default=1024.0, before=0.0,
        page=True, type=non_negative_float,
    )
    dropout: float = model_option(
        "dropout", "share of hidden units dropped in training, after every hidden layer", type=fraction
    )
    # the measure layers learn "these pitches, on these steps" at once
    pitch_step_terms: bool = model_option(
        "pitch_step_terms", "the measure encoder also reads each measure's notes per pitch and per step, and the "
        "measure decoder adds a term per pitch and per step to every cell's logit", default=True, before=False,
        page=True, action=argparse.BooleanOptionalAction,
    )
    # every latent unit active; the features' mean overlap with the data 0.70 -> 0.76
    latent_batch_norm: float = model_option(
        "latent_batch_norm", "batch-normalise the latent means to this spread (a BN-VAE: a floor on the KL); 0: none",
        default=0.5, before=0.0, type=non_negative_float, metavar="SCALE",
    )
    # the paper's squared error lets the decoder settle on one average song
    reconstruction: str = model_option(
        "reconstruction", "reconstruction loss summed over the song: squared error (the paper) or binary "
        "cross-entropy", default="bce", page=True, choices=("mse", "bce"),
    )
    note_weight: float = model_option(
        "note_weight", "weight of the note cells in the reconstruction loss against the silent ones",
        type=positive_float,
    )
    # training
    epochs: int = option(  # 30 minutes in mixed bfloat16 on vgmidi on a 2-core CPU, the budget of issue 22
        100, "epochs to train", TRAINING_GROUP, resume=True, page=True, type=int_between(1)
    )
    batch_size: int = option(
        64, "samples per step", TRAINING_GROUP, paper=1, resume=True, page=True, type=int_between(1)
    )
    lr: float = option(0.001, "Adam's learning rate", TRAINING_GROUP, paper=0.01, page=True, type=positive_float)
    validation_split: float = option(0.1, "share of the songs held out for validation", TRAINING_GROUP, type=fraction)
    # held out for the figures a run reports, which nothing is tuned on
    test_split: float = option(
        0.1, "share of the songs held out for testing: the evaluation's held-out songs", TRAINING_GROUP, before=0.0,
        type=fraction,
    )
    seed: int = option(
        SEED, "seed of the weights, the data order and the songs' latent vectors", TRAINING_GROUP, page=True,
        type=int_between(0),
    )
    transpose: int = option(
        6, "move each training song by up to this many semitones up or down, anew every epoch", TRAINING_GROUP, paper=0,
        before=0, page=True, type=int_between(0, 48),
    )
    # a first measure drawn anew every epoch: 5% repeated measures in the songs, as in the data
    random_start: bool = option(
        True, "start each training song at a measure drawn anew every epoch, running on into the file's next sample",
        TRAINING_GROUP, paper=False, before=False, page=True, action=argparse.BooleanOptionalAction,
    )
    cache: bool = option(
        False, "keep all samples in memory, bit-packed (18 KB each), when they fit in half of it; by default one "
        "batch at a time is read from disk", TRAINING_GROUP, resume=True, action="store_true",
    )
    precision: str = option(
        "float32", "compute precision: mixed bfloat16 or float16 keep the weights and the loss in float32",
        TRAINING_GROUP, paper="float32", page=True, choices=tuple(PRECISIONS),
    )
    jit: bool | None = option(  # None: where XLA is faster, see model.default_jit
        None, "compile each step with XLA (default: where that is faster: with JAX, and with TensorFlow on a GPU)",
        TRAINING_GROUP, resume=True, action=argparse.BooleanOptionalAction,
    )
    log_every: int = option(
        100, "batches between per-batch TensorBoard points", TRAINING_GROUP, resume=True, type=int_between(1)
    )
    # several devices
    distribute: str = option(
        "none", "data-parallel: spread every batch over the devices, each with a copy of the model (JAX or "
        "TensorFlow); several machines join through the KERAS_DISTRIBUTION_* environment variables (JAX)",
        DEVICES_GROUP, resume=True, choices=("none", "data-parallel"),
    )
    devices: int | None = option(
        None, "with --distribute data-parallel: how many of this machine's GPUs (else CPUs) to use (default: all)",
        DEVICES_GROUP, resume=True, type=int_between(1),
    )
    # songs
    songs_per_epoch: int = option(
        3, "songs written after every epoch, from the same latent vectors each time", SONGS_GROUP, resume=True,
        type=int_between(0),
    )
    songs: int = option(10, "songs written at the end", SONGS_GROUP, resume=True, type=int_between(0))
    sample_from: str = option(
        "data", "draw the songs' latent vectors from the prior N(0, I), or from a Gaussian fitted to the encoded "
        "training songs after every epoch", SONGS_GROUP, paper="prior", before="prior", resume=True, song=True,
        page=True, choices=("prior", "data"),
    )
    temperature: float = option(
        1.0, "scale of the songs' distance from the density's mean", SONGS_GROUP, paper=1.0, resume=True, song=True,
        type=positive_float,
    )
    note_rule: str = option(
        "expected", "which cells are notes: each song's strongest, as many as the average training sample has "
        "(per-song); those above one threshold for all songs, calibrated so that songs have that many on average "
        "(calibrated); or each measure's strongest, as many as its values sum to: the notes the decoder expects "
        "there (expected)", SONGS_GROUP, paper="per-song", before="per-song", resume=True, song=True, page=True,
        choices=("per-song", "calibrated", "expected"),
    )
    threshold: float | None = option(
        None, "notes are the cells at or above this value, in place of --note-rule", SONGS_GROUP, paper=None, song=True,
        page=True, type=probability,
    )
    max_pitches_per_step: int = option(
        3, "only the strongest this many pitches of a step can be notes; 0: no cap", SONGS_GROUP, paper=0, before=0,
        resume=True, song=True, page=True, type=int_between(0, PITCHES),
    )
    bpm: float = option(
        DEFAULT_BPM, "tempo of the MIDI files in quarter notes per minute", SONGS_GROUP, song=True, page=True,
        type=positive_float,
    )
    audio: bool = option(
        True, "render every song as a WAV file too, with FluidSynth where installed, else with sine waves", SONGS_GROUP,
        session=True, action=argparse.BooleanOptionalAction,
    )
    soundfont: str | None = option(
        None, "SoundFont for FluidSynth (default: the General MIDI one installed, e.g. Debian's fluid-soundfont-gm)",
        SONGS_GROUP, session=True, metavar="SF2",
    )

    @classmethod
    def new(cls, given):
        """The config of a new run: the options ``given`` (a dict; None: not given), each
        other one its preset's value, else its default."""
        paper = given.get("preset") == "paper"
        values = {}
        for field in dataclasses.fields(cls):
            value = given.get(field.name)
            if value is None:
                value = field.metadata["paper"] if paper and "paper" in field.metadata else field.default
            values[field.name] = value
        return cls(**values)

    @classmethod
    def of_run(cls, parameters):
        """The config of a run, from the ``parameters`` its state records; an option added
        since it was made takes what the run did without it. Names it records that are no
        longer options are left out."""
        return cls(**{
            field.name: parameters.get(field.name, field.metadata.get("before", field.default))
            for field in dataclasses.fields(cls)
        })

    def resumed(self, given):
        """This run's config, resumed with the options ``given`` (a dict; None: not given):
        those that ``--resume`` may change, and those each session decides, replace the
        run's; the others are ignored. Returns (config, notes): a note says each."""
        changes, notes = {}, []
        for field in dataclasses.fields(self):
            value, kept = given.get(field.name), getattr(self, field.name)
            if value is None and field.metadata["session"]:
                value = field.default  # not given: this machine's default, not the run's
            elif value is None:
                continue
            if value == kept:
                continue
            given_flag = f"{flag(field.name)} {value}"
            if field.metadata["resume"] or field.metadata["session"]:
                notes.append(f"note: {given_flag} from now on (the run had {kept})")
                changes[field.name] = value
            else:
                notes.append(f"note: {given_flag} is ignored: the run keeps {kept} (a new run can change it)")
        return dataclasses.replace(self, **changes), notes

    def with_song_options(self, given):
        """This config with the song options ``given`` (a dict; None: not given) in place of the run's."""
        return dataclasses.replace(self, **{
            name: value for name, value in given.items() if value is not None and name in song_option_names()
        })

    def parameters(self):
        """Every option's value, as a run's state records them."""
        return dataclasses.asdict(self)


def given_options(namespace):
    """The TrainConfig fields of a parsed command line (an argparse Namespace), as a dict
    for TrainConfig.new and TrainConfig.resumed: None where not given."""
    return {field.name: getattr(namespace, field.name, None) for field in dataclasses.fields(TrainConfig)}


def song_option_names():
    """The names of the options that say how a run's songs are drawn and written."""
    return tuple(field.name for field in dataclasses.fields(TrainConfig) if field.metadata["song"])


def page_option_names():
    """The names of the options the run page lists."""
    return tuple(field.name for field in dataclasses.fields(TrainConfig) if field.metadata["page"])


def grouped_parameters(parameters):
    """A run's recorded ``parameters`` as [(group, [(flag, value)])], in the order of train
    --help; any that are no longer options come last, as "other"."""
    groups = {}
    for field in dataclasses.fields(TrainConfig):
        if field.name in parameters:
            groups.setdefault(field.metadata["group"], []).append((flag(field.name), parameters[field.name]))
    others = sorted(set(parameters) - {field.name for field in dataclasses.fields(TrainConfig)})
    if others:
        groups["other"] = [(flag(name), parameters[name]) for name in others]
    return list(groups.items())


def add_train_options(parser):
    """Add every TrainConfig field to the train command's ``parser`` as an option, in its
    group. All default to None, so that ``--resume`` knows which were given; their help
    says their defaults. Returns the groups, by name."""
    groups = {}
    for field in dataclasses.fields(TrainConfig):
        group = field.metadata["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        add_option(groups[group], field, field.default)
    return groups


def add_song_options(parser):
    """Add the options of how a run's songs are drawn and written to ``parser`` (of a
    command on a finished run): each defaults to the run's, and how songs sound to this
    machine's."""
    for field in dataclasses.fields(TrainConfig):
        if field.metadata["song"]:
            add_option(parser, field, "the run's")
        elif field.metadata["session"]:
            add_option(parser, field, field.default)


def paper_flags():
    """The flags that ``--preset paper`` stands for: each option whose paper value is not its default."""
    flags = []
    for field in dataclasses.fields(TrainConfig):
        paper = field.metadata.get("paper", field.default)
        if paper != field.default:
            name = flag(field.name)
            flags.append(name if paper is True else f"--no-{name[2:]}" if paper is False else f"{name} {paper}")
    return flags


def add_option(parser, field, default):
    """Add ``field`` as ``--NAME`` to ``parser``, defaulting to None, its help naming ``default``."""
    help = field.metadata["help"]
    if field.name == "preset":
        help += " " + " ".join(paper_flags())
    if field.metadata["song"] and default is None:
        help += " (default: none)"
    elif default is not None and default is not False and default != "":  # 0 is a default to show
        help += f" (default: {'on' if default is True else default})"
    parser.add_argument(flag(field.name), default=None, help=help, **field.metadata["argument"])


def flag(name):
    """The command-line flag of option ``name``: ``--max-pitches-per-step`` of ``max_pitches_per_step``."""
    return "--" + name.replace("_", "-")
