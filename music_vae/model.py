"""The paper's stacked VAE in Keras 3: its sizes, encoder, decoder and loss, and the
optimizer.

A measure encoder turns each of a song's 16 measures (96 x 96 onsets, flattened to 9216)
into 200 features through 2000 hidden units, with the same weights for every measure. The
song VAE encodes the 16 x 200 = 3200 song features through 1600 units into a
120-dimensional Gaussian. The decoder mirrors both (paper, sections 3.3.2 and 4.1). Loss:
squared error summed over the song, plus KL(N(mu, sigma) || N(0, 1)) summed over the latent
dimensions, averaged over the batch. Only the public Keras API is used, so that the model
trains on the TensorFlow, JAX and PyTorch backends alike. The classes keep the registered
package name "music_generator", under which runs saved their models before this module
existed, so that those still load.
"""

import contextlib
import dataclasses
import math

import numpy as np

from music_vae.backend import keras, layers, ops
from music_vae.samples import MEASURE_SIZE, MEASURES_PER_SAMPLE, PITCHES, STEPS_PER_MEASURE

# Keras mixed precision policies: weights and the loss stay float32.
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model's sizes and loss; the defaults are the paper's (sections 3.4 and 4.1).

    Attributes
    ----------
    measures : int
        Measures per song.
    measure_hidden, measure_features : int
        Hidden units of the measure encoder and decoder, and features per measure.
    song_hidden, latent : int
        Hidden units of the song VAE, and latent dimensions.
    kl_weight : float
        Weight of the KL term (1 in the paper).
    reconstruction : {"mse", "bce"}
        Squared error (the paper) or binary cross-entropy, summed over the song.
    note_weight : float
        Weight of the note cells' term of the reconstruction loss against the silent ones'
        (1: the same, the paper): more than 1 asks the decoder to commit to the notes it is
        unsure of, where about 998 cells in 1,000 are silent.
    kl_warmup, kl_cycle : int
        Epochs over which the KL weight rises from 0 to ``kl_weight``, once (a warm-up) or
        in the first half of every ``kl_cycle`` epochs (a cyclical schedule, Fu et al.,
        NAACL 2019); 0: the full weight throughout (the paper).
    free_bits : float
        Bits of KL per song that cost nothing (MusicVAE's free bits): the loss counts
        only the KL above them, so the code may carry that much about a song for free.
    dropout : float
        Share of the hidden units dropped in training, after every hidden layer (0: none,
        the paper).
    pitch_step_terms : bool
        Whether the measure encoder also reads each measure's pitch profile (its notes per
        pitch) and step profile (its notes per step), and the measure decoder adds a term per
        pitch and a term per step to every cell's logit (see PitchStepProfiles and
        PitchStepLogits); False: the paper's dense layers alone.
    latent_batch_norm : float
        Where not 0, z_mean is batch-normalised and scaled by this (a BN-VAE, Zhu et al.,
        ACL 2020): over a batch, each latent dimension's means then have a spread of this
        much, so that the KL cannot fall below about latent * latent_batch_norm**2 / 2 nats
        a song and the code cannot collapse to the prior; 0: none (the paper).
    """

    measures: int = MEASURES_PER_SAMPLE
    measure_hidden: int = 2000
    measure_features: int = 200
    song_hidden: int = 1600
    latent: int = 120
    kl_weight: float = 1.0
    reconstruction: str = "mse"
    note_weight: float = 1.0
    kl_warmup: int = 0
    kl_cycle: int = 0
    free_bits: float = 0.0
    dropout: float = 0.0
    pitch_step_terms: bool = False
    latent_batch_norm: float = 0.0


class SavesNoise:
    """For a layer with no weights that draws noise from ``self.seed_generator``: save the
    generator's position with the model. Keras saves a layer's own weights only, and
    without it a resumed run would draw other noise than the run never stopped."""

    def save_own_variables(self, store):
        store["0"] = ops.convert_to_numpy(self.seed_generator.state)

    def load_own_variables(self, store):
        if "0" in store.keys():  # models saved before the position was kept have none
            self.seed_generator.state.assign(store["0"])


@keras.saving.register_keras_serializable(package="music_generator")
class Sampling(SavesNoise, layers.Layer):
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


@keras.saving.register_keras_serializable(package="music_generator")
class Dropout(SavesNoise, layers.Dropout):
    """Keras' Dropout, whose masks a resumed run draws as the run never stopped would."""


def hidden(units, name, config):
    """A hidden ReLU layer of ``units``, followed by dropout where ``config`` has it: a
    function of its input."""
    dense = layers.Dense(units, activation="relu", name=name)
    if not config.dropout:
        return dense
    dropout = Dropout(config.dropout, name=f"{name}_dropout")
    return lambda x: dropout(dense(x))


@keras.saving.register_keras_serializable(package="music_generator")
class PitchStepProfiles(layers.Layer):
    """Songs (batch, measures, 9216) -> each measure's pitch profile and step profile,
    (batch, measures, 96 + 96): its share of steps with an onset at each pitch, then its
    share of pitches with an onset at each step.

    Fed to the measure encoder beside the cells, they hand it at once what a dense layer
    learns only slowly from 9,216 separate weights a row: which pitches a measure uses (its
    key and register) and where its onsets fall (its rhythm).
    """

    def call(self, songs):
        cells = ops.reshape(songs, (-1, songs.shape[1], PITCHES, STEPS_PER_MEASURE))
        return ops.concatenate([ops.mean(cells, axis=-1), ops.mean(cells, axis=-2)], axis=-1)


@keras.saving.register_keras_serializable(package="music_generator")
class PitchStepLogits(layers.Layer):
    """(cell logits (batch, measures, 9216), pitch terms (batch, measures, 96), step terms
    (batch, measures, 96)) -> logits (batch, measures, 9216): each cell's own, plus its
    pitch's and its step's term.

    The measure decoder then says "these pitches, on these steps" in 192 numbers a measure
    that every cell of a row or a column shares, where the dense layer alone must learn the
    same for each of its 9,216 cells apart; the cell terms say what is particular.
    """

    def call(self, inputs):
        cells, pitch_terms, step_terms = inputs
        grid = ops.reshape(cells, (-1, cells.shape[1], PITCHES, STEPS_PER_MEASURE))
        grid = grid + ops.expand_dims(pitch_terms, -1) + ops.expand_dims(step_terms, -2)
        return ops.reshape(grid, (-1, cells.shape[1], MEASURE_SIZE))


# The paper's TimeDistributed Dense layers are plain Dense layers here: on a (batch,
# measures, features) input, Dense works on the last axis with the same weights for every
# measure, which is what TimeDistributed means, but in one matrix product instead of 16
# (2-3x faster on a CPU). A test checks that both give the same output.


def build_encoder(config=ModelConfig()):
    """Song (measures, 9216) -> z_mean (latent), z_log_var (latent), z (latent)."""
    songs = keras.Input((config.measures, MEASURE_SIZE), name="song")
    x = songs
    if config.pitch_step_terms:
        x = layers.Concatenate(name="measure_and_profiles")([songs, PitchStepProfiles(name="profiles")(songs)])
    x = hidden(config.measure_hidden, "measure_hidden", config)(x)
    x = layers.Dense(config.measure_features, activation="relu", name="measure_features")(x)
    x = layers.Reshape((config.measures * config.measure_features,), name="song_features")(x)
    x = hidden(config.song_hidden, "song_hidden", config)(x)
    if config.latent_batch_norm:
        # Batch statistics, then a fixed scale: a learnt one would shrink to nothing, as the KL asks.
        means = layers.Dense(config.latent, name="z_mean_unnormalised")(x)
        means = layers.BatchNormalization(scale=False, name="z_mean_batch_norm")(means)
        z_mean = layers.Rescaling(config.latent_batch_norm, name="z_mean")(means)
    else:
        z_mean = layers.Dense(config.latent, name="z_mean")(x)
    z_log_var = layers.Dense(config.latent, name="z_log_var")(x)
    z = Sampling(name="z")([z_mean, z_log_var])
    return keras.Model(songs, [z_mean, z_log_var, z], name="encoder")


def build_decoder(config=ModelConfig(), note_density=None):
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
    z = keras.Input((config.latent,), name="z")
    x = hidden(config.song_hidden, "song_hidden", config)(z)
    x = layers.Dense(config.measures * config.measure_features, activation="relu", name="song_features")(x)
    x = layers.Reshape((config.measures, config.measure_features), name="measure_features")(x)
    x = hidden(config.measure_hidden, "measure_hidden", config)(x)
    # The largest product stays in the compute precision (bfloat16 with --precision); the
    # sigmoid and so the loss are float32.
    logits = layers.Dense(MEASURE_SIZE, bias_initializer=bias, name="song_logits")(x)
    if config.pitch_step_terms:
        pitch_terms = layers.Dense(PITCHES, name="pitch_terms")(x)
        step_terms = layers.Dense(STEPS_PER_MEASURE, name="step_terms")(x)
        logits = PitchStepLogits(name="cell_pitch_step_logits")([logits, pitch_terms, step_terms])
    song = layers.Activation("sigmoid", dtype="float32", name="song")(logits)
    return keras.Model(z, song, name="decoder")


@keras.saving.register_keras_serializable(package="music_generator")
class VAE(keras.Model):
    """The encoder and the decoder joined, trained on the paper's loss.

    Calling it returns (reconstructed songs, z_mean, z_log_var). ``fit`` logs ``loss``,
    ``reconstruction`` and ``kl`` (nats per song); ``loss = reconstruction + kl_weight *
    kl_share * (kl less free_bits)``, where the reconstruction counts the note cells
    ``note_weight`` times (the logged one counts them once). Both terms are sums over a
    song, averaged over the batch, so that the KL weighs against all 147,456 cells, not a
    per-cell mean.

    Parameters
    ----------
    kl_weight : float
        Weight of the KL term (1 in the paper).
    reconstruction : {"mse", "bce"}
        Squared error (the paper) or binary cross-entropy, summed over the song.
    free_bits : float
        Bits of KL per song that cost nothing (see ModelConfig).
    kl_schedule : bool
        Whether the KL weight follows a schedule: then ``kl_share``, the share of
        ``kl_weight`` in this epoch, is a variable that KLSchedule sets as each epoch begins
        (a compiled training step reads its new value); else the weight is constant.
    note_weight : float
        Weight of the note cells in the reconstruction loss (see ModelConfig).

    Attributes
    ----------
    replicas : int
        Devices that each compute the loss of their part of a batch, whose gradients the
        optimizer then sums (TensorFlow's MirroredStrategy; see distribute.py): the loss is
        divided by it, as Keras divides its built-in losses. 1 elsewhere, JAX's data
        parallelism included, whose step computes the loss of the whole batch.
    """

    def __init__(
        self, encoder, decoder, kl_weight=1.0, reconstruction="mse", free_bits=0.0, kl_schedule=False,
        note_weight=1.0, **kwargs,
    ):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.kl_weight = kl_weight
        self.reconstruction = reconstruction
        self.free_bits = free_bits
        self.kl_schedule = kl_schedule
        self.note_weight = note_weight
        self.kl_share = keras.Variable(1.0, trainable=False, dtype="float32", name="kl_share") if kl_schedule else 1.0
        self.replicas = 1
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")

    def call(self, songs, training=False):
        z_mean, z_log_var, z = self.encoder(self.unpacked(songs), training=training)
        return self.decoder(z, training=training), z_mean, z_log_var

    def unpacked(self, songs):
        """Songs as (batch, measures, 9216). Bit-packed ones, (batch, measures, 1152) uint8
        as np.packbits makes them, are unpacked here, on the model's device; so are the
        songs of a bank kept there, (rows, moves, bank) (see gathered_songs)."""
        if isinstance(songs, (tuple, list)):
            rows, moves, bank = songs
            songs = gathered_songs(bank, rows, moves)
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
        weighted = reconstruction
        if self.note_weight != 1:
            weighted = reconstruction + (self.note_weight - 1) * ops.mean(ops.sum(errors * songs, axis=(1, 2)))
        kl_per_song = -0.5 * ops.sum(1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=1)
        kl = ops.mean(kl_per_song)
        # Weighted by batch size, like Keras' own loss tracker, so that a short last batch
        # counts as much in every epoch mean.
        batch_size = ops.shape(songs)[0]
        self.reconstruction_tracker.update_state(reconstruction, sample_weight=batch_size)
        self.kl_tracker.update_state(kl, sample_weight=batch_size)
        if self.free_bits:
            kl = ops.mean(ops.maximum(kl_per_song - self.free_bits * math.log(2), 0.0))
        return (weighted + self.kl_weight * self.kl_share * kl) / self.replicas

    def get_config(self):
        return {
            **super().get_config(), "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder), "kl_weight": self.kl_weight,
            "reconstruction": self.reconstruction, "free_bits": self.free_bits, "kl_schedule": self.kl_schedule,
            "note_weight": self.note_weight,
        }

    @classmethod
    def from_config(cls, config):
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["decoder"] = keras.saving.deserialize_keras_object(config["decoder"])
        return cls(**config)


def gathered_songs(bank, rows, moves):
    """The songs of a batch, gathered from a bank of bit-packed measures on the model's
    device, as SongFiles(on_device=True) serves them: ``bank`` (measures in all + 1, 1152)
    uint8, its last row empty; ``rows`` (batch, measures) int32, the rows that make each
    song; ``moves`` (batch,) int32, the semitones each song moves up. Returns (batch,
    measures, 1152) uint8, what dataset.gathered makes of the same on the host.

    Every pitch row of 12 bytes is gathered from where its pitch was before the move; one
    from outside the window is taken from the empty measure.
    """
    bank, rows, moves = (ops.convert_to_tensor(x) for x in (bank, rows, moves))
    pitch_bytes = bank.shape[-1] // PITCHES
    sources = ops.arange(PITCHES, dtype="int32")[None, :] - moves[:, None]  # (batch, 96)
    inside = ops.logical_and(sources >= 0, sources < PITCHES)
    ids = rows[:, :, None] * PITCHES + sources[:, None, :]
    empty = (ops.shape(bank)[0] - 1) * PITCHES
    ids = ops.where(inside[:, None, :], ids, empty)
    pitch_rows = ops.take(ops.reshape(bank, (-1, pitch_bytes)), ids, axis=0)  # (batch, measures, 96, 12)
    return ops.reshape(pitch_rows, (-1, rows.shape[1], bank.shape[-1]))


def build_vae(config=ModelConfig(), note_density=None):
    """The VAE of ``config``, built; see build_decoder for ``note_density``."""
    # The decoder first: with a seed set, the order of the layers decides their starting weights.
    decoder = build_decoder(config, note_density)
    schedule = bool(config.kl_warmup or config.kl_cycle)
    vae = VAE(
        build_encoder(config), decoder, config.kl_weight, config.reconstruction, config.free_bits, schedule,
        config.note_weight, name="vae",
    )
    vae.build((None, config.measures, MEASURE_SIZE))
    return vae


def kl_share(epoch, warmup=0, cycle=0):
    """The share of the KL weight in ``epoch`` (counted from 0): rising linearly from 0 over
    the first ``warmup`` epochs, or over the first half of every ``cycle`` epochs, then 1;
    always 1 where both are 0."""
    if cycle:
        return min(1.0, (epoch % cycle) / (cycle / 2))
    if warmup:
        return min(1.0, epoch / warmup)
    return 1.0


@contextlib.contextmanager
def precision(name):
    """Compute in precision ``name`` (a key of PRECISIONS) inside the block: Keras keeps the
    policy in a process-wide global, which this sets and then puts back."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(PRECISIONS[name])
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


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
