"""The training data: a folder of samples, checked, split by song, and served in batches.

The samples are ``.npy`` files as data_loader.py writes them (see music_vae/samples.py),
searched for in a folder and its subfolders; a file that is not a sample is reported and
left out. The validation split keeps the samples of one MIDI file together, so that it
holds songs training never saw.
"""

import contextlib
import csv
import dataclasses
import functools
import itertools
import math
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from music_vae.backend import keras, ops
from music_vae.distribute import machine_memory
from music_vae.files import UsageError
from music_vae.samples import PITCHES, SETTINGS_FILE, DataSettings

SEED = 0
NOTES_SAMPLED = 1000  # training samples read to find the average note count


class SongFiles(keras.utils.PyDataset):
    """Batches of samples as uint8, one batch at a time.

    From ``.npy`` files read as each batch is needed, so that memory stays flat whatever
    the number of files: (batch, measures, 9216) of 0/1. Or, with ``cache``, from a bank in
    RAM where every measure is kept bit-packed (18 KB a (16, 9216) sample): (batch,
    measures, 1152), which the VAE unpacks on its own device. Either way a batch travels as
    a quarter (or a 32nd) of float32's bytes, and worker threads prepare the next batches
    while a step runs. With ``cache`` and ``on_device``, the bank itself is moved to the
    model's device once, and a batch is only the rows of it that make its songs and how far
    each moves, with the bank: (rows, moves, bank), which the VAE gathers and unpacks
    inside its compiled step (see VAE.unpacked): a few kilobytes cross to the device a
    step, and the threads that prepare them hardly hold Python's lock, which the step's
    dispatch needs.

    With ``shuffle``, the order changes every epoch, the same way for the same ``seed``
    and epoch (so that a resumed run sees the batches it would have seen): ``fit`` sets
    the epoch through the ``EpochOrder`` callback. With ``transpose``, every song of a
    batch is moved by up to that many semitones up or down, drawn the same way, as far as
    its notes stay inside the pitch window: more songs to learn from, in every key. With
    ``following`` (for each path, the index of the sample with the measures right after its
    own, or -1; see following_samples), a song starts at a measure drawn the same way
    and runs on into the sample after it: a sample's window of measures moves every epoch
    instead of always starting at the same bar line. A file that can no longer be read is
    reported once and a silent song takes its place, so that a long run never dies of one
    file.

    Spread over ``devices`` (see distribute.py), every batch is cut to a multiple of them,
    since each must get as many samples: a batch size that is not one loses the rest of
    every batch, and the epoch's last, short batch its own rest, or all of it where it is
    smaller than the number of devices (a different few samples every epoch, where the
    order is shuffled). Of ``processes`` (count, index), this one serves only its own
    share of each batch, the ``index``-th.
    """

    def __init__(
        self, paths, batch_size, shape, shuffle=False, seed=SEED, cache=False, transpose=0, following=None,
        devices=1, processes=(1, 0), on_device=False,
    ):
        super().__init__(workers=2, use_multiprocessing=False, max_queue_size=4)
        self.paths = list(paths)
        self.batch_size = batch_size
        self.shape = tuple(shape)
        self.shuffle = shuffle
        self.seed = seed
        self.transpose = transpose
        self.following = None if following is None else np.asarray(following)
        self.devices = devices
        self.processes = processes
        self.epoch = 0
        self.unreadable = set()
        self.bank = self.ranges = self.device_bank = None
        if cache:
            self.bank, self.ranges = self._bank(range(len(self.paths)), packed=True)
            if on_device:
                self.device_bank, self.bank = ops.convert_to_tensor(self.bank), None
        self.order = self._order()

    def _bank(self, samples, packed=False):
        """The measures of ``samples`` (indices of paths), one row each and sample after
        sample, then one empty measure: (len(samples) * measures + 1, 9216) uint8 0/1, or
        bit-packed, (..., 1152); and each row's lowest and highest pitch (96 and -1 where
        it has no note), (rows, 2) int16."""
        measures, width = self.shape[0], self.shape[-1] // 8 if packed else self.shape[-1]
        bank = np.zeros((len(samples) * measures + 1, width), np.uint8)
        ranges = np.tile(np.array([PITCHES, -1], np.int16), (len(bank), 1))
        quiet = None if packed else True  # a bar while caching, none for a batch read from disk
        for number, index in enumerate(tqdm(samples, desc="caching samples", unit="sample", disable=quiet)):
            song = self._load(self.paths[index])
            rows = slice(number * measures, (number + 1) * measures)
            bank[rows] = np.packbits(song, axis=-1) if packed else song
            ranges[rows] = pitch_ranges(song)
        return bank, ranges

    def _order(self):
        if not self.shuffle:
            return np.arange(len(self.paths))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.paths))

    def __len__(self):
        full, rest = divmod(len(self.paths), self.batch_size)
        return full + (rest >= self.devices)

    def __getitem__(self, index):
        samples, starts, shifts = self._draws(index)
        after = np.full(len(samples), -1)
        if self.following is not None:
            after = np.where(starts > 0, self.following[samples], -1)
        bank, ranges = self.bank, self.ranges
        if ranges is None:  # from disk: the batch's samples, and those they run on into
            needed = np.unique(np.concatenate([samples, after[after >= 0]]))
            bank, ranges = self._bank(needed)
            samples, after = np.searchsorted(needed, samples), np.where(after >= 0, np.searchsorted(needed, after), -1)
        rows = measure_rows(samples, after, starts, self.shape[0])
        moves = transposition(ranges[rows], self.transpose, shifts)
        if self.device_bank is not None:
            # One input, a tuple; the rows first: Keras weighs a batch's loss by the first one's length.
            return ((rows.astype(np.int32), moves.astype(np.int32), self.device_bank),)
        return gathered(bank, rows, moves)

    def _draws(self, index):
        """The samples of batch ``index`` that this process serves (indices of paths), and
        each one's first measure and share of its transposition range (see transposition).
        Every song's draws are made for the whole batch, in its order, so that a song's are
        the same however many devices and processes share the batch."""
        batch = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        starts = np.zeros(len(batch), int)
        if self.following is not None:
            starts = rng.integers(self.shape[0], size=len(batch))
        shifts = rng.random(len(batch)) if self.transpose else np.zeros(len(batch))
        count, process = self.processes
        share = (len(batch) - len(batch) % self.devices) // count
        places = slice(process * share, (process + 1) * share)
        return batch[places], starts[places], shifts[places]

    def _load(self, path):
        """A sample as uint8 0/1: any non-zero value is an onset."""
        try:
            song = load_in_thread(path)
            if song.shape != self.shape:
                raise ValueError(f"shape {song.shape}, expected {self.shape}")
            return (song != 0).view(np.uint8)
        except (OSError, ValueError) as error:
            if path not in self.unreadable:
                self.unreadable.add(path)
                print(f"\nwarning: skipped {path}: {error}; a silent song takes its place", file=sys.stderr)
            return np.zeros(self.shape, np.uint8)

    def start_epoch(self, epoch):
        """Take the order of ``epoch`` (counted from 0)."""
        self.epoch = epoch
        self.order = self._order()


def load_in_thread(path, attempts=5):
    """``np.load(path)`` in a reader thread. np.load parses the file's header with Python's
    own parser, which in CPython 3.11 can fail when another thread parses at the same time
    (``SystemError: AST constructor recursion depth mismatch``; TensorFlow parses Python
    source while it traces the training step, as the reader threads load the first batches):
    such a load is tried again."""
    for attempt in range(attempts):
        try:
            return np.load(path)
        except SystemError:
            if attempt == attempts - 1:
                raise


def pitch_ranges(song):
    """The lowest and highest pitch of each measure of ``song`` (measures, 96 pitch rows of
    cells or of bit-packed bytes): (measures, 2) int16; 96 and -1 for a measure without a
    note."""
    occupied = song.reshape(len(song), PITCHES, -1).any(axis=2)
    noted = occupied.any(axis=1)
    lowest = np.where(noted, occupied.argmax(axis=1), PITCHES)
    highest = np.where(noted, PITCHES - 1 - occupied[:, ::-1].argmax(axis=1), -1)
    return np.stack([lowest, highest], axis=1).astype(np.int16)


def measure_rows(samples, after, starts, measures):
    """The rows of a bank (see SongFiles._bank) that make each song: (songs, measures). Song
    i is sample ``samples[i]`` from its measure ``starts[i]`` on, running on into sample
    ``after[i]``; where that is -1, the sample as it is."""
    own = starts[:, None] + np.arange(measures)
    runs_on = (after >= 0)[:, None]
    rows = samples[:, None] * measures + np.where(runs_on, own, np.arange(measures))
    return np.where(runs_on & (own >= measures), after[:, None] * measures + own - measures, rows)


def transposition(ranges, semitones, shifts):
    """The semitones each song moves: (songs,) int, of the moves up to ``semitones`` up or
    down that keep its notes inside the pitch window, the one at ``shifts`` (songs,), from
    0 to 1, along them; 0 for a song without a note. ``ranges``: (songs, measures, 2), each
    measure's lowest and highest pitch (see pitch_ranges)."""
    lowest, highest = ranges[..., 0].min(axis=-1).astype(int), ranges[..., 1].max(axis=-1).astype(int)
    down, up = np.maximum(-semitones, -lowest), np.minimum(semitones, PITCHES - 1 - highest)
    moves = down + np.minimum((shifts * (up - down + 1)).astype(int), up - down)
    return np.where(highest >= 0, moves, 0)


def gathered(bank, rows, moves):
    """The songs made of ``rows`` (songs, measures) of ``bank`` (measures, 96 pitch rows of
    cells or of bit-packed bytes), each moved up ``moves`` (songs,) semitones: (songs,
    measures, bank's width). The pitch rows moved past the window are empty."""
    songs = bank[rows]
    if not moves.any():
        return songs
    grid = songs.reshape(*rows.shape, PITCHES, -1)
    moved = np.zeros_like(grid)
    for move in np.unique(moves):  # a dozen values at most: the songs that move alike, at once
        alike = moves == move
        if move >= 0:
            moved[alike, :, move:] = grid[alike, :, : PITCHES - move]
        else:
            moved[alike, :, :move] = grid[alike, :, -move:]
    return moved.reshape(songs.shape)


class EpochOrder(keras.callbacks.Callback):
    """Give ``songs`` (SongFiles) the number of each epoch as it begins, so that its order
    follows from the seed and the epoch alone. Counting Keras' calls of
    ``PyDataset.on_epoch_end`` does not do: it makes more than one an epoch, its reader
    threads one more where they read ahead, and one at the start of ``fit``, so a resumed
    run would see other batches than the run never stopped."""

    def __init__(self, songs):
        super().__init__()
        self.songs = songs

    def on_epoch_begin(self, epoch, logs=None):
        self.songs.start_epoch(epoch)


def cache_fits(samples, shape):
    """Whether ``samples`` bit-packed samples fit in half of this machine's memory."""
    memory = machine_memory()
    return memory is None or samples * math.prod(shape) // 8 <= memory // 2  # not known: trust the user


def sample_problem(path, shape):
    """Why ``path`` is not a usable sample of ``shape``, or None. Reads only the header."""
    try:
        song = np.load(path, mmap_mode="r")  # a truncated file fails here, unread
    except (OSError, ValueError) as error:
        return str(error) or type(error).__name__
    if not isinstance(song, np.ndarray):
        return "not a single array"
    if song.shape != tuple(shape):
        return f"shape {song.shape}, expected {tuple(shape)}"
    if song.dtype.kind not in "biuf":
        return f"dtype {song.dtype} is not a number"
    return None


@dataclasses.dataclass
class Data:
    """A folder of samples, checked and split for a run.

    Attributes
    ----------
    folder : str
        The folder, as an absolute path.
    settings : DataSettings
        What the samples were made with (their settings.json).
    training, validation, test : list of Path
        The samples of each split; those of one MIDI file are in the same one. Validation
        songs choose settings and calibrate; test songs are for the figures a run reports,
        and nothing is tuned on them.
    malformed : list of (str, str)
        Files that are not samples, and why.
    seed : int
        Of the split, and of the samples mean_notes reads.
    """

    folder: str
    settings: DataSettings
    training: list
    validation: list
    test: list
    malformed: list
    seed: int

    @functools.cached_property
    def mean_notes(self):
        """Onsets in an average training sample (of up to NOTES_SAMPLED of them): how many
        notes a song gets by default."""
        return mean_notes(self.training, self.seed)

    def summary(self):
        """What a run's state records of its data."""
        return {
            "folder": self.folder, "samples": len(self.training) + len(self.validation) + len(self.test),
            "training": len(self.training), "validation": len(self.validation), "test": len(self.test),
            "malformed": self.malformed, "mean_notes": self.mean_notes,
            **dataclasses.asdict(self.settings),
        }


def read_data(folder, validation_split, seed, settings=None, test_split=0.0):
    """The samples of ``folder``, checked (malformed ones reported) and split into training,
    validation and test samples (see split_samples). ``settings``: what they were made with,
    if known (a run's state knows); else their settings.json says.

    Raises
    ------
    UsageError
        The folder is missing or holds no sample; its settings.json is unreadable, or says
        the samples are not those ``settings`` describes.
    """
    found = folder_settings(folder)  # None where the folder, or every settings.json, is missing
    if settings and found and (found.lowest_pitch, found.measures) != (settings.lowest_pitch, settings.measures):
        raise UsageError(
            f"{folder} holds samples of {found.measures} measures from MIDI note {found.lowest_pitch}, "
            f"the run's are of {settings.measures} from {settings.lowest_pitch}"
        )
    assumed = settings is None and found is None
    settings = settings or found or DataSettings()
    paths, malformed = find_samples(folder, settings.shape)
    if assumed:  # said once the folder proves to hold samples: a mistake there is reported alone
        print(
            f"note: {folder} has no {SETTINGS_FILE} (data_loader.py writes one): its samples are taken to be "
            f"{settings.measures} measures from MIDI note {settings.lowest_pitch} up",
            file=sys.stderr,
        )
    for path, problem in malformed[:10]:
        print(f"warning: skipped {path}: {problem}", file=sys.stderr)
    if len(malformed) > 10:
        print(f"warning: skipped {len(malformed) - 10} more malformed files", file=sys.stderr)
    training, validation, test = split_samples(paths, validation_split, seed, folder, test_split)
    return Data(
        folder=str(Path(folder).resolve()), settings=settings, training=training, validation=validation, test=test,
        malformed=[(path.name, problem) for path, problem in malformed], seed=seed,
    )


def folder_settings(folder):
    """What the samples of ``folder`` were made with: its settings.json, or, where it has none,
    those of its subfolders (the shards of ``data_loader.py --shard``), which must agree;
    None where there is none.

    Raises
    ------
    UsageError
        A settings.json cannot be read, or two subfolders' differ.
    """
    own = DataSettings.read(folder)
    if own or not Path(folder).is_dir():
        return own
    found = {}
    for file in sorted(Path(folder).rglob(SETTINGS_FILE)):
        found.setdefault(DataSettings.read(file.parent), file.parent)
    if len(found) > 1:
        (first, one), (second, other) = list(found.items())[:2]
        raise UsageError(
            f"{one} and {other} hold samples made with other settings ({first} and {second}): "
            "train on one of them"
        )
    return next(iter(found), None)


def find_samples(data_dir, shape):
    """Every ``.npy`` under ``data_dir`` that is a sample of ``shape``, and the others.

    Returns
    -------
    good : list of Path
    bad : list of (Path, str)
        Malformed files with the reason.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UsageError(f"data folder {data_dir} does not exist")
    good, bad = [], []
    for path in sorted(data_dir.rglob("*.npy")):
        problem = sample_problem(path, shape)
        if problem:
            bad.append((path, problem))
        else:
            good.append(path)
    if not good:
        if bad:
            path, problem = bad[0]
            raise UsageError(f"none of the {len(bad)} .npy files in {data_dir} is a sample: {path.name} has {problem}")
        raise UsageError(f"no .npy samples in {data_dir}; make them with: python data_loader.py MIDI_DIR {data_dir}")
    return good, bad


def read_index(data_dir):
    """data_loader's ``index.csv`` of ``data_dir`` and its subfolders (the shards of
    ``--shard``, whose sample names differ, each holding a hash of its MIDI file's path):
    {sample file name: (source MIDI file, first measure)}; empty where there is none, and
    without one that cannot be read."""
    index = {}
    for path in sorted(Path(data_dir).rglob("index.csv")):
        with contextlib.suppress(OSError, KeyError, ValueError, csv.Error):
            with open(path, newline="", encoding="utf-8") as file:
                rows = csv.DictReader(file)
                index.update({row["sample"]: (row["source"], int(row["first_measure"])) for row in rows})
    return index


def split_samples(paths, validation_split, seed, data_dir, test_split=0.0):
    """Split into training, validation and test paths, keeping the samples of one MIDI file
    together: songs are drawn at random (with ``seed``) for validation until it holds its
    share of the samples, then for test. The validation split is the same whatever the
    test split.

    Songs are known from data_loader's ``index.csv`` when the folder has one; otherwise
    every file counts as its own song.
    """
    index = read_index(data_dir)
    songs = {}
    for path in paths:
        songs.setdefault(index.get(path.name, (str(path),))[0], []).append(path)
    groups = list(songs.values())
    order = iter(np.random.default_rng(seed).permutation(len(groups)))
    held_out = []
    for share in (validation_split, test_split):
        split, wanted = [], round(share * len(paths))
        for index in order:
            if len(split) >= wanted:  # this song starts the next split
                order = itertools.chain([index], order)
                break
            split.extend(groups[index])
        held_out.append(split)
    chosen = {path for split in held_out for path in split}
    return [path for path in paths if path not in chosen], *held_out


def measure_places(paths, data_dir):
    """Where the first measure of each sample stands in its MIDI file (from data_loader's
    ``index.csv``): (len(paths),) int64, the file's number * 2**32 + the measure's number,
    so that measure m of a sample stands at its place + m and the measures of one file in
    a row have places in a row. A sample the index does not list is a file of its own."""
    index = read_index(data_dir)
    files = {}
    places = []
    for path in paths:
        source, first_measure = index.get(path.name, (str(path), 0))
        places.append((files.setdefault(source, len(files)) << 32) + first_measure)
    return np.array(places, np.int64)


def following_samples(paths, data_dir, measures):
    """For each of ``paths``, the index in ``paths`` of the sample of the same MIDI file whose
    ``measures`` measures come right after its own, or -1 (the file's last sample, one
    before a stretch without notes, or a folder without ``index.csv``)."""
    index = read_index(data_dir)
    position_of = {index[path.name]: position for position, path in enumerate(paths) if path.name in index}
    following = []
    for path in paths:
        source, first_measure = index.get(path.name, (None, 0))
        following.append(position_of.get((source, first_measure + measures), -1))
    return following


def mean_notes(paths, seed):
    """Average number of onsets per sample, from up to NOTES_SAMPLED of ``paths``."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(paths), size=min(len(paths), NOTES_SAMPLED), replace=False)
    return float(np.mean([np.count_nonzero(np.load(paths[i])) for i in chosen]))


def subset(paths, count, seed):
    """Up to ``count`` of ``paths``, drawn at random with ``seed``: the same ones for the
    same paths in any order."""
    paths = sorted(paths)
    if len(paths) <= count:
        return paths
    chosen = np.random.default_rng(seed).choice(len(paths), size=count, replace=False)
    return [paths[i] for i in sorted(chosen)]


def read_sample(path):
    """A sample file as (measures, 9216) uint8 0/1: any non-zero value is an onset."""
    return (np.load(path) != 0).view(np.uint8)
