"""Where in the latent space a run's songs come from: the prior N(0, I) that the VAE's KL
term pulls the codes towards (the paper), or a Gaussian fitted to where the encoder
actually puts the training songs.

A trained VAE rarely fills its prior. On vgmidi after 100 epochs (issue 13) the encoded
means of the training songs had a standard deviation of 0.25 per dimension, so z ~ N(0, I)
lands where no song was encoded and decodes to weak, scattered cells (its strongest cell
0.26 on average, against 0.75 for z from a Gaussian fitted to the codes). HackerPoet's
Composer samples from the principal components of the encoded songs for this reason; a
full-covariance Gaussian is the same density.
"""

import dataclasses
import io

import numpy as np

from music_vae.backend import keras, ops
from music_vae.dataset import read_sample, subset

DENSITY_FILE = "latent_density.npz"  # in a run's model/ folder, beside the models it was fitted with
DENSITY_SAMPLES = 512  # training songs encoded to fit it after every epoch: 4 for each of 120 x 120 covariances
ENCODE_BATCH = 32


def encode(encoder, songs):
    """(z_mean, z_log_var) of ``songs``, each (songs, latent) float32, in batches."""
    # Without the Sampling layer: its noise would move on, and training after it draw other noise.
    distribution = keras.Model(encoder.inputs, encoder.outputs[:2])
    means, log_variances = [], []
    for start in range(0, len(songs), ENCODE_BATCH):
        batch = np.stack(songs[start : start + ENCODE_BATCH]).astype(np.float32)
        z_mean, z_log_var = distribution(ops.convert_to_tensor(batch), training=False)
        means.append(ops.convert_to_numpy(ops.cast(z_mean, "float32")))  # not bfloat16: numpy sums it badly
        log_variances.append(ops.convert_to_numpy(ops.cast(z_log_var, "float32")))
    latent = encoder.output[0].shape[-1]
    return np.concatenate(means or [np.zeros((0, latent))]), np.concatenate(log_variances or [np.zeros((0, latent))])


@dataclasses.dataclass(frozen=True, eq=False)
class LatentDensity:
    """A Gaussian over the latent space, N(mean, scale @ scale.T).

    Attributes
    ----------
    mean : np.ndarray
        (latent,) float32.
    scale : np.ndarray
        (latent, latent) float32, lower triangular: the Cholesky factor of the covariance.
    """

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def prior(cls, latent):
        """N(0, I), the VAE's prior."""
        return cls(np.zeros(latent, np.float32), np.eye(latent, dtype=np.float32))

    @classmethod
    def fit(cls, codes):
        """The Gaussian of ``codes`` (songs, latent): their mean and covariance. A ridge of a
        millionth of the mean variance keeps the covariance invertible where the codes
        span fewer dimensions than the latent space (fewer songs, or collapsed units)."""
        codes = np.asarray(codes, np.float64)
        latent = codes.shape[1]
        covariance = np.cov(codes, rowvar=False).reshape(latent, latent) if len(codes) > 1 else np.eye(latent)
        ridge = 1e-6 * max(np.trace(covariance) / latent, 1e-12)
        scale = np.linalg.cholesky(covariance + ridge * np.eye(latent))
        return cls(codes.mean(axis=0).astype(np.float32), scale.astype(np.float32))

    def latents(self, noise, temperature=1.0):
        """Latent vectors for standard normal ``noise`` (count, latent): mean + temperature
        * scale @ noise, so that the same noise gives the same songs of every epoch."""
        return (self.mean + temperature * np.asarray(noise, np.float32) @ self.scale.T).astype(np.float32)

    def write(self, path):
        """Save as ``.npz`` at exactly ``path``; a ``write(path)`` function for atomic_write."""
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean, scale=self.scale)
        with open(path, "wb") as file:
            file.write(buffer.getbuffer())

    @classmethod
    def load(cls, path):
        with np.load(path) as arrays:
            return cls(arrays["mean"], arrays["scale"])


def fit_density(encoder, paths, seed):
    """The LatentDensity of the encoded means of up to DENSITY_SAMPLES of ``paths``
    (training samples), drawn with ``seed``."""
    z_mean, _ = encode(encoder, [read_sample(path) for path in subset(paths, DENSITY_SAMPLES, seed)])
    return LatentDensity.fit(z_mean)
