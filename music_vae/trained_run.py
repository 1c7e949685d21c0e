"""A trained run's models and how it makes songs, for the commands that work on a finished
run: generate, evaluate, reconstruct, interpolate, variations and explore."""

import dataclasses
import functools
import re
from pathlib import Path

from music_vae.audio import note_sine_waves
from music_vae.backend import keras
from music_vae.config import TrainConfig
from music_vae.dataset import read_data
from music_vae.files import UsageError
from music_vae.latent import fit_density
from music_vae.run_folder import RunFolder, data_settings
from music_vae.run_page import write_run_page
from music_vae.songs import SongStyle, decode, save_songs, song_source


class TrainedRun:
    """What the commands on a finished run need of it: its folder, state, config, encoder,
    decoder, song density and style, and the folder its songs go to.

    Parameters
    ----------
    path : str or Path
        The run folder.
    song_options : dict, optional
        Song options (TrainConfig's fields marked ``song``) in place of the run's; None: the run's.
    synthesizer : audio.Synthesizer, optional
        What renders the songs' WAV files; None: no WAV files.
    output_dir : str or Path, optional
        Where the songs go (default: the run's ``generated/``).
    """

    def __init__(self, path, song_options=None, synthesizer=None, output_dir=None):
        self.run = RunFolder.open(path)
        self.state = self.run.load_state()
        self.config = TrainConfig.of_run(self.state["parameters"]).with_song_options(song_options or {})
        self.settings = data_settings(self.state)
        self.decoder = keras.saving.load_model(self.run.model / "decoder.keras")
        notes = self.state["data"]["mean_notes"]
        self.density, rule = song_source(self.run, self.config, notes, self.decoder, self.fit_density)
        note_sine_waves(synthesizer)
        self.style = SongStyle(rule, self.config.bpm, self.settings.lowest_pitch, synthesizer)
        self.folder = Path(output_dir) if output_dir else self.run.generated

    @functools.cached_property
    def encoder(self):
        """Loaded when first used: generate needs none where the run has its density."""
        return keras.saving.load_model(self.run.model / "encoder.keras")

    def data(self, needed_for="its songs can be drawn from the prior only"):
        """The run's data, read again from its folder and split as in training; where the
        folder is gone, a UsageError says what that rules out (``needed_for``)."""
        folder, config = self.state["data"]["folder"], self.config
        if not Path(folder).is_dir():
            raise UsageError(f"the run's data folder {folder} is gone: {needed_for}")
        return read_data(folder, config.validation_split, config.seed, self.settings, config.test_split)

    def fit_density(self):
        """The latent density of the run's training songs, fitted now (for a run trained
        before its songs were drawn from the data)."""
        return fit_density(self.encoder, self.data().training, self.config.seed)

    def write(self, latents, prefix):
        """Decode ``latents`` into songs PREFIX_songNN in the output folder; refresh the run
        page where that is the run's own. Returns a list of WrittenSong."""
        names = [f"{prefix}_song{number:02d}" for number in range(1, len(latents) + 1)]
        return self.save(decode(self.decoder, latents), names)

    def remove_songs(self, prefix, keep):
        """Remove the songs PREFIX_songNN numbered above ``keep`` from the output folder, so that
        what a longer call left there does not pass for this call's songs."""
        for path in self.folder.glob(f"*/{prefix}_song*"):
            number = re.fullmatch(rf"{re.escape(prefix)}_song(\d+)", path.stem)
            if number and int(number.group(1)) > keep:
                path.unlink()

    def save(self, songs, names, rule=None):
        """Save decoded ``songs`` (count, measures, 9216 values) as ``names`` in the output
        folder, their notes picked by ``rule`` (default: the run's); refresh the run page
        where that is the run's own. Returns a list of WrittenSong."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"cannot write to {self.folder}: {error.strerror or error}") from None
        style = self.style if rule is None else dataclasses.replace(self.style, rule=rule)
        written = save_songs(songs, self.folder, names, style)
        if self.folder.resolve() == self.run.generated.resolve():
            write_run_page(self.run, self.state)
        return written

