"""A trained run's models and how it makes songs, for the commands that work on a finished
run: generate, evaluate, interpolate, variations and explore."""

import functools
from pathlib import Path

from music_vae.audio import note_sine_waves, song_synthesizer
from music_vae.dataset import read_data
from music_vae.files import UsageError
from music_vae.latent import fit_density
from music_vae.model import keras
from music_vae.run_folder import RunFolder, data_settings
from music_vae.run_page import write_run_page
from music_vae.songs import SongStyle, song_source, write_songs
from music_vae.training import SONG_OPTIONS, run_parameters


class RunSongs:
    """What the commands on a finished run need of it: its folder, state, parameters,
    encoder, decoder, song density and style, with the song options ``args`` gives, and
    the folder the songs go to (``args.output_dir``, else the run's ``generated/``)."""

    def __init__(self, args):
        self.run = RunFolder.open(args.run)
        self.state = self.run.load_state()
        self.parameters = run_parameters(self.state)
        given = {key: getattr(args, key, None) for key in SONG_OPTIONS}
        self.parameters.update({key: value for key, value in given.items() if value is not None})
        self.settings = data_settings(self.state)
        self.decoder = keras.saving.load_model(self.run.model / "decoder.keras")
        notes = self.state["data"]["mean_notes"]
        self.density, rule = song_source(self.run, self.parameters, notes, self.decoder, self.fit_density)
        synthesizer = song_synthesizer(args)
        note_sine_waves(synthesizer)
        self.style = SongStyle(rule, self.parameters["bpm"], self.settings.lowest_pitch, synthesizer)
        self.folder = Path(args.output_dir) if args.output_dir else self.run.generated

    @functools.cached_property
    def encoder(self):
        """Loaded when first used: generate needs none where the run has its density."""
        return keras.saving.load_model(self.run.model / "encoder.keras")

    def training_samples(self):
        """The run's training split, read again from its data folder."""
        folder = self.state["data"]["folder"]
        if not Path(folder).is_dir():
            raise UsageError(f"the run's data folder {folder} is gone: its songs can be drawn from the prior only")
        data = read_data(folder, self.parameters["validation_split"], self.parameters["seed"], self.settings)
        return data.training

    def fit_density(self):
        """The latent density of the run's training songs, fitted now (for a run trained
        before its songs were drawn from the data)."""
        return fit_density(self.encoder, self.training_samples(), self.parameters["seed"])

    def write(self, latents, prefix):
        """Decode ``latents`` into songs PREFIX_songNN in the output folder; refresh the run
        page where that is the run's own. Returns a list of WrittenSong."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"cannot write to {self.folder}: {error.strerror or error}") from None
        written = write_songs(self.decoder, latents, self.folder, prefix, self.style)
        if self.folder.resolve() == self.run.generated.resolve():
            write_run_page(self.run, self.state)
        return written


def song_list(written):
    """WrittenSongs as "name (N notes), ..."."""
    return ", ".join(f"{song.name} ({song.notes} notes)" for song in written)
