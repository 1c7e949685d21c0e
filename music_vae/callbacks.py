"""What happens during ``fit``, epoch by epoch: speed, the record of each completed epoch
(models, songs, state, page), Ctrl-C, and TensorBoard."""

import dataclasses
import gc
import math
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from music_vae.audio import AUDIO_SAMPLE_RATE
from music_vae.backend import keras, ops
from music_vae.distribute import undistributed
from music_vae.evaluation import evaluation_scalars, reconstruction_scores
from music_vae.files import quiet_stderr
from music_vae.latent import LatentDensity, fit_density
from music_vae.model import kl_share
from music_vae.run_page import write_run_page
from music_vae.songs import fitted_rule, write_songs


# Callbacks that act after a training batch say ``async_safe``: then, with JAX (and PyTorch),
# Keras calls them on its own threads once each step's losses are ready, and fit dispatches the
# next step at once instead of waiting for every step to end (a callback without it makes fit
# wait). Those calls may come a little out of order: each takes a lock, and a call for a batch
# older than the last one seen does not move it back. TensorFlow calls them in order, as each
# step ends.


class Speedometer(keras.callbacks.Callback):
    """Adds ``samples_per_s`` and ``mfu`` to the logs, so that the progress bar,
    TensorBoard and the info file show them.

    MFU, the model FLOPs utilisation, is the share of the machine's peak matrix-product
    speed that training achieves, as nanoGPT reports it. Each epoch is timed from the start
    of its first batch; the first step of a run, which compiles, is not timed.
    """

    async_safe = True

    def __init__(self, samples, batch_size, flops_per_sample, peak):
        super().__init__()
        self.samples = samples
        self.batch_size = batch_size
        self.flops_per_sample = flops_per_sample
        self.peak = peak
        self.lock = threading.Lock()
        self.compiled = False
        self.started = None

    def on_epoch_begin(self, epoch, logs=None):
        self.started, self.latest = None, None

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0 and self.compiled:
            self.started, self.first = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        with self.lock:
            if self.started is None:  # the run's first step: timed from its end
                self.compiled, self.started, self.first = True, now, batch + 1
            elif self.latest is None or batch + 1 > self.latest[0]:
                self.latest = (batch + 1, now)
            if logs is not None and self.latest:
                logs.update(self.speed())

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.latest:
            logs.update(self.speed())

    def speed(self):
        """samples_per_s and mfu of the epoch so far."""
        done, now = self.latest
        samples = min(done * self.batch_size, self.samples) - min(self.first * self.batch_size, self.samples)
        samples_per_s = samples / (now - self.started)
        return {"samples_per_s": samples_per_s, "mfu": samples_per_s * self.flops_per_sample / self.peak}


class StepsAhead(keras.callbacks.Callback):
    """Keep fit at most ``limit`` steps ahead of the last step whose losses are ready: with
    async-safe callbacks alone, it would dispatch an epoch's steps as fast as it reads
    batches, each holding its batch in memory until it runs. First among the callbacks, so
    that it counts a batch before any other can fail on it."""

    async_safe = True

    def __init__(self, limit=8):
        super().__init__()
        self.limit = limit
        self.ready = threading.Condition()
        self.done = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.done = 0  # the previous epoch's steps have all ended (Keras waits for them)

    def on_train_batch_begin(self, batch, logs=None):
        with self.ready:
            # A minute at most: should a callback fail before counting its batch, Keras raises
            # its error at the next dispatch, which must come.
            self.ready.wait_for(lambda: batch - self.done < self.limit, timeout=60)

    def on_train_batch_end(self, batch, logs=None):
        with self.ready:
            self.done = max(self.done, batch + 1)
            self.ready.notify_all()


class ProgressBar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, which knows whether it has left a line unfinished. Given to
    ``fit`` before EpochEnd, it ends an epoch's line before EpochEnd says what it saved;
    ``end_line`` ends a line that a stop left unfinished, before the stop is reported."""

    async_safe = True

    def __init__(self):
        super().__init__()
        self.line_open = False
        self.lock = threading.Lock()
        self.shown = -1

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self.shown = -1

    def on_train_batch_end(self, batch, logs=None):
        with self.lock:
            if batch > self.shown:
                self.shown = batch
                super().on_train_batch_end(batch, logs)
                self.line_open = self.verbose == 1  # a bar drawn over and over on one line, ended with the epoch

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self.line_open = False

    def end_line(self):
        if self.line_open:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.line_open = False


class EpochEnd(keras.callbacks.Callback):
    """After every epoch: stop on a non-finite loss (keeping the last good model), else
    save the models (and the latent density fitted to the training songs, where the songs
    are drawn from it), write the songs of the fixed noise, score how much of a few songs
    their reconstructions rebuild, and record the epoch in the run state. A kill before the
    record leaves the run as it was after the previous epoch (see RunFolder.recover); one
    after it, the epoch complete."""

    def __init__(
        self, run, state, noise, style, tensorboard, density_paths=None, temperature=1.0, seed=0, models=None,
        rebuilt=None,
    ):
        super().__init__()
        self.run = run
        self.state = state
        self.noise = noise  # (songs, latent) standard normal, the same every epoch
        self.style = style  # a SongStyle
        self.tensorboard = tensorboard  # a TensorBoardLog, or None
        self.density_paths = density_paths  # training samples to fit the density to; None: the prior
        self.temperature = temperature
        self.seed = seed
        self.models = models  # a distribute.LocalCopy to make the songs with; None: the model itself
        # {"f1": a few training songs, "val_f1": a few validation songs}: the onset F1 of their
        # reconstructions, every epoch, is how well the code knows a song it trained on and one it did not.
        self.rebuilt = rebuilt or {}
        self.stopped = None

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        losses = {name: float(value) for name, value in (logs or {}).items()}
        if not all_finite(losses):
            self.stopped = f"the loss became {losses.get('loss')} in epoch {epoch + 1}"
            self.model.stop_training = True
            return
        with undistributed():  # the few songs and the saving are this process's alone
            self.record(epoch, losses)

    def record(self, epoch, losses):
        """Save the models, write the songs and record ``epoch`` (counted from 0)."""
        models = self.models.update() if self.models else self.model
        if self.density_paths:
            density = fit_density(models.encoder, self.density_paths, self.seed)
        else:
            density = LatentDensity.prior(self.noise.shape[1])
        self.run.save_models(self.model, epoch + 1, density if self.density_paths else None)
        rule = fitted_rule(self.style.rule, models.decoder, density, self.temperature, self.seed)
        latents = density.latents(self.noise, self.temperature)
        prefix = f"epoch{epoch + 1:03d}"
        style = dataclasses.replace(self.style, rule=rule)
        written = write_songs(models.decoder, latents, self.run.generated, prefix, style)
        scores = {
            key: reconstruction_scores(models.encoder, models.decoder, songs, rule)["f1"]
            for key, songs in self.rebuilt.items()
            if songs
        }
        scores = {key: score for key, score in scores.items() if score is not None}
        row = {"epoch": epoch + 1, **losses, **scores, "seconds": time.perf_counter() - self.started}
        # One call, which a second Ctrl-C cannot split: the history and the count agree.
        self.state.update(history=[*self.state["history"], row], epochs_done=epoch + 1)
        self.run.save(self.state)
        self.run.use_models(epoch + 1)
        if self.tensorboard:
            self.tensorboard.songs(written, epoch + 1)
            self.tensorboard.epoch_scalars(scores, epoch + 1)
        write_run_page(self.run, self.state)
        # Every picture leaves megabytes in matplotlib's reference cycles, which Python's
        # collector frees only now and then: memory would climb for epochs, then drop.
        # Freeing them now keeps it flat (160 ms on a 2-core machine).
        gc.collect()
        notes = ", ".join(str(song.notes) for song in written)
        rebuilt = ", ".join(f"{key} {score:.3f}" for key, score in scores.items())
        details = f"; songs with {notes} notes" if written else ""
        details += f"; reconstruction {rebuilt}" if rebuilt else ""
        print(f"epoch {epoch + 1}: model saved{details}")


class NonFiniteStop(keras.callbacks.Callback):
    """Stop training at a batch whose loss is not finite, and after an epoch whose losses
    are not all (as EpochEnd does in the process that writes the run: the other processes
    of a run must stop with it). Keras' TerminateOnNaN does the first, but makes fit wait
    for every step (it is not async-safe)."""

    async_safe = True

    def on_train_batch_end(self, batch, logs=None):
        if not math.isfinite(float((logs or {}).get("loss", 0.0))):
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if not all_finite(logs or {}):
            self.model.stop_training = True


def all_finite(logs):
    """Whether every number in ``logs`` (an epoch's losses and measures) is finite."""
    return all(math.isfinite(float(value)) for value in logs.values())


class KLSchedule(keras.callbacks.Callback):
    """Set the VAE's share of its KL weight as each epoch begins (see model.kl_share), and
    log it as ``kl_share``."""

    def __init__(self, warmup, cycle):
        super().__init__()
        self.warmup, self.cycle = warmup, cycle

    def on_epoch_begin(self, epoch, logs=None):
        self.share = kl_share(epoch, self.warmup, self.cycle)
        self.model.kl_share.assign(self.share)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["kl_share"] = self.share


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
        # Only the main thread may handle signals; and a process started with SIGINT ignored
        # (in the background, by nohup) keeps ignoring it, as Python itself does.
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
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

    async_safe = True

    def __init__(self, log_dir, every):
        super().__init__()
        import tensorflow as tf

        self.summary = tf.summary
        self.writers = {
            name: tf.summary.create_file_writer(str(Path(log_dir) / name)) for name in ("train", "validation", "songs")
        }
        self.log_dir = Path(log_dir)
        self.every = every
        self.lock = threading.Lock()

    @staticmethod
    def create(log_dir, every):
        """The logger, or None (with a note) where TensorFlow or TensorBoard is missing:
        the event files are written through tf.summary, whatever Keras' backend."""
        try:
            with quiet_stderr():
                import tensorboard  # noqa: F401
                import tensorflow  # noqa: F401
        except ImportError:
            print("note: no TensorBoard logs: they need the tensorflow and tensorboard packages", file=sys.stderr)
            return None
        return TensorBoardLog(log_dir, every)

    def _scalars(self, writer, prefix, logs, step):
        with self.lock, self.writers[writer].as_default():
            for name, value in logs.items():
                self.summary.scalar(f"{prefix}_{name}", float(value), step=step)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = self.epoch * self.params["steps"] + batch + 1  # batches since the run began
        if step % self.every == 0 and logs:
            self._scalars("train", "batch", logs, step)

    def on_epoch_end(self, epoch, logs=None):
        logs = {**(logs or {}), "learning_rate": ops.convert_to_numpy(self.model.optimizer.learning_rate)}
        self.epoch_scalars(logs, epoch + 1)

    def epoch_scalars(self, logs, epoch):
        """``logs`` of ``epoch`` (counted from 1) as ``epoch_*`` scalars: ``val_*`` in
        ``validation/``, the others in ``train/``."""
        self._scalars("train", "epoch", {k: v for k, v in logs.items() if not k.startswith("val_")}, epoch)
        self._scalars("validation", "epoch", {k[4:]: v for k, v in logs.items() if k.startswith("val_")}, epoch)
        for writer in self.writers.values():
            writer.flush()

    def songs(self, written, epoch, sample_rate=AUDIO_SAMPLE_RATE):
        """Show the pictures of ``written`` (WrittenSongs) at ``epoch``, and play their
        audio where they have some."""
        with self.writers["songs"].as_default():
            for song in written:
                tag = song.name.split("_", 1)[1]
                self.summary.image(tag, song.image[np.newaxis], step=epoch)
                if song.audio is not None:
                    with quiet_stderr():  # TensorFlow's WAV encoder logs a line about oneDNN
                        self.summary.audio(
                            f"{tag}_audio", song.audio[np.newaxis, :, np.newaxis], sample_rate, step=epoch,
                            encoding="wav",
                        )
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
