"""Moving through a run's latent space (the paper's outlook, its section 5.4): MIDI files
encoded to their place in it, the path between two places (slerp), places around one
(latents_around), and the principal components of the encoded training songs, the axes
the explore page's sliders move along (as HackerPoet's Composer does). The commands that
use them are in commands.py.
"""

import dataclasses

import numpy as np

from music_vae.files import UsageError
from music_vae.latent import encode
from music_vae.samples import SkipFile, midi_to_samples, midi_to_song, read_midi


def read_song(path, settings, first_measure=None):
    """A MIDI file's song: its ``settings.measures`` measures from ``first_measure`` (counted
    from 0, a pickup bar included), or, where that is None, its first sample as
    data_loader.py cuts it. (measures, 9216) uint8 onsets.

    Raises
    ------
    UsageError
        The file is missing, not readable MIDI, gives no sample, or has no note in those
        measures.
    """
    try:
        midi = read_midi(path)
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist") from None
    except (SkipFile, OSError) as error:
        raise UsageError(f"{path} is not a readable MIDI file: {error}") from None
    if first_measure is None:
        try:
            return midi_to_samples(midi, settings).samples[0]
        except SkipFile as error:
            raise UsageError(f"{path} gives no sample: {error}; --measure M takes its measures from M") from None
    song = midi_to_song(midi, settings, first_measure)
    if not song.any():
        last = first_measure + settings.measures
        raise UsageError(f"{path} has no notes in measures {first_measure + 1}-{last}; try another --measure")
    return song


def encode_midi(encoder, path, settings, first_measure=0):
    """The latent mean of a MIDI file's song (see read_song): (latent,) float32, and the
    song, (measures, 9216) uint8.

    Raises
    ------
    UsageError
        As read_song.
    """
    song = read_song(path, settings, first_measure)
    z_mean, _ = encode(encoder, [song])
    return z_mean[0], song


def slerp(start, end, fractions):
    """Points between latent vectors ``start`` and ``end`` (latent,) at ``fractions`` (0:
    ``start``, 1: ``end``) along the great circle between them, as MusicVAE interpolates:
    a straight line would pass near the origin, where a Gaussian code has few songs.
    Returns (len(fractions), latent) float32; a straight line where the two are parallel."""
    start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
    fractions = np.asarray(fractions, np.float64)[:, None]
    cosine = start @ end / max(np.linalg.norm(start) * np.linalg.norm(end), 1e-12)
    angle = np.arccos(np.clip(cosine, -1.0, 1.0))
    if angle < 1e-6:
        return ((1 - fractions) * start + fractions * end).astype(np.float32)
    return ((np.sin((1 - fractions) * angle) * start + np.sin(fractions * angle) * end) / np.sin(angle)).astype(
        np.float32
    )


def latents_around(center, density, count, spread, seed):
    """``count`` latent vectors around ``center`` (latent,): ``center`` moved as ``density``
    (a LatentDensity) spreads the songs, scaled by ``spread`` (1: as far as its songs lie
    from its mean), with noise drawn with ``seed``: the same seed gives the same variations.
    (count, latent) float32."""
    noise = np.random.default_rng(seed).standard_normal((count, len(center))).astype(np.float32)
    return (np.asarray(center, np.float32) + spread * noise @ density.scale.T).astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class PrincipalComponents:
    """The principal axes of the encoded training songs, from the LatentDensity fitted to
    them (its covariance is theirs), so that a run's sliders need nothing else saved.

    Attributes
    ----------
    mean : np.ndarray
        (latent,) float32: the mean code, where every slider is 0.
    axes : np.ndarray
        (components, latent) float32, orthonormal rows, the most varied first.
    deviations : np.ndarray
        (components,) float32: the codes' standard deviation along each axis, a slider's unit.
    """

    mean: np.ndarray
    axes: np.ndarray
    deviations: np.ndarray

    @classmethod
    def of_density(cls, density, components):
        """The first ``components`` principal components of the codes ``density`` (a
        LatentDensity) was fitted to: the eigenvectors of its covariance, the largest first."""
        scale = np.asarray(density.scale, np.float64)
        variances, vectors = np.linalg.eigh(scale @ scale.T)  # ascending
        order = np.argsort(variances)[::-1][:components]
        deviations = np.sqrt(np.maximum(variances[order], 0.0))
        axes = vectors[:, order].T
        return cls(np.asarray(density.mean, np.float32), axes.astype(np.float32), deviations.astype(np.float32))

    def latents(self, positions):
        """Latent vectors of slider ``positions`` (count, components), in standard deviations
        along each axis: (count, latent) float32."""
        return (self.mean + (np.asarray(positions, np.float32) * self.deviations) @ self.axes).astype(np.float32)

    def positions(self, latents):
        """Slider positions of ``latents`` (count, latent): their projections on the axes, in
        standard deviations (what they have off the axes is lost)."""
        return ((np.asarray(latents, np.float32) - self.mean) @ self.axes.T / self.deviations).astype(np.float32)
