"""train's options, in one place: each one's default, the paper's settings (its preset),
what a resumed run may change, and what a run recorded before an option existed did.

A run records its parameters, every option's value, in its state; these tables decide only
what those are. That is why the bench's check that two runs were trained alike compares
their parameters and the code that turns parameters into a model (run_folder.code_version),
not this module.
"""

import argparse
import dataclasses

from music_vae.dataset import SEED
from music_vae.model import ModelConfig
from music_vae.samples import DEFAULT_BPM

# Every option of train and its default. The model's sizes are the paper's (section 4.1); how
# it learns and how its songs are made won bench/music_quality.py (see README, "How well the
# code knows the song"). PAPER holds the paper's own settings.
DEFAULTS = {
    "data": None,
    "run_name": "RUN",
    "run_info": "",
    "output_dir": "runs",
    "preset": None,  # "paper": PAPER's settings for every option not given
    **{field.name: field.default for field in dataclasses.fields(ModelConfig) if field.name != "measures"},
    "reconstruction": "bce",  # the paper's squared error lets the decoder settle on one average song
    "kl_cycle": 4,  # with free bits: about twice the KL in the code, and a lower validation loss
    "latent_batch_norm": 0.5,  # every latent unit active; the features' mean overlap with the data 0.70 -> 0.76
    "free_bits": 1024.0,  # room for the song: 16 -> KL 15 nats, F1 0.05; 256 -> 171, 0.27; 1024 -> 554, 0.29
    "pitch_step_terms": True,  # the measure layers learn "these pitches, on these steps" at once
    "epochs": 100,  # 30 minutes in mixed bfloat16 on vgmidi on a 2-core CPU, the budget of issue 22
    "batch_size": 64,
    "lr": 0.001,
    "validation_split": 0.1,
    "test_split": 0.1,  # songs held out for the figures a run reports, which nothing is tuned on
    "seed": SEED,
    "cache": False,
    "transpose": 6,  # semitones a training song may be moved up or down, drawn anew every epoch
    "random_start": True,  # a training song's first measure, drawn anew every epoch: 5% repeated measures, as the data
    "precision": "float32",
    "jit": None,  # where XLA is faster: see model.default_jit
    "distribute": "none",  # or "data-parallel": see distribute.py
    "devices": None,  # with --distribute data-parallel: all of this machine's
    "log_every": 100,  # batches between the per-batch TensorBoard points
    "songs_per_epoch": 3,
    "songs": 10,
    "sample_from": "data",  # a Gaussian fitted to the encoded training songs, or "prior": N(0, I)
    "temperature": 1.0,  # how far from the density's mean the songs' latent vectors go
    "note_rule": "expected",  # see songs.NoteRule
    "threshold": None,  # a fixed threshold for all songs, in place of the note rule
    "max_pitches_per_step": 3,  # 0: no cap
    "bpm": DEFAULT_BPM,
    "audio": True,
    "soundfont": None,
}
# The paper's settings (sections 3.4 and 4.1): squared error, Adam at a learning rate of
# 0.01, batch size 1, KL weight 1 throughout, songs from the prior. Its note rule, "a
# certain threshold" (section 4.2.1), is unstated: each song's strongest cells, as many as
# the average training sample has, stands in for it.
PAPER = {
    **{field.name: field.default for field in dataclasses.fields(ModelConfig) if field.name != "measures"},
    "batch_size": 1, "lr": 0.01, "transpose": 0, "random_start": False, "precision": "float32",
    "sample_from": "prior", "temperature": 1.0, "note_rule": "per-song", "threshold": None, "max_pitches_per_step": 0,
}
# What a resumed run may change: how long and how fast it trains, where its data now are,
# what it logs and how many songs it writes. The rest would make it another run.
CHANGEABLE_ON_RESUME = (
    "data", "epochs", "batch_size", "cache", "jit", "distribute", "devices", "log_every", "songs_per_epoch", "songs",
    "sample_from", "temperature", "note_rule", "max_pitches_per_step",
)
# What a run recorded before these options existed did: a run's parameters lack them.
WITHOUT_OPTION = {
    "preset": None, "transpose": 0, "random_start": False, "sample_from": "prior", "temperature": 1.0,
    "note_rule": "per-song", "max_pitches_per_step": 0, "kl_warmup": 0, "kl_cycle": 0, "free_bits": 0.0,
    "dropout": 0.0, "latent_batch_norm": 0.0, "distribute": "none", "test_split": 0.0, "pitch_step_terms": False,
}
# How a run's songs are drawn and written: generate may change each of them.
SONG_OPTIONS = ("sample_from", "temperature", "note_rule", "threshold", "max_pitches_per_step", "bpm")
# How songs sound is the business of the machine a session runs on (its FluidSynth and
# SoundFont files): these always follow the command line.
THIS_MACHINE = ("audio", "soundfont")


def with_defaults(args):
    """``args`` with each option not given set to its preset's value, else its default."""
    defaults = {**DEFAULTS, **(PAPER if args.preset == "paper" else {})}
    not_given = {key: value for key, value in defaults.items() if getattr(args, key, None) is None}
    return argparse.Namespace(**{**vars(args), **not_given})


def run_parameters(state):
    """A run's parameters: those its state records, and what it did without the options
    added since it was made."""
    return {**DEFAULTS, **WITHOUT_OPTION, **state["parameters"]}
