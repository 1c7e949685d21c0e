"""Train the paper's stacked VAE on 16-measure samples, and generate songs with it.

    python music_generator.py train --data SAMPLES_DIR --run-name RUN01 --run-info "why"
    python music_generator.py train --resume RUN_DIR
    python music_generator.py generate --run RUN_DIR [--songs N] [--seed S]
    python music_generator.py evaluate --run RUN_DIR [--data SAMPLES_DIR] [--songs GLOB]

The model (paper, sections 3.3.2 and 4.1). A measure encoder turns each of a song's 16
measures (96 x 96 onsets, flattened to 9216) into 200 features through 2000 hidden units,
with the same weights for every measure. The song VAE encodes the 16 x 200 = 3200 song
features through 1600 units into a 120-dimensional Gaussian. The decoder mirrors both.
Loss: squared error summed over the song, plus KL(N(mu, sigma) || N(0, 1)) summed over
the latent dimensions, averaged over the batch.

Each run gets its own folder (see ``RunFolder``): an info file, TensorBoard logs, the
models, and songs decoded from the same latent vectors after every epoch, as ``.npy``,
MIDI, piano-roll PNG and WAV, so that progress can be heard on the same seeds, all shown
on one HTML page. ``evaluate`` (run at the end of training too) measures the songs
against the data with music_metrics.
"""

import argparse
import collections
import contextlib
import csv
import datetime
import gc
import html
import json
import math
import os
import platform
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import numpy as np
from tqdm import tqdm

try:
    import fcntl  # locks a run folder while it trains; Windows has none
except ImportError:
    fcntl = None

import data_loader
import music_metrics
from data_loader import ArgumentParser, UsageError, atomic_write, npy_writer, remove_partial_files

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info and warning lines


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2: TensorFlow prints start-up lines from C++, at import and
    when it first looks for devices, that no setting hides (abseil logs before it is
    configured)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


try:
    with _quiet_stderr():
        import keras
        from keras import layers, ops

        if keras.backend.backend() == "tensorflow":
            import tensorflow

            tensorflow.config.list_physical_devices()
except ImportError as error:
    if __name__ != "__main__":
        raise
    sys.exit(f"music_generator.py: error: {error}; install the requirements: pip install -r requirements.txt")

# Model sizes (paper, section 4.1).
MEASURE_HIDDEN = 2000
MEASURE_FEATURES = 200
SONG_HIDDEN = 1600
LATENT = 120

# Training (paper, section 3.4: Adam, learning rate 0.01, batch size 1).
LEARNING_RATE = 0.01
BATCH_SIZE = 1
EPOCHS = 10
VALIDATION_SPLIT = 0.1
SEED = 0
LOG_EVERY = 100  # batches between the per-batch TensorBoard points

# Songs.
SONGS_PER_EPOCH = 3
FINAL_SONGS = 10
MIN_THRESHOLD = 1e-6  # a note needs at least this value, even among the strongest cells
NOTES_SAMPLED = 1000  # training samples read to find the average note count

NOT_PARAMETERS = ("command", "run_command", "resume")  # what train's info file leaves out


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="music_generator")
class Sampling(layers.Layer):
    """Draw z ~ N(z_mean, exp(z_log_var)) as z_mean + sigma * epsilon, so that gradients
    reach the encoder (the reparameterisation trick)."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        epsilon = keras.random.normal(ops.shape(z_mean), dtype=z_mean.dtype, seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}

    def save_own_variables(self, store):
        """Save the noise generator's position: Keras saves a layer's own weights only, and
        without it a resumed run would draw noise the run never stopped did not."""
        store["0"] = ops.convert_to_numpy(self.seed_generator.state)

    def load_own_variables(self, store):
        """Restore the noise generator's position, where the model file has one."""
        if "0" in store.keys():  # models saved before the position was kept have none
            self.seed_generator.state.assign(store["0"])


# The paper's TimeDistributed Dense layers are plain Dense layers here: on a (batch,
# measures, features) input, Dense works on the last axis with the same weights for every
# measure, which is what TimeDistributed means, but in one matrix product instead of 16
# (2-3x faster on a CPU). A test checks that both give the same output.


def build_encoder(
    measures=data_loader.MEASURES_PER_SAMPLE,
    measure_hidden=MEASURE_HIDDEN,
    measure_features=MEASURE_FEATURES,
    song_hidden=SONG_HIDDEN,
    latent=LATENT,
):
    """Song (measures, 9216) -> z_mean (latent), z_log_var (latent), z (latent)."""
    songs = keras.Input((measures, data_loader.MEASURE_SIZE), name="song")
    x = layers.Dense(measure_hidden, activation="relu", name="measure_hidden")(songs)
    x = layers.Dense(measure_features, activation="relu", name="measure_features")(x)
    x = layers.Reshape((measures * measure_features,), name="song_features")(x)
    x = layers.Dense(song_hidden, activation="relu", name="song_hidden")(x)
    z_mean = layers.Dense(latent, name="z_mean")(x)
    z_log_var = layers.Dense(latent, name="z_log_var")(x)
    z = Sampling(name="z")([z_mean, z_log_var])
    return keras.Model(songs, [z_mean, z_log_var, z], name="encoder")


def build_decoder(
    measures=data_loader.MEASURES_PER_SAMPLE,
    measure_hidden=MEASURE_HIDDEN,
    measure_features=MEASURE_FEATURES,
    song_hidden=SONG_HIDDEN,
    latent=LATENT,
    note_density=None,
):
    """z (latent) -> song (measures, 9216) of onset probabilities.

    ``note_density``, the share of cells that are notes in the data, sets the output
    layer's starting bias so that every cell starts at that probability. Training then
    starts at the loss of a silent song instead of that of outputs of 0.5 (36,864 for a
    song), whose first steps push every output to zero; with it, a tiny dataset is
    learnt in hundreds of steps instead of thousands (see the tests).
    """
    if note_density:
        bias = keras.initializers.Constant(math.log(note_density / (1 - note_density)))
    else:
        bias = "zeros"
    z = keras.Input((latent,), name="z")
    x = layers.Dense(song_hidden, activation="relu", name="song_hidden")(z)
    x = layers.Dense(measures * measure_features, activation="relu", name="song_features")(x)
    x = layers.Reshape((measures, measure_features), name="measure_features")(x)
    x = layers.Dense(measure_hidden, activation="relu", name="measure_hidden")(x)
    # The largest product stays in the compute precision (bfloat16 with --precision); the
    # sigmoid and so the loss are float32.
    logits = layers.Dense(data_loader.MEASURE_SIZE, bias_initializer=bias, name="song_logits")(x)
    song = layers.Activation("sigmoid", dtype="float32", name="song")(logits)
    return keras.Model(z, song, name="decoder")


@keras.saving.register_keras_serializable(package="music_generator")
class VAE(keras.Model):
    """The encoder and the decoder joined, trained on the paper's loss.

    Calling it returns (reconstructed songs, z_mean, z_log_var). ``fit`` logs ``loss``,
    ``reconstruction`` and ``kl``; ``loss = reconstruction + kl_weight * kl``.

    Parameters
    ----------
    kl_weight : float
        Weight of the KL term (1 in the paper).
    reconstruction : {"mse", "bce"}
        Squared error (the paper) or binary cross-entropy, summed over the song.
    """

    def __init__(self, encoder, decoder, kl_weight=1.0, reconstruction="mse", **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.kl_weight = kl_weight
        self.reconstruction = reconstruction
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")

    def call(self, songs, training=False):
        z_mean, z_log_var, z = self.encoder(self.unpacked(songs), training=training)
        return self.decoder(z, training=training), z_mean, z_log_var

    def unpacked(self, songs):
        """Songs as (batch, measures, 9216); bit-packed ones, (batch, measures, 1152) uint8
        as np.packbits makes them, are unpacked here, on the model's device."""
        size = self.encoder.input.shape[-1]
        if songs.shape[-1] != size // 8:
            return songs
        # A lookup of each byte's 8 bits: 6 times faster than shifting and masking them.
        bits_of_byte = ops.array(np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1))
        bits = ops.take(bits_of_byte, ops.cast(songs, "int32"), axis=0)
        return ops.reshape(bits, (-1, *songs.shape[1:-1], size))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        reconstructed, z_mean, z_log_var = y_pred
        songs = ops.cast(self.unpacked(x), "float32")
        z_mean, z_log_var = ops.cast(z_mean, "float32"), ops.cast(z_log_var, "float32")
        if self.reconstruction == "bce":
            errors = ops.binary_crossentropy(songs, reconstructed)
        else:
            errors = ops.square(songs - reconstructed)
        reconstruction = ops.mean(ops.sum(errors, axis=(1, 2)))
        kl = ops.mean(-0.5 * ops.sum(1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=1))
        # Weighted by batch size, like Keras' own loss tracker, so that a short last batch
        # counts as much in every epoch mean.
        batch_size = ops.shape(songs)[0]
        self.reconstruction_tracker.update_state(reconstruction, sample_weight=batch_size)
        self.kl_tracker.update_state(kl, sample_weight=batch_size)
        return reconstruction + self.kl_weight * kl

    def get_config(self):
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "kl_weight": self.kl_weight,
            "reconstruction": self.reconstruction,
        }

    @classmethod
    def from_config(cls, config):
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["decoder"] = keras.saving.deserialize_keras_object(config["decoder"])
        return cls(**config)


def build_vae(measures, measure_hidden, measure_features, song_hidden, latent, kl_weight, reconstruction, note_density=None):
    sizes = dict(
        measures=measures,
        measure_hidden=measure_hidden,
        measure_features=measure_features,
        song_hidden=song_hidden,
        latent=latent,
    )
    decoder = build_decoder(**sizes, note_density=note_density)
    vae = VAE(build_encoder(**sizes), decoder, kl_weight, reconstruction, name="vae")
    vae.build((None, measures, data_loader.MEASURE_SIZE))
    return vae


@keras.saving.register_keras_serializable(package="music_generator")
class FusedAdam(keras.optimizers.Adam):
    """Keras' Adam, whose update TensorFlow runs as one XLA computation when ``fuse``.

    On a CPU the training step runs without XLA, because TensorFlow's own matrix products
    (oneDNN, with AMX for bfloat16) are 1.3 to 4 times faster than XLA's. But then Keras'
    Adam is a dozen separate passes over the 48.5 million weights and their moments:
    140 ms a step on the 2-core machine this was measured on, 48 ms when XLA fuses them.
    With other backends, or ``fuse=False``, it is Keras' Adam unchanged.
    """

    def __init__(self, *args, fuse=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.fuse = fuse
        self._fused_apply = None

    def apply(self, grads, trainable_variables=None):
        if not (self.fuse and keras.backend.backend() == "tensorflow"):
            return super().apply(grads, trainable_variables)
        if self._fused_apply is None:
            import tensorflow as tf

            # The variables are captured, not passed: tf.function cannot trace Keras variables.
            adam_apply = super().apply
            self._fused_apply = tf.function(lambda grads: adam_apply(grads, trainable_variables), jit_compile=True)
        return self._fused_apply(grads)

    def get_config(self):
        return {**super().get_config(), "fuse": self.fuse}


def default_jit():
    """Whether XLA compiles the training step by default: where that is faster.

    JAX always compiles with XLA. TensorFlow does on a GPU, but not on a CPU, where its
    oneDNN matrix products beat XLA's at every batch size (FusedAdam still fuses the
    update). PyTorch's compiler takes minutes for this model and is off.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        return True
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return False


def dense_products(vae):
    """(rows per sample, inputs, outputs) of every Dense layer's matrix product, in order:
    the measure layers multiply one row per measure, the song layers one per song."""
    return [
        (math.prod(layer.input.shape[1:-1]), *layer.kernel.shape)
        for layer in vae.encoder.layers + vae.decoder.layers
        if isinstance(layer, layers.Dense)
    ]


def training_flops_per_sample(vae):
    """Floating-point operations of one training sample: the 2 * rows * inputs * outputs
    of every Dense layer's product, 3 times (forward, and backward for the weights and the
    inputs), but twice for the first layer, whose inputs (the songs) need no gradient.
    3.09 GFLOP for the default model (the usual 3 times for every layer would say 3.68)."""
    return sum(
        (2 if number == 0 else 3) * 2 * rows * inputs * outputs
        for number, (rows, inputs, outputs) in enumerate(dense_products(vae))
    )


def fastest(function, seconds):
    """Seconds of the fastest call of ``function``, after one warm-up call, over about
    ``seconds`` (3 calls at least): the best the machine does, whatever else runs on it."""
    function()
    times, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 3:
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return min(times)


def peak_flops(dtype, seconds=0.5):
    """The machine's matrix-product speed in FLOP/s, measured: the fastest of repeated
    products of the model's largest layer (9216 by 2000) in ``dtype``, in the three
    orientations a training step uses (forward, weight gradient, input gradient), for
    about ``seconds`` in all, with rows grown until one product takes long enough to time.
    The fastest orientation counts, so that no step of the model can beat its "peak"."""
    size, hidden = data_loader.MEASURE_SIZE, MEASURE_HIDDEN
    orientations = (
        lambda rows: ((rows, size), (size, hidden)),  # forward
        lambda rows: ((size, rows), (rows, hidden)),  # weight gradient
        lambda rows: ((rows, hidden), (hidden, size)),  # input gradient
    )
    best = 0.0
    for shapes in orientations:
        rows = 256  # grown below where that is too quick to time; small enough for a slow laptop
        while True:
            left, right = shapes(rows)
            a, b = ops.ones(left, dtype), ops.ones(right, dtype)
            # One product, waited for by reading one of its values.
            seconds_per_product = fastest(lambda: ops.convert_to_numpy(ops.cast(ops.matmul(a, b)[0, 0], "float32")), seconds / 3)
            if seconds_per_product > 0.005 or rows >= 65536:  # long enough to hide the call's overhead
                best = max(best, 2 * rows * size * hidden / seconds_per_product)
                break
            rows *= 4
    return best


# --------------------------------------------------------------------------------------
# The data
# --------------------------------------------------------------------------------------


class SongFiles(keras.utils.PyDataset):
    """Batches of samples as uint8, one batch at a time.

    From ``.npy`` files read as each batch is needed, so that memory stays flat whatever
    the number of files: (batch, measures, 9216) of 0/1. Or, with ``cache``, from RAM,
    where every sample is kept bit-packed (18 KB for (16, 9216)): (batch, measures,
    1152), which the VAE unpacks on its own device. Either way a batch travels as a
    quarter (or a 32nd) of float32's bytes, and worker threads prepare the next batches
    while a step runs.

    With ``shuffle``, the order changes every epoch, the same way for the same ``seed``
    and epoch (so that a resumed run sees the batches it would have seen): ``fit`` sets
    the epoch through the ``EpochOrder`` callback. A file that can
    no longer be read is reported once and a silent song takes its place, so that a long
    run never dies of one file.
    """

    def __init__(self, paths, batch_size, shape, shuffle=False, seed=SEED, epoch=0, cache=False):
        super().__init__(workers=2, use_multiprocessing=False, max_queue_size=4)
        self.paths = list(paths)
        self.batch_size = batch_size
        self.shape = tuple(shape)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = epoch
        self.unreadable = set()
        self.packed = self._read_all() if cache else None
        self.order = self._order()

    def _read_all(self):
        packed = np.empty((len(self.paths), *self.shape[:-1], self.shape[-1] // 8), np.uint8)
        for number, path in enumerate(tqdm(self.paths, desc="caching samples", unit="sample", disable=None)):
            packed[number] = np.packbits(self._load(path), axis=-1)
        return packed

    def _order(self):
        if not self.shuffle:
            return np.arange(len(self.paths))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.paths))

    def __len__(self):
        return math.ceil(len(self.paths) / self.batch_size)

    def __getitem__(self, index):
        batch = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        if self.packed is not None:
            return self.packed[batch]
        return np.stack([self._load(self.paths[i]) for i in batch])

    def _load(self, path):
        """A sample as uint8 0/1: any non-zero value is an onset."""
        try:
            song = np.load(path)
            if song.shape != self.shape:
                raise ValueError(f"shape {song.shape}, expected {self.shape}")
            return (song != 0).view(np.uint8)
        except (OSError, ValueError) as error:
            if path not in self.unreadable:
                self.unreadable.add(path)
                print(f"\nwarning: skipped {path}: {error}; a silent song takes its place", file=sys.stderr)
            return np.zeros(self.shape, np.uint8)

    def start_epoch(self, epoch):
        self.epoch = epoch
        self.order = self._order()


class EpochOrder(keras.callbacks.Callback):
    """Give ``songs`` (SongFiles) the number of each epoch as it begins, so that its order
    follows from the seed and the epoch alone. Counting Keras' calls of
    ``PyDataset.on_epoch_end`` does not do: it makes more than one an epoch, its reader
    threads one more where they read ahead, and one at the start of ``fit``, so a resumed
    run would see other batches than the run never stopped."""

    def __init__(self, songs):
        super().__init__()
        self.songs = songs

    def on_epoch_begin(self, epoch, logs=None):
        self.songs.start_epoch(epoch)


def cache_fits(samples, shape):
    """Whether ``samples`` bit-packed samples fit in half of this machine's memory."""
    needed = samples * math.prod(shape) // 8
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # Windows: no sysconf; trust the user
        return True
    return needed <= memory // 2


def sample_problem(path, shape):
    """Why ``path`` is not a usable sample of ``shape``, or None. Reads only the header."""
    try:
        song = np.load(path, mmap_mode="r")  # a truncated file fails here, unread
    except (OSError, ValueError) as error:
        return str(error) or type(error).__name__
    if not isinstance(song, np.ndarray):
        return "not a single array"
    if song.shape != tuple(shape):
        return f"shape {song.shape}, expected {tuple(shape)}"
    if song.dtype.kind not in "biuf":
        return f"dtype {song.dtype} is not a number"
    return None


def data_settings(data_dir):
    """The data_loader settings of a samples folder (its ``settings.json``), or defaults."""
    settings = {"lowest_pitch": data_loader.LOWEST_PITCH, "measures": data_loader.MEASURES_PER_SAMPLE}
    with contextlib.suppress(OSError, ValueError):
        settings.update(json.loads((Path(data_dir) / "settings.json").read_text()))
    return settings


def find_samples(data_dir, shape):
    """Every ``.npy`` under ``data_dir`` that is a sample of ``shape``, and the others.

    Returns
    -------
    good : list of Path
    bad : list of (Path, str)
        Malformed files with the reason.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UsageError(f"data folder {data_dir} does not exist")
    good, bad = [], []
    for path in sorted(data_dir.rglob("*.npy")):
        problem = sample_problem(path, shape)
        if problem:
            bad.append((path, problem))
        else:
            good.append(path)
    if not good:
        if bad:
            path, problem = bad[0]
            raise UsageError(f"none of the {len(bad)} .npy files in {data_dir} is a sample: {path.name} has {problem}")
        raise UsageError(f"no .npy samples in {data_dir}; make them with: python data_loader.py MIDI_DIR {data_dir}")
    return good, bad


def split_samples(paths, validation_split, seed, data_dir):
    """Split into training and validation paths, keeping samples of one song together.

    Songs are known from data_loader's ``index.csv`` when the folder has one; otherwise
    every file counts as its own song.
    """
    source_of = {}
    with contextlib.suppress(OSError, KeyError, csv.Error):
        with open(Path(data_dir) / "index.csv", newline="", encoding="utf-8") as file:
            source_of = {row["sample"]: row["source"] for row in csv.DictReader(file)}
    songs = {}
    for path in paths:
        songs.setdefault(source_of.get(path.name, str(path)), []).append(path)
    groups = list(songs.values())
    validation, wanted = [], round(validation_split * len(paths))
    for index in np.random.default_rng(seed).permutation(len(groups)):
        if len(validation) >= wanted:
            break
        validation.extend(groups[index])
    chosen = set(validation)
    return [path for path in paths if path not in chosen], validation


def mean_notes(paths, seed):
    """Average number of onsets per sample, from up to NOTES_SAMPLED of ``paths``."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(paths), size=min(len(paths), NOTES_SAMPLED), replace=False)
    return float(np.mean([np.count_nonzero(np.load(paths[i])) for i in chosen]))


# --------------------------------------------------------------------------------------
# Songs
# --------------------------------------------------------------------------------------


def strongest_cells(song, notes):
    """``song`` with all but its ``notes`` strongest cells set to 0, and the threshold
    that makes those cells its notes: the weakest of them (never below MIN_THRESHOLD, so
    that a silent song stays silent).

    Exactly ``notes`` cells are kept even where values tie at the threshold, as thousands
    do when the decoder computes in bfloat16.
    """
    values = np.ravel(song)
    notes = int(min(max(notes, 1), values.size))
    strongest = np.argpartition(values, -notes)[-notes:]
    kept = np.zeros_like(values)
    kept[strongest] = values[strongest]
    return kept.reshape(np.shape(song)), max(float(values[strongest].min()), MIN_THRESHOLD)


def piano_roll_image(song, notes, title, lowest_pitch=data_loader.LOWEST_PITCH, bpm=data_loader.DEFAULT_BPM):
    """A picture of a song as an (height, width, 4) uint8 RGBA array.

    Grey shows every cell's value; red bars are ``notes`` (pretty_midi notes, as
    song_to_midi plays them at ``bpm``), darker when louder; blue lines mark the first
    beat of each measure, as in the paper's figures 14 and 15.
    """
    from matplotlib.figure import Figure

    steps = data_loader.STEPS_PER_MEASURE
    measures = np.asarray(song, np.float32).reshape(-1, data_loader.PITCHES, steps)
    roll = measures.transpose(1, 0, 2).reshape(data_loader.PITCHES, -1)  # (pitch, time)
    figure = Figure(figsize=(16, 4), dpi=100)
    axes = figure.add_subplot()
    strongest = max(float(roll.max()), MIN_THRESHOLD)
    axes.imshow(roll, origin="lower", aspect="auto", cmap="Greys", vmin=0, vmax=strongest, alpha=0.5, interpolation="nearest")
    # The notes as a layer of red cells, one per step they sound: as fast for 100,000 notes as for 10.
    steps_per_second = bpm / 60 * steps / 4  # a 4/4 measure: 96 steps in 4 beats
    starts = np.round([note.start * steps_per_second for note in notes]).astype(int)
    lengths = np.round([(note.end - note.start) * steps_per_second for note in notes]).astype(int)
    rows = np.array([note.pitch - lowest_pitch for note in notes], int)
    layer = np.zeros((*roll.shape, 4), np.float32)
    layer[..., :3] = (0.8, 0.05, 0.05)
    for offset in range(int(lengths.max(initial=0))):
        sounding = (lengths > offset) & (starts + offset < roll.shape[1])
        layer[rows[sounding], starts[sounding] + offset, 3] = [notes[i].velocity / 127 for i in np.flatnonzero(sounding)]
    axes.imshow(layer, origin="lower", aspect="auto", interpolation="nearest")
    for measure in range(len(measures) + 1):
        axes.axvline(measure * steps - 0.5, color="tab:blue", linewidth=0.8)
    axes.set_xlim(-0.5, roll.shape[1] - 0.5)
    axes.set_xticks(np.arange(len(measures)) * steps, [str(m + 1) for m in range(len(measures))])
    c_rows = [row for row in range(data_loader.PITCHES) if (lowest_pitch + row) % 12 == 0]
    axes.set_yticks(c_rows, [f"C{(lowest_pitch + row) // 12 - 1}" for row in c_rows])
    axes.set_xlabel("measure")
    axes.set_title(title)
    return figure_pixels(figure)


def figure_pixels(figure):
    """A matplotlib figure drawn as an (height, width, 4) uint8 RGBA array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure.tight_layout()
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba()).copy()
    figure.clear()  # a figure and its canvas refer to each other: free the drawing now
    return image


def png_writer(image):
    """A ``write(path)`` function for ``atomic_write`` that saves an RGBA array as PNG."""
    import matplotlib.image

    return lambda path: matplotlib.image.imsave(path, image, format="png")


class WrittenSong(NamedTuple):
    name: str
    notes: int
    image: np.ndarray  # (height, width, 4) uint8 piano roll
    audio: np.ndarray  # (samples,) float32, or None without --audio


def song_seconds(measures, bpm):
    """How long ``measures`` 4/4 measures last at ``bpm`` quarter notes a minute."""
    return measures * 4 * 60 / bpm


def save_song(song, folder, name, threshold, bpm, lowest_pitch, synthesizer=None, notes_of=None):
    """Write ``song`` as ``folder/npy/NAME.npy``, ``folder/midi/NAME.mid``,
    ``folder/img/NAME.png`` and, with a ``synthesizer``, ``folder/wav/NAME.wav``; return
    a WrittenSong. The notes are the cells of ``notes_of`` (default: ``song``) at or
    above ``threshold``."""
    song = np.asarray(song, np.float32)
    notes_of = song if notes_of is None else notes_of
    midi = data_loader.song_to_midi(notes_of, bpm=bpm, threshold=threshold, lowest_pitch=lowest_pitch)
    notes = midi.instruments[0].notes
    title = f"{name}: {len(notes)} notes (values >= {threshold:.3g})"
    image = piano_roll_image(song, notes, title, lowest_pitch, bpm)
    kinds = ("npy", "midi", "img", "wav") if synthesizer else ("npy", "midi", "img")
    for kind in kinds:
        (folder / kind).mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "npy" / f"{name}.npy", npy_writer(song))
    atomic_write(folder / "midi" / f"{name}.mid", midi.write)
    audio = None
    if synthesizer:
        audio = synthesizer.render(midi, song_seconds(len(song), bpm))
        atomic_write(folder / "wav" / f"{name}.wav", data_loader.wav_writer(audio, synthesizer.sample_rate))
    # The picture last: the run page lists a song by its picture, so a song it lists is complete.
    atomic_write(folder / "img" / f"{name}.png", png_writer(image))
    if not notes:
        print(f"warning: {name} has no notes: every value is below {threshold:.3g}", file=sys.stderr)
    return WrittenSong(name, len(notes), image, audio)


def write_songs(decoder, latents, folder, prefix, threshold, notes, bpm, lowest_pitch, synthesizer=None):
    """Decode ``latents`` and save each song as PREFIX_songNN. ``threshold`` None: pick
    each song's own so that it has ``notes`` notes. Returns a list of WrittenSong."""
    if len(latents) == 0:  # --songs 0 or --songs-per-epoch 0
        return []
    # A direct call: for a few vectors, predict() only adds an iterator and callbacks.
    songs = ops.convert_to_numpy(decoder(ops.convert_to_tensor(np.asarray(latents, np.float32)), training=False))
    written = []
    for number, song in enumerate(songs, start=1):
        name = f"{prefix}_song{number:02d}"
        kept, song_threshold = song_notes(song, threshold, notes)
        written.append(save_song(song, folder, name, song_threshold, bpm, lowest_pitch, synthesizer, notes_of=kept))
    return written


def song_notes(song, threshold, notes):
    """(the cells that are notes, the threshold they pass) by a run's rule: the cells at
    or above ``threshold``, or, where it is None, the ``notes`` strongest cells."""
    if threshold is None:
        return strongest_cells(song, notes)
    return song, threshold


def fixed_latents(count, latent, seed):
    """The same ``count`` latent vectors for the same seed: the songs heard every epoch."""
    return np.random.default_rng(seed).standard_normal((count, latent)).astype(np.float32)


# --------------------------------------------------------------------------------------
# The run folder
# --------------------------------------------------------------------------------------


class RunFolder:
    """``<output>/<YYYYMMDDHHMMSS>_<RUN-NAME>/``: everything one training run leaves.

    - ``<folder name>_info.txt``: the run's purpose, parameters, data, versions, losses
    - ``state.json``: the same, for the program (and ``--resume``)
    - ``logs/``: TensorBoard event files (``train``, ``validation``, ``songs``)
    - ``model/``: ``vae.keras`` (with the optimizer's state), ``encoder.keras``,
      ``decoder.keras``, saved after every completed epoch (in ``model/epochNNN/``
      until state.json records the epoch, then moved into place)
    - ``generated/npy``, ``generated/midi``, ``generated/img``, ``generated/wav``: the songs
    - ``index.html`` and ``losses.png``: the run page, rewritten after every epoch
    - ``evaluation.json``, ``evaluation.png``: the evaluation of the final songs
    """

    def __init__(self, path):
        self.path = Path(path)
        self.info = self.path / f"{self.path.name}_info.txt"
        self.state_file = self.path / "state.json"
        self.logs = self.path / "logs"
        self.model = self.path / "model"
        self.generated = self.path / "generated"
        self.page = self.path / "index.html"

    @classmethod
    def create(cls, output_dir, run_name):
        if not re.fullmatch(r"[A-Za-z0-9._-]+", run_name):
            raise UsageError(f"run name {run_name!r} may hold only letters, digits, '.', '_' and '-'")
        stamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        run = cls(Path(output_dir) / f"{stamp}_{run_name}")
        try:
            run.path.mkdir(parents=True)
            run.model.mkdir()
            run.logs.mkdir()
        except FileExistsError:
            raise UsageError(f"run folder {run.path} exists already; wait a second or pick another --run-name") from None
        except OSError as error:
            raise UsageError(f"cannot create the run folder {run.path}: {error.strerror or error}") from None
        return run

    @classmethod
    def open(cls, path, trained=True):
        """The run folder at ``path``; with ``trained``, one whose model has learnt an epoch."""
        run = cls(path)
        if not run.state_file.is_file():
            raise UsageError(
                f"{path} is not a run folder made by train (it has no state.json; "
                "a run stopped before it wrote one must be started again)"
            )
        if trained and not (run.model / "decoder.keras").is_file():
            resume = f"python music_generator.py train --resume {path}"
            raise UsageError(f"{path} has no trained model in place yet (continue it with: {resume})")
        return run

    @contextlib.contextmanager
    def training(self):
        """Hold the run folder while this process trains it, so that a second ``--resume``
        of it is refused instead of cleaning up files that are being written."""
        descriptor = None
        if fcntl:  # not on Windows, which has no such lock
            descriptor = os.open(self.path, os.O_RDONLY)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                message = f"{self.path} is being trained by another process; wait for it, or stop it first"
                raise UsageError(message) from None
            except OSError as error:  # a file system without locks (some network ones): train unguarded
                os.close(descriptor)
                descriptor = None
                note = f"note: cannot lock {self.path} ({error.strerror}); do not resume it twice at once"
                print(note, file=sys.stderr)
        try:
            yield
        finally:
            if descriptor is not None:
                os.close(descriptor)

    def remove_unless_saved(self):
        """Remove the folder if its state was never saved (the disk was full from the start):
        it would hold nothing to resume."""
        if not self.state_file.exists():
            shutil.rmtree(self.path, ignore_errors=True)

    def load_state(self):
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError) as error:
            raise UsageError(f"cannot read {self.state_file}: {error}") from None

    def save(self, state):
        """Write state.json and the info file, atomically. state.json is the record of what
        is complete: an epoch counts once it is written there."""
        atomic_write(self.state_file, lambda path: Path(path).write_text(json.dumps(state, indent=1)))
        atomic_write(self.info, lambda path: Path(path).write_text(info_text(state), encoding="utf-8"))

    def staged_models(self, epoch):
        """Where the models of ``epoch`` wait until state.json records it."""
        return self.model / f"epoch{epoch:03d}"

    def save_models(self, vae, epoch):
        """Save the VAE (with its optimizer, for --resume), encoder and decoder of ``epoch``
        into ``model/epochNNN/``; ``use_models`` moves them into place once state.json
        records the epoch. So the models in place are always those of the last recorded
        epoch, whenever a kill comes."""
        folder = self.staged_models(epoch)
        folder.mkdir(exist_ok=True)
        for name, model in (("vae", vae), ("encoder", vae.encoder), ("decoder", vae.decoder)):
            atomic_write(folder / f"{name}.keras", model.save, suffix=".keras")

    def use_models(self, epoch):
        """Move the models of ``epoch``, which state.json records, into place. A kill halfway
        leaves the rest in their folder, which ``recover`` moves."""
        folder = self.staged_models(epoch)
        for path in folder.glob("*.keras"):
            os.replace(path, self.model / path.name)
        folder.rmdir()

    def recover(self, epochs_done):
        """Bring the folder back to its last recorded epoch after a kill: remove part files,
        move that epoch's models into place if the kill came before, and remove the models
        and songs of an epoch that was not recorded."""
        remove_partial_files(self.path, recursive=True)
        for folder in self.model.glob("epoch*"):
            if folder == self.staged_models(epochs_done):
                self.use_models(epochs_done)
            else:
                shutil.rmtree(folder)
        for path in self.generated.glob("*/epoch*_song*"):
            epoch = re.match(r"epoch(\d+)_", path.name)
            if epoch and int(epoch.group(1)) > epochs_done:
                path.unlink()


def info_text(state):
    """The human-readable info file of a run."""
    lines = [state["run"], "=" * len(state["run"]), "", state["run_info"] or "(no --run-info given)", ""]
    lines += [f"Status:   {state['status']}, {state['epochs_done']} of {state['parameters']['epochs']} epochs done"]
    for session in state["sessions"]:
        lines += [f"Session:  {session['started']} to {session.get('ended') or 'now'}, from epoch {session['from_epoch']}"]
    lines += ["", "Parameters"]
    lines += [f"  --{key.replace('_', '-'):22} {value}" for key, value in sorted(state["parameters"].items())]
    data = state["data"]
    lines += [
        "",
        "Data",
        f"  folder                   {data['folder']}",
        f"  samples                  {data['samples']}: {data['training']} for training, {data['validation']} for validation",
        f"  malformed, skipped       {len(data['malformed'])}",
        *[f"    {name}: {problem}" for name, problem in data["malformed"][:20]],
        f"  notes per sample         {data['mean_notes']:.1f} on average (the default note count of a song)",
        f"  pitch window             MIDI {data['lowest_pitch']}-{data['lowest_pitch'] + data_loader.PITCHES - 1}",
        "",
        "Model",
        f"  parameters               {state['model']['parameters']:,} (encoder {state['model']['encoder']:,}, decoder {state['model']['decoder']:,})",
        "",
        "Speed",
        f"  XLA, cache               {state['speed']['jit']}, {state['speed']['cache']}",
        f"  GFLOP a training sample  {state['speed']['gflop_per_sample']:.2f}",
        f"  peak GFLOP/s             {state['speed']['peak_gflop_per_s']:,.0f} (a measured matrix product; mfu is the share of it in use)",
        "",
        "Songs",
        f"  audio                    {state.get('audio', 'none')}",
        "",
        "Environment",
        *[f"  {key:24} {value}" for key, value in state["environment"].items()],
        "",
        "Losses per epoch",
    ]
    if state["history"]:
        columns = list(dict.fromkeys(key for row in state["history"] for key in row if key != "epoch"))
        lines.append("  epoch" + "".join(f"{column:>20}" for column in columns))
        for row in state["history"]:
            cells = (f"{row[column]:20.4f}" if column in row else " " * 20 for column in columns)
            lines.append(f"  {row['epoch']:5d}" + "".join(cells))
    else:
        lines.append("  (no epoch completed yet)")
    if state.get("evaluation"):
        lines += ["", "Evaluation (the latest: at the end of training, or by python music_generator.py evaluate)", "  " + evaluation_table(state["evaluation"])]
    return "\n".join(lines) + "\n"


def environment():
    """Versions and devices, for the info file."""
    versions = {
        "python": platform.python_version(),
        "keras": f"{keras.__version__} (backend {keras.backend.backend()})",
    }
    for module in ("tensorflow", "jax", "torch", "numpy", "pretty_midi"):
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", "?")
    try:
        versions["devices"] = ", ".join(keras.distribution.list_devices())
    except Exception:  # not every backend lists its devices
        versions["devices"] = "(not listed by this backend)"
    versions["machine"] = f"{platform.platform()}, {os.cpu_count()} cores"
    return versions


def now():
    return datetime.datetime.now().isoformat(sep=" ", timespec="seconds")


# --------------------------------------------------------------------------------------
# The run page
# --------------------------------------------------------------------------------------

PAGE_PARAMETERS = ("data", "epochs", "batch_size", "lr", "kl_weight", "reconstruction", "precision", "latent", "seed", "threshold", "bpm")
PAGE_STYLE = """
body { font: 15px/1.4 system-ui, sans-serif; max-width: 1280px; margin: 1em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { padding: 0.15em 0.7em; text-align: right; }
td:first-child, th:first-child { text-align: left; } tr:nth-child(even) { background: #f4f4f4; }
.songs { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 0 1.5em; }
figure { margin: 0.6em 0; } figure img, .picture { width: 100%; display: block; }
figcaption { display: flex; gap: 1em; align-items: center; } audio { flex: 1; }
.info { white-space: pre-wrap; font-size: 1.1em; }
"""


def loss_curve_image(history):
    """The losses per epoch as an (height, width, 4) uint8 RGBA picture: loss,
    reconstruction and KL side by side, training solid and validation dashed."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 3.6), dpi=100)
    epochs = [row["epoch"] for row in history]
    for number, name in enumerate(("loss", "reconstruction", "kl"), start=1):
        axes = figure.add_subplot(1, 3, number)
        for key, style, label in ((name, "-", "training"), (f"val_{name}", "--", "validation")):
            points = [(epoch, row[key]) for epoch, row in zip(epochs, history) if key in row]
            if points:
                axes.plot(*zip(*points), style, marker="o", markersize=3, label=label)
        axes.set_title(name)
        axes.set_xlabel("epoch")
        axes.legend()
    return figure_pixels(figure)


def song_groups(generated):
    """The songs in a run's ``generated/`` folder as [(heading, [names])]: the final
    songs, those of ``generate``, then each epoch's, newest first."""
    names = sorted(path.stem for path in (Path(generated) / "img").glob("*.png"))
    groups = {}
    for name in names:
        groups.setdefault(name.split("_song")[0], []).append(name)
    headings = {"final": "Final songs", "sample": "Songs from generate"}
    epochs = sorted((prefix for prefix in groups if re.fullmatch(r"epoch\d+", prefix)), key=lambda prefix: -int(prefix[5:]))
    others = sorted(prefix for prefix in groups if prefix not in headings and prefix not in epochs)
    ordered = [(headings[prefix], groups[prefix]) for prefix in headings if prefix in groups]
    return ordered + [(f"Epoch {int(prefix[5:])}", groups[prefix]) for prefix in epochs] + [(prefix, groups[prefix]) for prefix in others]


def run_page(run, state, evaluation=None):
    """The HTML of ``RUN_DIR/index.html``: the run's info, losses and evaluation, then
    every song with its piano roll, an audio player and a link to its MIDI file. Links
    are relative, so the page works from disk and from a copy of the folder."""
    escape = html.escape

    def link(*parts):
        return escape(quote("/".join(parts)))

    parameters = state["parameters"]
    rows = [("run folder", run.path.name), ("status", f"{state['status']}, {state['epochs_done']} of {parameters['epochs']} epochs done")]
    rows += [(f"--{key.replace('_', '-')}", parameters[key]) for key in PAGE_PARAMETERS if key in parameters]
    if "model" in state:
        rows.append(("parameters of the model", f"{state['model']['parameters']:,}"))
    if "data" in state:
        rows.append(("samples", f"{state['data']['samples']}: {state['data']['training']} for training, {state['data']['validation']} for validation"))
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(state['run'])}</title><style>{PAGE_STYLE}</style></head><body>",
        f"<h1>{escape(state['run'])}</h1>",
        f'<p class="info">{escape(state["run_info"] or "(no --run-info given)")}</p>',
        "<table>",
        *[f"<tr><td>{escape(str(key))}</td><td>{escape(str(value))}</td></tr>" for key, value in rows],
        "</table>",
        f'<p>Every parameter, the data and the environment: <a href="{link(run.info.name)}">{escape(run.info.name)}</a>.</p>',
        "<h2>Losses</h2>",
    ]
    history = state["history"]
    if history:
        columns = list(dict.fromkeys(key for row in history for key in row if key != "epoch"))
        lines += [
            f'<img class="picture" src="losses.png" alt="losses per epoch">',
            "<table><tr><th>epoch</th>" + "".join(f"<th>{escape(column)}</th>" for column in columns) + "</tr>",
            *[f"<tr><td>{row['epoch']}</td>" + "".join(f"<td>{row[column]:.4g}</td>" if column in row else "<td></td>" for column in columns) + "</tr>" for row in history],
            "</table>",
        ]
    else:
        lines.append("<p>No epoch completed yet.</p>")
    if evaluation:
        try:
            table = evaluation_html(evaluation)
        except (KeyError, TypeError, AttributeError):  # an evaluation.json of another version
            table = ["<p>(evaluation.json is not one this version reads: run evaluate again)</p>"]
        lines += ["<h2>Evaluation</h2>", *table, '<img class="picture" src="evaluation.png" alt="generated and real distributions">']
    for heading, names in song_groups(run.generated):
        lines.append(f'<h2>{escape(heading)}</h2><div class="songs">')
        for name in names:
            audio = (run.generated / "wav" / f"{name}.wav").is_file()
            lines += [
                "<figure>",
                f'<a href="{link("generated", "img", name + ".png")}"><img loading="lazy" src="{link("generated", "img", name + ".png")}" alt="piano roll of {escape(name)}"></a>',
                f"<figcaption><b>{escape(name)}</b>",
                f'<audio controls preload="metadata" src="{link("generated", "wav", name + ".wav")}"></audio>' if audio else "<span>(no audio)</span>",
                f'<a href="{link("generated", "midi", name + ".mid")}">MIDI</a></figcaption>',
                "</figure>",
            ]
        lines.append("</div>")
    lines += [f"<p><small>Written {escape(now())} by music_generator.py.</small></p>", "</body></html>"]
    return "\n".join(lines) + "\n"


def write_run_page(run, state):
    """Write (again) ``RUN_DIR/index.html`` and its loss curve ``losses.png``."""
    if state["history"]:
        image = loss_curve_image(state["history"])
        atomic_write(run.path / "losses.png", png_writer(image))
    evaluation = None
    with contextlib.suppress(OSError, ValueError):
        evaluation = json.loads((run.path / "evaluation.json").read_text())
    atomic_write(run.page, lambda path: Path(path).write_text(run_page(run, state, evaluation), encoding="utf-8"))


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


class Speedometer(keras.callbacks.Callback):
    """Adds ``samples_per_s`` and ``mfu`` to the logs, so that the progress bar,
    TensorBoard and the info file show them.

    MFU, the model FLOPs utilisation, is the share of the machine's measured peak
    matrix-product speed that training achieves, as nanoGPT reports it. The first step of
    a run (which compiles) is not timed.
    """

    def __init__(self, samples, batch_size, flops_per_sample, peak):
        super().__init__()
        self.samples = samples
        self.batch_size = batch_size
        self.flops_per_sample = flops_per_sample
        self.peak = peak
        self.last = None

    def on_epoch_begin(self, epoch, logs=None):
        self.timed_samples, self.timed_seconds = 0, 0.0

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self.last is not None:
            self.timed_samples += min(self.batch_size, self.samples - batch * self.batch_size)
            self.timed_seconds += now - self.last
        self.last = now
        if logs is not None and self.timed_seconds:
            logs.update(self.speed())

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0 and self.last is not None:  # not the validation and saving between epochs
            self.last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.timed_seconds:
            logs.update(self.speed())

    def speed(self):
        samples_per_s = self.timed_samples / self.timed_seconds
        return {"samples_per_s": samples_per_s, "mfu": samples_per_s * self.flops_per_sample / self.peak}


class EpochEnd(keras.callbacks.Callback):
    """After every epoch: stop on a non-finite loss (keeping the last good model), else
    save the models, write the songs of the fixed latent vectors, and record the epoch in
    the run state. A kill before the record leaves the run as it was after the previous
    epoch (see RunFolder.recover); one after it, the epoch complete."""

    def __init__(self, run, state, latents, songs, tensorboard):
        super().__init__()
        self.run = run
        self.state = state
        self.latents = latents
        self.songs = songs  # keyword arguments of write_songs
        self.tensorboard = tensorboard  # a TensorBoardLog, or None
        self.stopped = None

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        losses = {name: float(value) for name, value in (logs or {}).items()}
        if not all(math.isfinite(value) for value in losses.values()):
            self.stopped = f"the loss became {losses.get('loss')} in epoch {epoch + 1}"
            self.model.stop_training = True
            return
        self.run.save_models(self.model, epoch + 1)
        prefix = f"epoch{epoch + 1:03d}"
        written = write_songs(self.model.decoder, self.latents, self.run.generated, prefix, **self.songs)
        row = {"epoch": epoch + 1, **losses, "seconds": time.perf_counter() - self.started}
        # One call, which a second Ctrl-C cannot split: the history and the count agree.
        self.state.update(history=[*self.state["history"], row], epochs_done=epoch + 1)
        self.run.save(self.state)
        self.run.use_models(epoch + 1)
        if self.tensorboard:
            self.tensorboard.songs(written, epoch + 1)
        write_run_page(self.run, self.state)
        # Every picture leaves megabytes in matplotlib's reference cycles, which Python's
        # collector frees only now and then: memory would climb for epochs, then drop.
        # Freeing them now keeps it flat (160 ms on a 2-core machine).
        gc.collect()
        print(f"epoch {epoch + 1}: model saved; songs with " + ", ".join(str(song.notes) for song in written) + " notes")


class CtrlC(keras.callbacks.Callback):
    """Ctrl-C during ``fit`` stops training before the next training batch, by raising
    KeyboardInterrupt there: an epoch whose batches are done is still validated and
    recorded, and no file is being written. A second Ctrl-C raises it at once. (Python's
    own KeyboardInterrupt lands anywhere: in a save, or inside TensorFlow.) Use as a
    context manager around ``fit``, and as one of its callbacks."""

    def __init__(self):
        super().__init__()
        self.pressed = False

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():  # the only thread Python lets handle signals
            self.previous = signal.signal(signal.SIGINT, self.press)
        return self

    def __exit__(self, *exception):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def press(self, signal_number, frame):
        """The SIGINT handler: the first press asks to stop, the second stops."""
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True
        print("\nCtrl-C: stopping before the next batch (press it again to stop at once)", file=sys.stderr)

    def on_train_batch_begin(self, batch, logs=None):
        if self.pressed:
            raise KeyboardInterrupt


class TensorBoardLog(keras.callbacks.Callback):
    """TensorBoard event files in ``logs/``: the losses per epoch (``train/`` and
    ``validation/``, tags ``epoch_loss``, ``epoch_reconstruction``, ``epoch_kl``), with
    ``epoch_samples_per_s``, ``epoch_mfu`` and ``epoch_learning_rate`` in ``train/``;
    the same every ``every`` batches (``batch_*``); the pictures and the sound of the
    epoch songs (``songs/``); the evaluation at the end (``evaluation/``).

    Keras' own TensorBoard callback drops the epoch losses whenever the batches of an
    epoch are not a multiple of its ``update_freq`` (tensorflow/tensorboard#4975).
    """

    def __init__(self, log_dir, every, first_batch=0):
        super().__init__()
        import tensorflow as tf

        self.summary = tf.summary
        self.writers = {name: tf.summary.create_file_writer(str(Path(log_dir) / name)) for name in ("train", "validation", "songs")}
        self.log_dir = Path(log_dir)
        self.every = every
        self.batch = first_batch

    @staticmethod
    def create(log_dir, every, first_batch=0):
        """The logger, or None (with a note) where TensorFlow or TensorBoard is missing:
        the event files are written through tf.summary, whatever Keras' backend."""
        try:
            with _quiet_stderr():
                import tensorboard  # noqa: F401
                import tensorflow  # noqa: F401
        except ImportError:
            print("note: no TensorBoard logs: they need the tensorflow and tensorboard packages", file=sys.stderr)
            return None
        return TensorBoardLog(log_dir, every, first_batch)

    def _scalars(self, writer, prefix, logs, step):
        with self.writers[writer].as_default():
            for name, value in logs.items():
                self.summary.scalar(f"{prefix}_{name}", float(value), step=step)

    def on_train_batch_end(self, batch, logs=None):
        self.batch += 1
        if self.batch % self.every == 0 and logs:
            self._scalars("train", "batch", logs, self.batch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        training = {k: v for k, v in logs.items() if not k.startswith("val_")}
        training["learning_rate"] = ops.convert_to_numpy(self.model.optimizer.learning_rate)
        self._scalars("train", "epoch", training, epoch + 1)
        self._scalars("validation", "epoch", {k[4:]: v for k, v in logs.items() if k.startswith("val_")}, epoch + 1)
        for writer in self.writers.values():
            writer.flush()

    def songs(self, written, epoch, sample_rate=data_loader.AUDIO_SAMPLE_RATE):
        """Show the pictures of ``written`` (WrittenSongs) at ``epoch``, and play their
        audio where they have some."""
        with self.writers["songs"].as_default():
            for song in written:
                tag = song.name.split("_", 1)[1]
                self.summary.image(tag, song.image[np.newaxis], step=epoch)
                if song.audio is not None:
                    with _quiet_stderr():  # TensorFlow's WAV encoder logs a line about oneDNN
                        self.summary.audio(f"{tag}_audio", song.audio[np.newaxis, :, np.newaxis], sample_rate, step=epoch, encoding="wav")
        self.writers["songs"].flush()

    def evaluation(self, results, image, step):
        """The end-of-training evaluation: its numbers as ``evaluation/*`` scalars and its
        picture, in ``logs/evaluation``."""
        import tensorflow as tf

        with tf.summary.create_file_writer(str(self.log_dir / "evaluation")).as_default() as writer:
            for name, value in evaluation_scalars(results).items():
                self.summary.scalar(f"evaluation/{name}", value, step=step)
            self.summary.image("evaluation", image[np.newaxis], step=step)
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self.writers.values():
            writer.close()


PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def train(args):
    """The train command: a new run, or ``--resume`` of a stopped one."""
    with contextlib.ExitStack() as held:
        run = state = None
        if args.resume:
            run = RunFolder.open(args.resume, trained=False)
            held.enter_context(run.training())  # before its state is read: no other process changes it now
            state, args = resumed_state(run, args)
            run.recover(state["epochs_done"])
        else:
            args = new_run_args(args)
        keras.utils.set_random_seed(args.seed)
        keras.mixed_precision.set_global_policy(PRECISIONS[args.precision])
        data = read_data(args.data, args.validation_split, args.seed)
        synthesizer = song_synthesizer(args)
        jit = default_jit() if args.jit is None else args.jit
        vae = model_to_train(run, state, args, data, jit)
        cache = args.cache and cache_fits(len(data["training"]) + len(data["validation"]), data["shape"])
        if args.cache and not cache:
            note = "the samples would take more than half of this machine's memory; reading them from disk"
            print(f"note: --cache: {note}", file=sys.stderr)
        batches = dict(batch_size=args.batch_size, shape=data["shape"], cache=cache)
        training = SongFiles(data["training"], shuffle=True, seed=args.seed, **batches)
        validation = SongFiles(data["validation"], **batches) if data["validation"] else None
        flops, peak = training_flops_per_sample(vae), peak_flops(keras.mixed_precision.global_policy().compute_dtype)

        if run is None:  # made only now, so that a stop while the model and the data get ready leaves no folder
            run = RunFolder.create(args.output_dir, args.run_name)
            held.enter_context(run.training())
            held.callback(run.remove_unless_saved)
            state = new_state(run, args)
        state["data"] = {key: value for key, value in data.items() if key not in ("training", "validation", "shape")}
        state["data"].update(training=len(data["training"]), validation=len(data["validation"]))
        state["model"] = {
            "parameters": vae.count_params(),
            "encoder": vae.encoder.count_params(),
            "decoder": vae.decoder.count_params(),
        }
        state["speed"] = {"jit": jit, "cache": cache, "gflop_per_sample": flops / 1e9, "peak_gflop_per_s": peak / 1e9}
        state["environment"] = environment()
        state["audio"] = str(synthesizer) if synthesizer else "none (--no-audio)"
        state["status"] = "training"
        state["sessions"].append({"started": now(), "from_epoch": state["epochs_done"]})
        run.save(state)

        songs = dict(threshold=args.threshold, notes=data["mean_notes"], bpm=args.bpm)
        songs.update(lowest_pitch=data["lowest_pitch"], synthesizer=synthesizer)
        tensorboard = TensorBoardLog.create(run.logs, args.log_every, first_batch=state["epochs_done"] * len(training))
        epoch_latents = fixed_latents(args.songs_per_epoch, args.latent, args.seed)
        epoch_end = EpochEnd(run, state, epoch_latents, songs, tensorboard)
        speedometer = Speedometer(len(data["training"]), args.batch_size, flops, peak)
        callbacks = [EpochOrder(training), keras.callbacks.TerminateOnNaN(), speedometer, tensorboard, epoch_end]
        if state["epochs_done"] < args.epochs:
            epochs = f"epochs {state['epochs_done'] + 1}-{args.epochs}"
        else:
            epochs = f"its {args.epochs} epochs are done: the final songs and the evaluation follow"
        print(
            f"Run {run.path}: {len(data['training'])} training and {len(data['validation'])} validation samples, "
            f"{state['model']['parameters']:,} parameters, {epochs}; "
            f"{args.precision}{', XLA' if jit else ''}{', cached' if cache else ''}, peak {peak / 1e9:,.0f} GFLOP/s"
        )
        note_sine_waves(synthesizer)
        try:
            if state["epochs_done"] < args.epochs:
                with CtrlC() as ctrl_c:
                    vae.fit(
                        training,
                        validation_data=validation,
                        epochs=args.epochs,
                        initial_epoch=state["epochs_done"],
                        # SongFiles shuffles, from the seed and the epoch; Keras' own shuffle of
                        # the batches draws from Python's global random state, which a resumed
                        # run starts afresh.
                        shuffle=False,
                        callbacks=[c for c in (*callbacks, ctrl_c) if c],
                        verbose=1 if sys.stdout.isatty() else 2,
                    )
                if ctrl_c.pressed:  # after the last batch: still a request to stop
                    raise KeyboardInterrupt
            if epoch_end.stopped:
                finish(run, state, f"stopped: {epoch_end.stopped}")
                print(
                    f"music_generator.py: error: training stopped: {epoch_end.stopped}; the model of epoch "
                    f"{state['epochs_done']} is kept in {run.model}. Try a lower --lr.",
                    file=sys.stderr,
                )
                return 1
            written = final_songs(run, state, vae, args, data, songs, tensorboard)
        except KeyboardInterrupt:
            finish(run, state, f"interrupted after epoch {state['epochs_done']}")
            resume = f"python music_generator.py train --resume {run.path}"
            if state["epochs_done"] < args.epochs:
                print(f"Interrupted. Continue with: {resume}", file=sys.stderr)
            else:
                print(f"Interrupted before the final songs and evaluation; write them with: {resume}", file=sys.stderr)
            return 130
        except Exception as error:
            with contextlib.suppress(OSError):  # with a full disk, even this may fail
                finish(run, state, f"failed after epoch {state['epochs_done']}: {type(error).__name__}")
            if isinstance(error, OSError):  # a full disk: everything recorded so far is intact
                where = f" ({error.filename})" if error.filename else ""
                resume = f"when fixed, continue with: python music_generator.py train --resume {run.path}"
                raise OSError(error.errno, f"{error.strerror or error}{where}; {resume}") from error
            raise
        finish(run, state, "finished")
    print(f"Done: {run.path}")
    print(f"  songs:       {run.generated / 'midi'} ({len(written)} final songs, and {args.songs_per_epoch} per epoch)")
    print(f"  page:        {run.page} (open it in a browser: songs to see and hear)")
    print(f"  info:        {run.info}")
    print(f"  TensorBoard: tensorboard --logdir {run.logs}")
    return 0


def new_run_args(args):
    """``args`` of a new run, checked, with the default number of epochs filled in."""
    if not args.data:
        raise UsageError("the samples folder is missing: pass --data SAMPLES_DIR (or --resume RUN_DIR)")
    args.epochs = EPOCHS if args.epochs is None else args.epochs
    return args


def resumed_state(run, args):
    """(state, args) of a run to resume: its own parameters, but for ``--epochs`` and how
    the songs sound, which follow the command line."""
    state = run.load_state()
    epochs = args.epochs
    # How songs sound is this machine's business (its FluidSynth, its SoundFont files).
    sound = {"audio": args.audio, "soundfont": args.soundfont}
    args = argparse.Namespace(**{**vars(args), **state["parameters"], **sound, "resume": args.resume})
    state["parameters"].update(sound)
    if epochs is not None:
        if epochs < state["epochs_done"]:
            done = state["epochs_done"]
            raise UsageError(f"{run.path} has done {done} epochs already; --epochs cannot take them back")
        args.epochs = state["parameters"]["epochs"] = epochs
    # A run that did its epochs but was stopped before it finished still owes its final
    # songs and evaluation: resuming it writes them.
    if state["epochs_done"] >= args.epochs and state["status"] == "finished":
        raise UsageError(f"{run.path} has done its {args.epochs} epochs; pass --epochs N to train it longer")
    return state, args


def model_to_train(run, state, args, data, jit):
    """The compiled VAE to train: the run's, as its last recorded epoch left it, or a new one
    for a new run (``run`` None) and for a run stopped before its first epoch ended."""
    if state and state["epochs_done"] > 0:
        if not (run.model / "vae.keras").is_file():
            raise UsageError(f"{run.path} has no model/vae.keras to continue from")
        vae = keras.saving.load_model(run.model / "vae.keras")
        optimizer = vae.optimizer
    else:
        if state:
            print(f"note: no epoch of {run.path.name} had completed; it starts again from epoch 1", file=sys.stderr)
        density = data["mean_notes"] / math.prod(data["shape"])
        sizes = (data["measures"], args.measure_hidden, args.measure_features, args.song_hidden, args.latent)
        vae = build_vae(*sizes, args.kl_weight, args.reconstruction, density)
        optimizer = FusedAdam(learning_rate=args.lr)
    getattr(optimizer, "inner_optimizer", optimizer).fuse = not jit  # inside float16's loss scaling
    vae.compile(optimizer=optimizer, jit_compile=jit)
    return vae


def final_songs(run, state, vae, args, data, songs, tensorboard):
    """Write the run's final songs and evaluate them against the data (into the run
    folder, its state and TensorBoard); return the WrittenSongs."""
    latents = fixed_latents(args.songs, args.latent, args.seed + 1)
    written = write_songs(vae.decoder, latents, run.generated, "final", **songs)
    if written:
        song_paths = [run.generated / "midi" / f"{song.name}.mid" for song in written]
        results = evaluate_songs(
            vae.encoder, vae.decoder, song_paths, data["training"] + data["validation"], data["validation"],
            args.threshold, data["mean_notes"], data["lowest_pitch"], seed=args.seed,
        )
        results["compared"]["data_folder"] = data["folder"]
        state["evaluation"], image = write_evaluation(run, results)
        if tensorboard:
            tensorboard.evaluation(results, image, state["epochs_done"])
        print("Evaluation: " + evaluation_table(results))
    return written


def new_state(run, args):
    return {
        "run": run.path.name,
        "run_info": args.run_info,
        "parameters": {key: value for key, value in vars(args).items() if key not in NOT_PARAMETERS},
        "status": "training",
        "epochs_done": 0,
        "sessions": [],
        "history": [],
    }


def read_data(data_dir, validation_split, seed):
    """The samples of ``data_dir``, checked and split, with what the run needs to know."""
    settings = data_settings(data_dir)
    shape = (settings["measures"], data_loader.MEASURE_SIZE)
    paths, malformed = find_samples(data_dir, shape)
    for path, problem in malformed[:10]:
        print(f"warning: skipped {path}: {problem}", file=sys.stderr)
    if len(malformed) > 10:
        print(f"warning: skipped {len(malformed) - 10} more malformed files", file=sys.stderr)
    training, validation = split_samples(paths, validation_split, seed, data_dir)
    return {
        "folder": str(Path(data_dir).resolve()),
        "samples": len(paths),
        "training": training,
        "validation": validation,
        "malformed": [(path.name, problem) for path, problem in malformed],
        "mean_notes": mean_notes(training, seed),
        "lowest_pitch": settings["lowest_pitch"],
        "measures": settings["measures"],
        "shape": shape,
    }


def finish(run, state, status):
    """Record the end of a session: the page first, state.json last, so that a kill between
    the two leaves the run to be finished by --resume."""
    state["status"] = status
    state["sessions"][-1]["ended"] = now()
    write_run_page(run, state)
    run.save(state)


def song_synthesizer(args):
    """The Synthesizer of the songs' WAV files (``--soundfont``, else the best one
    installed), or None with ``--no-audio``. Raises UsageError for a bad SoundFont."""
    if not args.audio:
        return None
    return data_loader.Synthesizer(args.soundfont) if args.soundfont else data_loader.Synthesizer.best()


def note_sine_waves(synthesizer):
    """Say that the songs will sound like sine waves, once the command is under way (a
    mistake in its options is reported alone, in one line)."""
    if synthesizer and not synthesizer.fluidsynth:
        print(f"note: the songs' WAV files are rendered with {synthesizer}", file=sys.stderr)


# --------------------------------------------------------------------------------------
# Generating
# --------------------------------------------------------------------------------------


def generate(args):
    run = RunFolder.open(args.run)
    state = run.load_state()
    decoder = keras.saving.load_model(run.model / "decoder.keras")
    seed = args.seed if args.seed is not None else int(np.random.default_rng().integers(2**31))
    folder = Path(args.output_dir) if args.output_dir else run.generated
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot write to {folder}: {error.strerror or error}") from None
    parameters, data = state["parameters"], state["data"]
    synthesizer = song_synthesizer(args)
    note_sine_waves(synthesizer)
    written = write_songs(
        decoder,
        fixed_latents(args.songs, decoder.input_shape[-1], seed),
        folder,
        "sample",
        threshold=args.threshold if args.threshold is not None else parameters["threshold"],
        notes=data["mean_notes"],
        bpm=args.bpm or parameters["bpm"],
        lowest_pitch=data["lowest_pitch"],
        synthesizer=synthesizer,
    )
    if folder.resolve() == run.generated.resolve():
        write_run_page(run, state)
    print(f"{len(written)} songs with seed {seed} in {folder}: " + ", ".join(f"{song.name} ({song.notes} notes)" for song in written))
    return 0


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------

EVALUATION_SAMPLES = 1000  # data samples the songs are compared with, and held-out ones reconstructed
EVALUATION_BATCH = 32


def evaluate_songs(encoder, decoder, song_paths, data_paths, held_out, threshold, notes, lowest_pitch, samples=EVALUATION_SAMPLES, seed=SEED):
    """Judge generated MIDI songs against the data, and the model on it.

    Parameters
    ----------
    encoder, decoder : keras.Model
    song_paths : list of Path
        Generated MIDI files; each is read back into onsets (what is heard).
    data_paths : list of Path
        Samples of the data; up to ``samples`` of them, drawn with ``seed``, are used.
    held_out : list of Path
        Samples the model has not trained on, reconstructed for precision and recall.
    threshold, notes
        The run's rule for which cells of a decoded song are notes (see song_notes).
    lowest_pitch : int

    Returns
    -------
    dict
        music_metrics.compare's results, plus ``latent`` (active units, KL per
        dimension and their sum, in nats), ``reconstruction`` (precision, recall, F1;
        None without held-out samples) and what was compared.
    """
    measures = encoder.input.shape[1]
    generated = {}
    stems = collections.Counter(path.stem for path in song_paths)
    for path in song_paths:
        try:
            generated[str(path) if stems[path.stem] > 1 else path.stem] = data_loader.midi_to_song(path, lowest_pitch, measures)
        except (data_loader.SkipFile, OSError) as error:
            print(f"warning: skipped {path}: {error}", file=sys.stderr)
    data_paths = subset(data_paths, samples, seed)
    real = [read_sample(path) for path in data_paths]
    results = music_metrics.compare(generated, real, lowest_pitch)
    z_mean, z_log_var = encode(encoder, real)
    kl = music_metrics.kl_per_dimension(z_mean, z_log_var)
    results["latent"] = {
        "active_units": int(np.sum(kl > music_metrics.ACTIVE_KL)),
        "of": len(kl),
        "kl_per_song": round(float(np.sum(kl)), 4),
        "kl_per_dimension": [round(float(value), 5) for value in kl],
    }
    held_out = subset(held_out, samples, seed)
    results["reconstruction"] = reconstruction_scores(encoder, decoder, held_out, threshold, notes) if held_out else None
    results["compared"] = {"songs": [str(path) for path in song_paths], "data_samples": len(data_paths), "held_out_samples": len(held_out)}
    return results


def subset(paths, count, seed):
    """Up to ``count`` of ``paths``, drawn at random with ``seed``: the same ones for the
    same paths in any order."""
    paths = sorted(paths)
    if len(paths) <= count:
        return paths
    chosen = np.random.default_rng(seed).choice(len(paths), size=count, replace=False)
    return [paths[i] for i in sorted(chosen)]


def read_sample(path):
    return (np.load(path) != 0).view(np.uint8)


def encode(encoder, songs):
    """(z_mean, z_log_var) of ``songs``, each (songs, latent), in batches."""
    means, log_variances = [], []
    for start in range(0, len(songs), EVALUATION_BATCH):
        batch = np.stack(songs[start : start + EVALUATION_BATCH]).astype(np.float32)
        z_mean, z_log_var, _ = encoder(ops.convert_to_tensor(batch), training=False)
        means.append(ops.convert_to_numpy(ops.cast(z_mean, "float32")))  # not bfloat16: numpy sums it badly
        log_variances.append(ops.convert_to_numpy(ops.cast(z_log_var, "float32")))
    latent = encoder.output[0].shape[-1]
    return np.concatenate(means or [np.zeros((0, latent))]), np.concatenate(log_variances or [np.zeros((0, latent))])


def reconstruction_scores(encoder, decoder, paths, threshold, notes):
    """Onset precision, recall and F1 of the decoded z_mean of each sample in ``paths``,
    with its notes picked as the run picks a song's notes."""
    correct = true_notes = predicted_notes = 0
    for start in range(0, len(paths), EVALUATION_BATCH):
        songs = [read_sample(path) for path in paths[start : start + EVALUATION_BATCH]]
        z_mean, _ = encode(encoder, songs)
        decoded = ops.convert_to_numpy(decoder(ops.convert_to_tensor(z_mean), training=False))
        for song, values in zip(songs, decoded):
            kept, song_threshold = song_notes(values, threshold, notes)
            predicted = kept >= song_threshold
            correct += np.count_nonzero(predicted & (song != 0))
            true_notes += np.count_nonzero(song)
            predicted_notes += np.count_nonzero(predicted)
    return {**music_metrics.scores_of_counts(correct, true_notes, predicted_notes), "samples": len(paths)}


def evaluation_image(results):
    """Generated and real distribution of every feature side by side, with their
    overlap, and the KL of each latent dimension, as an RGBA uint8 picture."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(16, 7), dpi=100)
    for number, (feature, (label, _)) in enumerate(music_metrics.FEATURES.items(), start=1):
        axes = figure.add_subplot(2, 4, number)
        real = np.array(results["data_features"][feature], np.float64)
        ours = np.array([values[feature] for values in results["songs"].values()], np.float64)
        real, ours = real[np.isfinite(real)], ours[np.isfinite(ours)]
        edges = np.histogram_bin_edges(np.concatenate([real, ours]), bins=20) if len(real) + len(ours) else 20
        axes.hist(real, bins=edges, density=True, color="0.6", label="data")
        axes.hist(ours, bins=edges, density=True, histtype="step", linewidth=2, color="tab:red", label="generated")
        overlap = results["features"][feature]["overlap"]
        axes.set_title(f"{label}\noverlap {overlap:.2f}" if overlap is not None else f"{label}\noverlap: no values", fontsize=10)
        axes.set_yticks([])
        if number == 1:
            axes.legend(fontsize=8)
    axes = figure.add_subplot(2, 4, 8)
    latent = results["latent"]
    kl = np.sort(latent["kl_per_dimension"])[::-1]
    axes.bar(np.arange(len(kl)), kl, width=1.0, color="tab:blue")
    axes.axhline(music_metrics.ACTIVE_KL, color="tab:red", linewidth=1)
    axes.set_yscale("symlog", linthresh=music_metrics.ACTIVE_KL)
    axes.set_title(f"KL per latent dimension, sorted\n{latent['active_units']} of {len(kl)} active (> {music_metrics.ACTIVE_KL}), {latent['kl_per_song']:.1f} nats in all", fontsize=10)
    return figure_pixels(figure)


def write_evaluation(run, results):
    """``RUN_DIR/evaluation.json`` (everything but the data's per-song values) and
    ``evaluation.png``; returns (the JSON's content, the picture)."""
    saved = finite({key: value for key, value in results.items() if key != "data_features"})
    image = evaluation_image(results)
    atomic_write(run.path / "evaluation.json", lambda path: Path(path).write_text(json.dumps(saved, indent=1, allow_nan=False)))
    atomic_write(run.path / "evaluation.png", png_writer(image))
    return saved, image


def finite(value):
    """``value`` with NaN (a feature a silent song has none of) as None: JSON has no NaN."""
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _number(value, digits=2):
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def evaluation_summary(results):
    """The evaluation's numbers over songs, as (label, value) pairs."""
    in_range, latent, scores = results["in_range"], results["latent"], results["reconstruction"]
    low, high = in_range["data_notes_10_90"]
    rows = [
        ("mean overlap with the data", _number(results["mean_overlap"])),
        ("diversity between the songs (the data's)", f"{_number(results['diversity'])} ({_number(results['data_diversity'])})"),
        (f"songs with {low:.0f}-{high:.0f} notes, the data's 10-90% range", f"{in_range['songs']} of {in_range['of']}"),
        ("silent songs", ", ".join(results["silent_songs"]) or "none"),
        (f"active latent units (mean KL > {music_metrics.ACTIVE_KL})", f"{latent['active_units']} of {latent['of']}"),
        # The mean KL bounds what the code can tell about a song: at 4 nats it tells at
        # most about e**4 = 55 songs apart, however many units pass the threshold.
        ("KL per song, all units (nats)", f"{latent['kl_per_song']:.2f}"),
    ]
    if scores:
        rows.append((f"reconstruction of {scores['samples']} held-out samples", f"precision {_number(scores['precision'])}, recall {_number(scores['recall'])}, F1 {_number(scores['f1'])}"))
    else:
        rows.append(("reconstruction", "no held-out samples"))
    return rows


def evaluation_table(results):
    """The evaluation as plain-text tables: features, summary, then song by song."""
    compared = results["compared"]
    lines = [f"{len(results['songs'])} songs against {compared['data_samples']} data samples", ""]
    lines.append(f"  {'feature':40}{'generated':>16}{'data':>16}{'overlap':>9}")
    for feature, (label, _) in music_metrics.FEATURES.items():
        values = results["features"][feature]
        generated = f"{_number(values['generated_mean'])} ± {_number(values['generated_sd'])}"
        data = f"{_number(values['data_mean'])} ± {_number(values['data_sd'])}"
        lines.append(f"  {label:40}{generated:>16}{data:>16}{_number(values['overlap']):>9}")
    lines.append("")
    lines += [f"  {label:54} {value}" for label, value in evaluation_summary(results)]
    if results["songs"]:
        width = max(len(name) for name in results["songs"]) + 2
        lines += ["", "  " + "song".ljust(width) + "".join(f"{short:>9}" for _, short in music_metrics.FEATURES.values())]
        for name, values in results["songs"].items():
            lines.append("  " + name.ljust(width) + "".join(f"{_number(values[feature]):>9}" for feature in music_metrics.FEATURES))
    return "\n".join(lines)


def evaluation_html(results):
    """The evaluation as HTML tables, for the run page."""
    escape = html.escape
    lines = ["<table><tr><th>feature</th><th>generated</th><th>data</th><th>overlap</th></tr>"]
    for feature, (label, _) in music_metrics.FEATURES.items():
        values = results["features"][feature]
        lines.append(
            f"<tr><td>{escape(label)}</td><td>{_number(values['generated_mean'])} ± {_number(values['generated_sd'])}</td>"
            f"<td>{_number(values['data_mean'])} ± {_number(values['data_sd'])}</td><td>{_number(values['overlap'])}</td></tr>"
        )
    lines.append("</table><table>")
    lines += [f"<tr><td>{escape(label)}</td><td>{escape(value)}</td></tr>" for label, value in evaluation_summary(results)]
    lines.append("</table>")
    return lines


def evaluation_scalars(results):
    """The evaluation's main numbers, for TensorBoard."""
    scalars = {f"overlap_{feature}": values["overlap"] for feature, values in results["features"].items()}
    scalars.update(mean_overlap=results["mean_overlap"], diversity=results["diversity"], active_units=results["latent"]["active_units"], kl_per_song=results["latent"]["kl_per_song"])
    scalars["songs_in_range"] = results["in_range"]["songs"] / max(results["in_range"]["of"], 1)
    for key in ("precision", "recall", "f1"):
        scalars[f"reconstruction_{key}"] = (results["reconstruction"] or {}).get(key)
    return {name: float(value) for name, value in scalars.items() if value is not None}


def find_songs(run, pattern):
    """The MIDI files that ``pattern`` matches: in ``RUN_DIR/generated/midi``, or where it
    says when it is absolute."""
    path = Path(pattern)
    try:
        if path.is_absolute():
            found = Path(path.anchor).glob(str(path.relative_to(path.anchor)))
        else:
            found = (run.generated / "midi").glob(pattern)
        songs = sorted(song for song in found if song.is_file())
    except (ValueError, IndexError, NotImplementedError):  # "", ".", "/" and other non-patterns
        raise UsageError(f"--songs {pattern!r} is not a pattern of MIDI files, such as 'final_*.mid'") from None
    if not songs:
        raise UsageError(f"no songs match {pattern!r} in {run.generated / 'midi'}")
    return songs


def evaluate(args):
    """The evaluate command: judge a run's songs and model against the data."""
    run = RunFolder.open(args.run)
    state = run.load_state()
    parameters, data = state["parameters"], state["data"]
    song_paths = find_songs(run, args.songs)
    shape = (data["measures"], data_loader.MEASURE_SIZE)
    data_dir = args.data or data["folder"]
    data_paths, _ = find_samples(data_dir, shape)
    if args.validation:
        held_out, _ = find_samples(args.validation, shape)
    elif Path(data["folder"]).is_dir():
        _, held_out = split_samples(find_samples(data["folder"], shape)[0], parameters["validation_split"], parameters["seed"], data["folder"])
    else:
        raise UsageError(f"the run's data folder {data['folder']} is gone, and with it its validation split: pass --validation SAMPLES_DIR")
    encoder = keras.saving.load_model(run.model / "encoder.keras")
    decoder = keras.saving.load_model(run.model / "decoder.keras")
    results = evaluate_songs(encoder, decoder, song_paths, data_paths, held_out, parameters["threshold"], data["mean_notes"], data["lowest_pitch"], args.samples, parameters["seed"])
    if not results["songs"]:
        raise UsageError(f"none of the {len(song_paths)} files that match {args.songs!r} is a readable MIDI file")
    results["compared"]["data_folder"] = str(Path(data_dir).resolve())
    state["evaluation"], _ = write_evaluation(run, results)
    run.save(state)
    write_run_page(run, state)
    print(f"Evaluation of {run.path.name}: " + evaluation_table(results))
    print(f"Wrote {run.path / 'evaluation.json'} and {run.path / 'evaluation.png'}")
    return 0


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def parse_args(argv=None):
    int_between, positive_float = data_loader.int_between, data_loader.positive_float
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    train_parser = commands.add_parser("train", help="train a VAE and write a run folder", description="Train the paper's VAE on a folder of samples; every run gets its own folder with songs after every epoch.")
    data = train_parser.add_argument_group("data and run")
    data.add_argument("--data", metavar="SAMPLES_DIR", help="folder of .npy samples made by data_loader.py (searched recursively)")
    data.add_argument("--run-name", default="RUN", help="name of the run; its folder is <output-dir>/<YYYYMMDDHHMMSS>_<run-name> (default: %(default)s)")
    data.add_argument("--run-info", default="", help="why this run: written at the top of its info file")
    data.add_argument("--output-dir", default="runs", help="where run folders go (default: %(default)s)")
    data.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last completed epoch, with its own parameters (--epochs may extend it)")
    model = train_parser.add_argument_group("model (paper, section 4.1)")
    model.add_argument("--measure-hidden", type=int_between(1), default=MEASURE_HIDDEN, help="hidden units of the measure encoder and decoder (default: %(default)s)")
    model.add_argument("--measure-features", type=int_between(1), default=MEASURE_FEATURES, help="features per measure (default: %(default)s)")
    model.add_argument("--song-hidden", type=int_between(1), default=SONG_HIDDEN, help="hidden units of the song VAE (default: %(default)s)")
    model.add_argument("--latent", type=int_between(1), default=LATENT, help="latent dimensions (default: %(default)s)")
    model.add_argument("--kl-weight", type=float, default=1.0, help="weight of the KL term in the loss (default: %(default)s)")
    model.add_argument("--reconstruction", choices=("mse", "bce"), default="mse", help="reconstruction loss summed over the song: squared error (the paper) or binary cross-entropy (default: %(default)s)")
    training = train_parser.add_argument_group("training (paper, section 3.4)")
    training.add_argument("--epochs", type=int_between(1), default=None, help=f"epochs to train (default: {EPOCHS})")
    training.add_argument("--batch-size", type=int_between(1), default=BATCH_SIZE, help="samples per step (default: %(default)s)")
    training.add_argument("--lr", type=positive_float, default=LEARNING_RATE, help="Adam's learning rate (default: %(default)s)")
    training.add_argument("--validation-split", type=share, default=VALIDATION_SPLIT, help="share of the songs held out for validation (default: %(default)s)")
    training.add_argument("--seed", type=int_between(0), default=SEED, help="seed of the weights, the data order and the songs' latent vectors (default: %(default)s)")
    training.add_argument("--cache", action="store_true", help="keep all samples in memory, bit-packed (18 KB each), when they fit in half of it; by default one batch at a time is read from disk")
    training.add_argument("--precision", choices=tuple(PRECISIONS), default="float32", help="compute precision: mixed bfloat16 or float16 keep the weights and the loss in float32 (default: %(default)s)")
    training.add_argument("--jit", action=argparse.BooleanOptionalAction, default=None, help="compile each step with XLA (default: where that is faster: with JAX, and with TensorFlow on a GPU)")
    training.add_argument("--log-every", type=int_between(1), default=LOG_EVERY, help="batches between per-batch TensorBoard points (default: %(default)s)")
    songs = train_parser.add_argument_group("songs")
    songs.add_argument("--songs-per-epoch", type=int_between(0), default=SONGS_PER_EPOCH, help="songs written after every epoch, from the same latent vectors each time (default: %(default)s)")
    songs.add_argument("--songs", type=int_between(0), default=FINAL_SONGS, help="songs written at the end (default: %(default)s)")
    add_song_options(songs)
    train_parser.set_defaults(run_command=train)

    generate_parser = commands.add_parser("generate", help="write new songs with a trained run's decoder", description="Decode random latent vectors with a run's decoder into .npy, MIDI and PNG songs.")
    generate_parser.add_argument("--run", required=True, metavar="RUN_DIR", help="a run folder made by train")
    generate_parser.add_argument("--songs", type=int_between(1), default=FINAL_SONGS, help="songs to write (default: %(default)s)")
    generate_parser.add_argument("--seed", type=int_between(0), default=None, help="seed of the latent vectors; the same seed gives the same songs (default: a new one, printed)")
    generate_parser.add_argument("--output-dir", help="folder for npy/, midi/ and img/ (default: RUN_DIR/generated)")
    add_song_options(generate_parser, bpm_default=None)
    generate_parser.set_defaults(run_command=generate)

    evaluate_parser = commands.add_parser("evaluate", help="judge a run's songs and model against the data", description="Compare a run's generated songs with the data (music features, their overlap, diversity), count the model's active latent units and score its reconstructions; writes RUN_DIR/evaluation.json and evaluation.png.")
    evaluate_parser.add_argument("--run", required=True, metavar="RUN_DIR", help="a run folder made by train")
    evaluate_parser.add_argument("--data", metavar="SAMPLES_DIR", help="samples to compare the songs with (default: the run's own data folder)")
    evaluate_parser.add_argument("--songs", default="final_*.mid", metavar="GLOB", help="MIDI files to judge, matched in RUN_DIR/generated/midi unless absolute (default: %(default)s)")
    evaluate_parser.add_argument("--validation", metavar="SAMPLES_DIR", help="held-out samples to reconstruct (default: the run's validation split)")
    evaluate_parser.add_argument("--samples", type=int_between(1), default=EVALUATION_SAMPLES, help="data and held-out samples used at most, drawn at random (default: %(default)s)")
    evaluate_parser.set_defaults(run_command=evaluate)
    return parser.parse_args(argv)


def add_song_options(parser, bpm_default=data_loader.DEFAULT_BPM):
    parser.add_argument("--threshold", type=probability, default=None, help="notes are the cells at or above this value (default: each song's own, so that it has as many notes as the average training sample)")
    parser.add_argument("--bpm", type=data_loader.positive_float, default=bpm_default, help="tempo of the MIDI files in quarter notes per minute (default: " + (f"{bpm_default:g})" if bpm_default else "the run's)"))
    parser.add_argument("--audio", action=argparse.BooleanOptionalAction, default=True, help="render every song as a WAV file too, with FluidSynth where installed, else with sine waves (default: on)")
    parser.add_argument("--soundfont", metavar="SF2", help="SoundFont for FluidSynth (default: the General MIDI one installed, e.g. Debian's fluid-soundfont-gm)")


def share(text):
    """An argparse type: a number from 0 up to, not including, 1."""
    value = data_loader.number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, not {text}")
    return value


def probability(text):
    """An argparse type: a number above 0, up to 1."""
    value = data_loader.number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, not {text}")
    return value


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
        print(f"music_generator.py: error: out of memory ({type(error).__name__}); try a smaller --batch-size", file=sys.stderr)
        return 1


def is_out_of_memory(error):
    """Each backend says it its own way: MemoryError, ResourceExhaustedError (TensorFlow),
    RESOURCE_EXHAUSTED (JAX/XLA), OutOfMemoryError (PyTorch)."""
    text = f"{type(error).__name__} {error}"
    return isinstance(error, MemoryError) or any(word in text for word in ("ResourceExhausted", "RESOURCE_EXHAUSTED", "OutOfMemory", "out of memory"))


if __name__ == "__main__":
    sys.exit(main())
