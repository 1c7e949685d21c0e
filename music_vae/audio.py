"""Songs as sound: MIDI rendered as audio, with FluidSynth and a General MIDI SoundFont
where they are installed (a piano), else with pretty_midi's sine waves, and saved as WAV."""

import io
import os
import sys
import wave
from pathlib import Path

import numpy as np

from music_vae.files import UsageError
from music_vae.samples import pretty_midi

AUDIO_SAMPLE_RATE = 22050  # Hz: the piano's range and more; a 32 s song is 1.4 MB of 16-bit mono
AUDIO_PEAK = 0.9  # loudest sample, of full scale: every song as loud, none clipped
AUDIO_TAIL_S = 1.0  # after the song's end: the last notes' release, and room before the next
# General MIDI SoundFonts where systems install them, best first: Debian and Ubuntu's
# fluid-soundfont-gm, then Fedora's and Arch's. pretty_midi's own small one comes last.
SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/soundfonts/FluidR3_GM.sf2", "/usr/share/soundfonts/default.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2", str(Path(pretty_midi.__file__).with_name("TimGM6mb.sf2")),
)


HIDE_FLUIDSYNTH = "MUSIC_VAE_NO_FLUIDSYNTH"  # =1: render as on a machine without FluidSynth


def has_fluidsynth():
    """Whether pyfluidsynth and the FluidSynth library it loads are installed, and not
    hidden by the environment variable HIDE_FLUIDSYNTH (so that tests, and a user
    comparing, can see what a machine without FluidSynth does)."""
    if os.environ.get(HIDE_FLUIDSYNTH) == "1":
        return False
    try:
        import fluidsynth  # noqa: F401
    except (ImportError, OSError):  # pyfluidsynth raises ImportError when the library is missing
        return False
    return True


class Synthesizer:
    """Renders MIDI as audio: with FluidSynth and a SoundFont, which sounds like the
    instrument, or with pretty_midi's sine waves, which need nothing installed.

    Parameters
    ----------
    soundfont : str or os.PathLike, optional
        A ``.sf2`` file, loaded once for every song. None: sine waves.
    sample_rate : int
        Samples per second of the audio.

    Raises
    ------
    UsageError
        ``soundfont`` is given but FluidSynth is missing or cannot read it.
    """

    def __init__(self, soundfont=None, sample_rate=AUDIO_SAMPLE_RATE):
        self.soundfont = soundfont
        self.sample_rate = sample_rate
        self.fluidsynth = None
        if soundfont is None:
            return
        if not has_fluidsynth():
            install = "install its library (Debian: apt install fluidsynth) and pip install pyfluidsynth"
            raise UsageError(f"a SoundFont needs FluidSynth: {install}")
        import fluidsynth

        synth = fluidsynth.Synth(samplerate=float(sample_rate))
        font = synth.sfload(str(soundfont)) if Path(soundfont).is_file() else -1
        if font < 0:
            synth.delete()
            raise UsageError(f"{soundfont} is not a SoundFont (.sf2) that FluidSynth can read")
        self.fluidsynth = synth, font

    @classmethod
    def best(cls, sample_rate=AUDIO_SAMPLE_RATE):
        """FluidSynth with the first of SOUNDFONTS that is installed, where FluidSynth is;
        else sine waves."""
        if has_fluidsynth():
            for soundfont in SOUNDFONTS:
                if Path(soundfont).is_file():
                    return cls(soundfont, sample_rate)
        return cls(None, sample_rate)

    def __str__(self):
        if self.fluidsynth:
            return f"FluidSynth with {self.soundfont}"
        return "pretty_midi's sine waves (install FluidSynth for a piano: see docs/run-folder.md)"

    def render(self, midi, seconds=0.0):
        """The sound of ``midi``.

        Parameters
        ----------
        midi : pretty_midi.PrettyMIDI
        seconds : float
            Length of the song. The audio lasts at least AUDIO_TAIL_S more, silence
            padding it, so that a song's silent last measures (or a silent song) last as
            long as they should.

        Returns
        -------
        np.ndarray
            (samples,) float32 mono audio at ``sample_rate``, its loudest sample at
            +-AUDIO_PEAK (0 throughout for a silent song).
        """
        if self.fluidsynth:
            synth, font = self.fluidsynth
            audio = midi.fluidsynth(self.sample_rate, synthesizer=synth, sfid=font, normalize=False)
            synth.system_reset()  # no note of this song rings on into the next
        else:
            audio = midi.synthesize(self.sample_rate, normalize=False)  # normalizing silence gives NaN
        audio = np.asarray(audio, np.float32)
        peak = float(np.abs(audio).max(initial=0.0))
        if peak > 0:
            audio *= AUDIO_PEAK / peak
        missing = round((seconds + AUDIO_TAIL_S) * self.sample_rate) - len(audio)
        return np.pad(audio, (0, max(missing, 0)))


def wav_bytes(audio, sample_rate=AUDIO_SAMPLE_RATE):
    """``audio``, float in [-1, 1], as the bytes of a 16-bit mono PCM WAV file: the format
    every browser and player opens."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(sample_rate)
        file.writeframes(np.round(np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def wav_writer(audio, sample_rate=AUDIO_SAMPLE_RATE):
    """A ``write(path)`` function for ``atomic_write`` that saves ``audio`` as a WAV file
    (see wav_bytes)."""
    data = wav_bytes(audio, sample_rate)

    def write(path):
        with open(path, "wb") as file:
            file.write(data)

    return write


def song_synthesizer(audio=True, soundfont=None):
    """The Synthesizer of the songs' WAV files (``soundfont``, else the best one installed),
    or None where not ``audio``. Raises UsageError for a bad SoundFont."""
    if not audio:
        return None
    return Synthesizer(soundfont) if soundfont else Synthesizer.best()


def note_sine_waves(synthesizer):
    """Say that the songs will sound like sine waves, once the command is under way (a
    mistake in its options is reported alone, in one line)."""
    if synthesizer and not synthesizer.fluidsynth:
        print(f"note: the songs' WAV files are rendered with {synthesizer}", file=sys.stderr)
