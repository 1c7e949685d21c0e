"""Moving through a run's latent space (the paper's outlook, its section 5.4): songs of
MIDI files encoded to their place in it (the encode command) and decoded from there
(reconstruct), songs along the path between two of them (interpolate) and around one
(variations), and the principal components of the encoded training songs, the axes the
explore page's sliders move along (as HackerPoet's Composer does).
"""

import dataclasses
from pathlib import Path

import numpy as np

from music_vae.evaluation import reconstruct, reconstruction_text
from music_vae.files import UsageError, atomic_write, npy_writer
from music_vae.latent import encode
from music_vae.model import keras
from music_vae.music_metrics import onset_scores
from music_vae.run_folder import RunFolder, data_settings
from music_vae.run_songs import RunSongs, song_list
from music_vae.samples import SkipFile, midi_to_samples, midi_to_song, read_midi
from music_vae.songs import NoteRule
from music_vae.explore_server import Explorer, make_server


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


def variations(center, density, count, spread, seed):
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


def encode_command(args):
    """The encode command: each MIDI file's latent mean, saved as ``.npy``."""
    run = RunFolder.open(args.run)
    state = run.load_state()
    encoder = keras.saving.load_model(run.model / "encoder.keras")
    settings = data_settings(state)
    folder = Path(args.output_dir) if args.output_dir else run.path / "encoded"
    codes = [(path, *encode_midi(encoder, path, settings, args.measure - 1)) for path in args.midi]
    folder.mkdir(parents=True, exist_ok=True)
    for path, z_mean, song in codes:
        target = folder / f"{Path(path).stem}.npy"
        atomic_write(target, npy_writer(z_mean))
        measures = f"{args.measure}-{args.measure + settings.measures - 1}"
        code = f"{len(z_mean)} numbers, norm {np.linalg.norm(z_mean):.2f}"
        print(f"{path}: {song.sum()} notes in measures {measures} -> {target} ({code})")
    return 0


def reconstruct_command(args):
    """The reconstruct command: each MIDI file's song as the run's model rebuilds it (its
    code decoded), saved as NAME_reconstruction beside NAME_original (the measures it was
    given), with how much of the song the rebuild keeps."""
    settings = data_settings(RunFolder.open(args.run).load_state())  # the files first: a mistake is said alone
    first_measure = None if args.measure is None else args.measure - 1
    originals = [read_song(path, settings, first_measure) for path in args.midi]
    songs = RunSongs(args)
    values, notes = reconstruct(songs.encoder, songs.decoder, originals, songs.style.rule)
    names = [Path(path).stem for path in args.midi]
    songs.save(np.stack(originals), [f"{name}_original" for name in names], NoteRule(threshold=0.5))
    songs.save(values, [f"{name}_reconstruction" for name in names])
    for path, original, rebuilt in zip(args.midi, originals, notes):
        print(f"{path}: {rebuilt.sum()} notes rebuilt of its {original.sum()}: {agreement(original, rebuilt)}")
    print(f"Wrote NAME_original and NAME_reconstruction in {songs.folder} for {', '.join(names)}")
    return 0


def agreement(song, notes):
    """How far ``notes`` (a song's onsets) rebuild ``song``, in words: precision, recall and F1,
    exact and within a step."""
    exact, near = onset_scores(song, notes), onset_scores(song, notes, tolerance=1)
    return reconstruction_text({**exact, "within_1_step": near})


def interpolate_command(args):
    """The interpolate command: songs along the path between two MIDI files' latent means,
    their reconstructions at the ends, and how much of each file its end keeps."""
    songs = RunSongs(args)
    start, first = encode_midi(songs.encoder, args.start, songs.settings, args.measure - 1)
    end, last = encode_midi(songs.encoder, args.end, songs.settings, args.measure - 1)
    written = songs.write(slerp(start, end, np.linspace(0, 1, args.steps)), "interpolation")
    print(f"{len(written)} songs from {args.start} to {args.end} in {songs.folder}: {song_list(written)}")
    _, ends = reconstruct(songs.encoder, songs.decoder, [first, last], songs.style.rule)
    for written_song, path, song, notes in zip((written[0], written[-1]), (args.start, args.end), (first, last), ends):
        print(f"  {written_song.name} against {path}: {agreement(song, notes)}")
    return 0


def variations_command(args):
    """The variations command: songs around a MIDI file's latent mean."""
    songs = RunSongs(args)
    center, _ = encode_midi(songs.encoder, args.midi, songs.settings, args.measure - 1)
    seed = args.seed if args.seed is not None else int(np.random.default_rng().integers(2**31))
    written = songs.write(variations(center, songs.density, args.songs, args.spread, seed), "variation")
    print(f"{len(written)} variations of {args.midi} with seed {seed} in {songs.folder}: {song_list(written)}")
    return 0


def run_explorer(songs, sliders):
    """The Explorer of a run (a RunSongs): ``sliders`` principal components of the density
    of its encoded training songs (fitted and saved once, where the run has none)."""
    data = songs.run.latent_density("data", songs.decoder.input_shape[-1], songs.fit_density)
    return Explorer(
        songs.decoder, songs.encoder, PrincipalComponents.of_density(data, sliders), songs.density,
        songs.style.rule, songs.settings, songs.parameters["bpm"], songs.run.path.name,
    )


def explore_command(args):
    """The explore command: the explore page of a run, served until Ctrl-C."""
    songs = RunSongs(args)
    server = make_server(run_explorer(songs, args.sliders), args.host, args.port)
    host, port = server.server_address[:2]
    print(f"Exploring {songs.run.path.name} at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0
