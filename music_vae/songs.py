"""Songs from the decoder: which of their cells are notes, and the files each is saved as
(its values as .npy, its notes as MIDI, a piano-roll picture, and its sound as WAV)."""

import dataclasses
import math
import sys
from typing import NamedTuple

import numpy as np

from music_vae.audio import wav_writer
from music_vae.backend import ops
from music_vae.files import atomic_write, figure_pixels, npy_writer, png_writer
from music_vae.samples import PITCHES, STEPS_PER_MEASURE, piano_roll, seconds_per_step, song_seconds, song_to_midi

MIN_THRESHOLD = 1e-6  # a note needs at least this value, even among the strongest cells
CALIBRATION_SONGS = 64  # songs decoded to calibrate one threshold for all songs


@dataclasses.dataclass(frozen=True)
class NoteRule:
    """Which cells of a decoded song are notes.

    Attributes
    ----------
    threshold : float or None
        Notes are the cells at or above it, whatever ``method`` says.
    notes : float
        Notes of an average song: the average training sample's.
    method : {"per-song", "calibrated", "expected"}
        Without a threshold: "per-song" keeps each song's ``notes`` strongest cells (each
        song its own threshold, the same note count for all); "calibrated" uses one
        threshold for all songs, set by ``calibrated`` so that songs have ``notes`` notes on
        average, each as many as its values say; "expected" keeps the strongest cells of
        each measure, as many as its values sum to (the note count a decoder of note
        probabilities expects there, which varies from measure to measure and song to song
        as the data's does) times ``count_scale``, rounded.
    max_pitches_per_step : int
        Where not 0, only the strongest this many pitches of a step can be notes: a cap
        on the stacked chords of a blurred song.
    count_scale : float
        Of "expected": set by ``calibrated`` so that songs have ``notes`` notes on average,
        where the decoder expects fewer or more than the data have (a blurred song's
        values sum to fewer).
    """

    threshold: float = None
    notes: float = 0
    method: str = "per-song"
    max_pitches_per_step: int = 0
    count_scale: float = 1.0

    @classmethod
    def of_run(cls, config, notes):
        """The rule of a run's ``config`` (its TrainConfig), for ``notes`` notes a song."""
        return cls(config.threshold, notes, method=config.note_rule, max_pitches_per_step=config.max_pitches_per_step)

    def apply(self, song):
        """(``song`` with the cells that are not notes set to 0, the threshold its notes pass)."""
        capped = strongest_per_step(song, self.max_pitches_per_step) if self.max_pitches_per_step else song
        if self.threshold is not None:
            return capped, self.threshold
        if self.method == "expected":
            return expected_cells(capped, self.count_scale * np.sum(song, axis=-1))
        return strongest_cells(capped, self.notes)

    @property
    def calibrates(self):
        """Whether the rule needs songs of the decoder to set its threshold or count scale."""
        return self.method != "per-song" and self.threshold is None

    def calibrated(self, songs):
        """This rule, calibrated so that ``songs`` (count, measures, 9216 values from the
        decoder) have ``notes`` notes each on average: with one threshold for all songs, or
        the scale of the expected counts (``method``); per-song needs no calibration."""
        if not self.calibrates or len(songs) == 0:
            return self
        if self.method == "expected":
            expected = float(np.mean(np.sum(songs, axis=(1, 2), dtype=np.float64)))
            return dataclasses.replace(self, count_scale=self.notes / expected if expected > 0 else 1.0)
        if self.max_pitches_per_step:
            songs = np.stack([strongest_per_step(song, self.max_pitches_per_step) for song in songs])
        values, wanted = np.ravel(songs), self.notes * len(songs)
        _, threshold = strongest_cells(values, wanted)
        # A bfloat16 decoder gives thousands of cells the same value: of the threshold at that
        # value and the one just above it, the one whose note count comes nearer to the wish.
        above = values[values > threshold]
        if len(above) and abs(len(above) - wanted) < abs(np.count_nonzero(values >= threshold) - wanted):
            threshold = float(above.min())
        return dataclasses.replace(self, threshold=threshold)


@dataclasses.dataclass(frozen=True)
class SongStyle:
    """How a run's songs are written: which cells are notes, the tempo in quarter notes a
    minute, MIDI note of pitch row 0, and the Synthesizer of their WAV files (None: none)."""

    rule: NoteRule
    bpm: float
    lowest_pitch: int
    synthesizer: object = None


class WrittenSong(NamedTuple):
    name: str
    notes: int
    image: np.ndarray  # (height, width, 4) uint8 piano roll
    audio: np.ndarray  # (samples,) float32, or None without a synthesizer


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


def expected_cells(song, counts):
    """``song`` (measures, 9216) with all but the ``round(counts[m])`` strongest cells of
    each measure m set to 0, and the threshold those cells pass: the weakest of them (at
    least MIN_THRESHOLD)."""
    kept = np.zeros_like(song)
    weakest = math.inf
    for measure, (values, count) in enumerate(zip(song, np.round(counts).astype(int))):
        if count > 0:
            kept[measure], threshold = strongest_cells(values, count)
            weakest = min(weakest, threshold)
    return kept, weakest if math.isfinite(weakest) else 1.0  # no note: any threshold above 0 says so


def strongest_per_step(song, count):
    """``song`` (measures, 9216) with all but the ``count`` strongest pitches of every step
    set to 0."""
    cells = np.array(song).reshape(len(song), PITCHES, STEPS_PER_MEASURE)
    if count < PITCHES:
        weakest = np.argpartition(cells, PITCHES - count, axis=1)[:, : PITCHES - count]
        np.put_along_axis(cells, weakest, 0, axis=1)
    return cells.reshape(np.shape(song))


def fixed_noise(count, latent, seed):
    """The same ``count`` standard normal vectors (count, latent) for the same seed, which a
    LatentDensity turns into latent vectors: the songs heard every epoch."""
    return np.random.default_rng(seed).standard_normal((count, latent)).astype(np.float32)


def song_source(run, config, notes, decoder, fit):
    """Where the songs of ``run`` (a RunFolder) with ``config`` (its TrainConfig) come
    from, and which of their cells are notes, for ``notes`` notes a song: (LatentDensity,
    NoteRule). ``fit()`` fits the density where the run has none yet."""
    density = run.latent_density(config.sample_from, decoder.input_shape[-1], fit)
    rule = NoteRule.of_run(config, notes)
    return density, fitted_rule(rule, decoder, density, config.temperature, config.seed)


def fitted_rule(rule, decoder, density, temperature, seed):
    """``rule``, calibrated where it calibrates on CALIBRATION_SONGS songs of ``decoder``
    drawn from ``density`` (a LatentDensity) at ``temperature``."""
    if not rule.calibrates:
        return rule
    noise = fixed_noise(CALIBRATION_SONGS, len(density.mean), seed + 2)  # seed, seed + 1: the songs' noise
    return rule.calibrated(decode(decoder, density.latents(noise, temperature)))


def decode(decoder, latents):
    """The songs of ``latents`` (count, latent): (count, measures, 9216) float32 values."""
    # A direct call: for a few vectors, predict() only adds an iterator and callbacks.
    return ops.convert_to_numpy(decoder(ops.convert_to_tensor(np.asarray(latents, np.float32)), training=False))


def write_songs(decoder, latents, folder, prefix, style):
    """Decode ``latents`` and save each song as PREFIX_songNN in ``folder`` (see save_song),
    its notes picked by ``style.rule``. Returns a list of WrittenSong."""
    if len(latents) == 0:  # --songs 0 or --songs-per-epoch 0
        return []
    names = [f"{prefix}_song{number:02d}" for number in range(1, len(latents) + 1)]
    return save_songs(decode(decoder, latents), folder, names, style)


def save_songs(songs, folder, names, style):
    """Save decoded ``songs`` (count, measures, 9216 values) as ``names`` in ``folder`` (see
    save_song), their notes picked by ``style.rule``. Returns a list of WrittenSong."""
    written = []
    for song, name in zip(songs, names):
        kept, threshold = style.rule.apply(song)
        written.append(save_song(song, folder, name, threshold, style, notes_of=kept))
    return written


def save_song(song, folder, name, threshold, style, notes_of=None):
    """Write ``song`` as ``folder/npy/NAME.npy``, ``folder/midi/NAME.mid``,
    ``folder/img/NAME.png`` and, with ``style.synthesizer``, ``folder/wav/NAME.wav``;
    return a WrittenSong. The notes are the cells of ``notes_of`` (default: ``song``) at
    or above ``threshold``."""
    song = np.asarray(song, np.float32)
    notes_of = song if notes_of is None else notes_of
    midi = song_to_midi(notes_of, bpm=style.bpm, threshold=threshold, lowest_pitch=style.lowest_pitch)
    notes = midi.instruments[0].notes
    title = f"{name}: {len(notes)} notes (values >= {threshold:.3g})"
    image = piano_roll_image(song, notes, title, style.lowest_pitch, style.bpm)
    for kind in ("npy", "midi", "img", "wav") if style.synthesizer else ("npy", "midi", "img"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "npy" / f"{name}.npy", npy_writer(song))
    atomic_write(folder / "midi" / f"{name}.mid", midi.write)
    audio = None
    if style.synthesizer:
        audio = style.synthesizer.render(midi, song_seconds(len(song), style.bpm))
        atomic_write(folder / "wav" / f"{name}.wav", wav_writer(audio, style.synthesizer.sample_rate))
    # The picture last: the run page lists a song by its picture, so a song it lists is complete.
    atomic_write(folder / "img" / f"{name}.png", png_writer(image))
    if not notes:
        print(f"warning: {name} has no notes: every value is below {threshold:.3g}", file=sys.stderr)
    return WrittenSong(name, len(notes), image, audio)


def piano_roll_image(song, notes, title, lowest_pitch, bpm):
    """A picture of a song as an (height, width, 4) uint8 RGBA array.

    Grey shows every cell's value; red bars are ``notes`` (pretty_midi notes, as
    song_to_midi plays them at ``bpm``), darker when louder; blue lines mark the first
    beat of each measure, as in the paper's figures 14 and 15.
    """
    from matplotlib.figure import Figure

    roll = piano_roll(song)
    measures = roll.shape[1] // STEPS_PER_MEASURE
    figure = Figure(figsize=(16, 4), dpi=100)
    axes = figure.add_subplot()
    strongest = max(float(roll.max()), MIN_THRESHOLD)
    axes.imshow(
        roll, origin="lower", aspect="auto", cmap="Greys", vmin=0, vmax=strongest, alpha=0.5, interpolation="nearest"
    )
    # The notes as a layer of red cells, one per step they sound: as fast for 100,000 notes as for 10.
    step = seconds_per_step(bpm)
    starts = np.round([note.start / step for note in notes]).astype(int)
    lengths = np.round([(note.end - note.start) / step for note in notes]).astype(int)
    rows = np.array([note.pitch - lowest_pitch for note in notes], int)
    layer = np.zeros((*roll.shape, 4), np.float32)
    layer[..., :3] = (0.8, 0.05, 0.05)
    for offset in range(int(lengths.max(initial=0))):
        sounding = (lengths > offset) & (starts + offset < roll.shape[1])
        layer[rows[sounding], starts[sounding] + offset, 3] = [
            notes[i].velocity / 127 for i in np.flatnonzero(sounding)
        ]
    axes.imshow(layer, origin="lower", aspect="auto", interpolation="nearest")
    for measure in range(measures + 1):
        axes.axvline(measure * STEPS_PER_MEASURE - 0.5, color="tab:blue", linewidth=0.8)
    axes.set_xlim(-0.5, roll.shape[1] - 0.5)
    axes.set_xticks(np.arange(measures) * STEPS_PER_MEASURE, [str(m + 1) for m in range(measures)])
    c_rows = [row for row in range(PITCHES) if (lowest_pitch + row) % 12 == 0]
    axes.set_yticks(c_rows, [f"C{(lowest_pitch + row) // 12 - 1}" for row in c_rows])
    axes.set_xlabel("measure")
    axes.set_title(title)
    return figure_pixels(figure)
