"""A song from an exported run with onnxruntime and numpy alone, as a game would make one:
slider positions (or a latent vector, or a random draw) in, a MIDI file out.

    pip install onnxruntime numpy
    python decode_with_onnxruntime.py --folder RUN_DIR/export --positions=-1.5,0.5,0.8 --output song.mid
    python decode_with_onnxruntime.py --folder RUN_DIR/export --random 7 --mood valence=1.5 --output song.mid

``music_generator.py export`` copies this file into the folder it writes, beside
decoder.onnx and song_space.json, which are all it reads. It needs neither Keras nor this
repository: the note rule and the MIDI writer below are short copies of the project's
(NoteRule.apply in music_vae/songs.py, song_to_midi in music_vae/samples.py), which the
tests hold to the same notes.
"""

import argparse
import json
import struct
import time
from pathlib import Path

import numpy as np
import onnxruntime

MIN_THRESHOLD = 1e-6


class SongSpace:
    """An exported run: its decoder and song_space.json, in ``folder``."""

    def __init__(self, folder):
        folder = Path(folder)
        self.space = json.loads((folder / "song_space.json").read_text(encoding="utf-8"))
        self.decoder = onnxruntime.InferenceSession(str(folder / "decoder.onnx"), providers=["CPUExecutionProvider"])
        sliders, density = self.space["sliders"], self.space["density"]
        self.mean, self.axes = np.float32(sliders["mean"]), np.float32(sliders["axes"])
        self.deviations = np.float32(sliders["deviations"])
        self.density_mean, self.density_scale = np.float32(density["mean"]), np.float32(density["scale"])
        moods = self.space.get("moods", {"names": [], "units": [], "deviations": []})  # an export before moods: none
        self.moods = {
            name: (np.float32(unit), np.float32(deviation))
            for name, unit, deviation in zip(moods["names"], moods["units"], moods["deviations"])
        }

    def latent(self, positions):
        """The latent vector (latent,) of slider positions, in standard deviations along each
        principal axis (fewer positions than sliders: the rest at 0)."""
        padded = np.zeros(len(self.deviations), np.float32)
        padded[: len(positions)] = positions
        return self.mean + (padded * self.deviations) @ self.axes

    def steered(self, latent, moods):
        """``latent`` moved along the run's mood directions: ``moods`` {name: standard deviations}."""
        for name, amount in moods.items():
            unit, deviation = self.moods[name]
            latent = latent + np.float32(amount * deviation) * unit
        return latent

    def random_latent(self, seed=None):
        """A latent vector drawn from the run's density of songs."""
        noise = np.random.default_rng(seed).standard_normal(len(self.density_mean)).astype(np.float32)
        return self.density_mean + self.density_scale @ noise

    def decode(self, latents):
        """Note probabilities (count, measures, pitches * steps) of latent vectors (count, latent)."""
        return self.decoder.run(["song"], {"z": np.asarray(latents, np.float32).reshape(-1, len(self.mean))})[0]

    def notes(self, values, threshold=None):
        """The 0/1 notes (measures, pitches * steps) of one song's values, by the run's note rule
        (or the cells at or above ``threshold``)."""
        return song_notes(values, self.space["note_rule"], self.space["pitches"], threshold)

    def midi(self, notes, bpm=None):
        """The bytes of a MIDI file of 0/1 ``notes`` (measures, pitches * steps): each onset an
        eighth note, or up to its pitch's next onset where that comes sooner."""
        space, midi = self.space, self.space["midi"]
        pitches, steps = space["pitches"], space["steps_per_measure"]
        ticks_per_step = midi["ticks_per_quarter"] * 4 // steps
        measures, rows, columns = np.nonzero(notes.reshape(-1, pitches, steps))
        onsets = sorted(zip(rows + space["lowest_pitch"], measures * steps + columns))
        events = []
        for index, (pitch, step) in enumerate(onsets):
            following = onsets[index + 1] if index + 1 < len(onsets) else None
            length = midi["note_steps"]
            if following and following[0] == pitch:
                length = min(following[1] - step, length)
            events += [((step + length) * ticks_per_step, 0, 0x80, pitch, 0),
                       (step * ticks_per_step, 1, 0x90, pitch, midi["velocity"])]
        tempo = round(60e6 / (bpm or space["bpm"]))
        track = bytearray([0, 0xFF, 0x51, 3, *tempo.to_bytes(3, "big"), 0, 0xFF, 0x58, 4, 4, 2, 24, 8,
                           0, 0xC0, midi["program"]])
        tick = 0
        for time_ticks, _, status, pitch, velocity in sorted(events):  # at one tick, note-offs first
            track += variable_length(time_ticks - tick) + bytes([status, int(pitch), velocity])
            tick = time_ticks
        track += bytes([0, 0xFF, 0x2F, 0])
        header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, midi["ticks_per_quarter"])
        return header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


def song_notes(values, rule, pitches, threshold=None):
    """The 0/1 notes (measures, pitches * steps) that ``rule`` (song_space.json's note_rule)
    picks from one song's ``values``, or the cells at or above ``threshold``."""
    if threshold is not None:
        return (values >= threshold).astype(np.uint8)
    capped = values
    if rule["max_pitches_per_step"]:
        capped = strongest_per_step(values, rule["max_pitches_per_step"], pitches)
    if rule["threshold"] is not None:
        return (capped >= rule["threshold"]).astype(np.uint8)
    kept = np.zeros_like(capped)
    if rule["method"] == "expected":  # each measure as many notes as its values sum to, scaled
        passing = np.inf
        for measure, count in enumerate(np.round(rule["count_scale"] * values.sum(axis=-1)).astype(int)):
            if count > 0:
                passing = min(passing, keep_strongest(capped[measure], kept[measure], count))
        passing = 1.0 if passing == np.inf else passing
    else:  # per-song: as many notes as an average training song has
        passing = keep_strongest(capped.reshape(-1), kept.reshape(-1), int(rule["notes"]))
    return (kept >= passing).astype(np.uint8)


def keep_strongest(values, kept, count):
    """Copy the ``count`` strongest of ``values`` into ``kept`` (both 1-D views); return the
    weakest of them, at least MIN_THRESHOLD."""
    count = int(min(max(count, 1), values.size))
    strongest = np.argpartition(values, -count)[-count:]
    kept[strongest] = values[strongest]
    return max(float(values[strongest].min()), MIN_THRESHOLD)


def strongest_per_step(values, count, pitches):
    """``values`` (measures, pitches * steps) with all but the ``count`` strongest pitches of
    every step set to 0."""
    cells = np.array(values).reshape(len(values), pitches, -1)
    if count < pitches:
        np.put_along_axis(cells, np.argpartition(cells, pitches - count, axis=1)[:, : pitches - count], 0, axis=1)
    return cells.reshape(np.shape(values))


def variable_length(value):
    """A MIDI delta time: 7 bits a byte, the last byte without its top bit."""
    data = [value & 0x7F]
    while value := value >> 7:
        data.insert(0, (value & 0x7F) | 0x80)
    return bytes(data)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default=Path(__file__).parent, help="the export folder (default: this file's)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--positions", help="slider positions, comma-separated, in standard deviations (default: all 0, the mean "
        "song); one that starts with a minus sign after an equals sign: --positions=-1.5,0.5",
    )
    where.add_argument("--latent", help="a latent vector as .npy, as music_generator.py encode saves it")
    where.add_argument("--random", type=int, metavar="SEED", help="a song drawn from the run's density")
    parser.add_argument(
        "--mood", action="append", default=[], metavar="NAME=V",
        help="move the song V standard deviations along the run's mood direction NAME (valence, arousal, ...)",
    )
    parser.add_argument("--output", default="song.mid", help="the MIDI file to write (default: %(default)s)")
    args = parser.parse_args()
    try:
        songs = SongSpace(args.folder)
    except Exception as error:  # noqa: BLE001 - a missing or broken file, said in one line
        parser.error(f"{args.folder} is not an export of music_generator.py export: {error}")
    if args.latent:
        try:
            latent = np.load(args.latent).astype(np.float32).reshape(len(songs.mean))
        except (OSError, ValueError) as error:
            parser.error(f"--latent {args.latent}: not a latent vector of {len(songs.mean)} numbers: {error}")
    elif args.random is not None:
        latent = songs.random_latent(args.random)
    else:
        try:
            positions = [float(value) for value in args.positions.split(",")] if args.positions else []
        except ValueError:
            parser.error(f"--positions {args.positions}: not comma-separated numbers")
        if len(positions) > len(songs.deviations):
            parser.error(f"--positions: {len(positions)} positions for {len(songs.deviations)} sliders")
        latent = songs.latent(positions)
    moods = {}
    for setting in args.mood:
        name, _, amount = setting.partition("=")
        if name not in songs.moods:
            has = ", ".join(songs.moods) or "none"
            parser.error(f"--mood {setting}: the run has no direction {name!r} (it has: {has})")
        if name in moods:
            parser.error(f"--mood {setting}: {name} is given twice")
        try:
            moods[name] = float(amount)
        except ValueError:
            parser.error(f"--mood {setting}: expected NAME=V, V a number")
        if not -10 <= moods[name] <= 10:  # also refuses nan
            parser.error(f"--mood {setting}: V must be from -10 to 10 standard deviations")
    latent = songs.steered(latent, moods)
    songs.decode(latent)  # the first run of a session prepares it: a game does that while it loads
    start = time.perf_counter()
    values = songs.decode(latent)[0]
    decoded = time.perf_counter() - start
    notes = songs.notes(values)
    try:
        Path(args.output).write_bytes(songs.midi(notes))
    except OSError as error:
        parser.error(f"cannot write {args.output}: {error.strerror or error}")
    print(f"{args.output}: {int(notes.sum())} notes; decoding took {decoded * 1000:.1f} ms")


if __name__ == "__main__":
    main()
