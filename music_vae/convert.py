"""Convert a folder of MIDI files into samples: on all cores, each file bounded in time,
size and memory, every file accounted for (as samples in index.csv, or in skipped.csv with
the reason), and resumable after a kill at any moment."""

import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import time
import unicodedata
from collections import Counter
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import as_completed
from pathlib import Path, PurePath

from pebble import ProcessExpired, ProcessPool
from tqdm import tqdm

from music_vae.files import UsageError, atomic_write, npy_writer, remove_partial_files, text_writer, write_part
from music_vae.samples import PITCHES, SETTINGS_FILE, DataSettings, SkipFile, midi_to_samples

MIDI_SUFFIXES = (".mid", ".midi")
# Bounds that keep one absurd file from stalling or sinking a 30,000-file run.
MAX_FILE_MB = 16  # real MIDI files are kilobytes; black-MIDI curiosities are not music
FILE_TIMEOUT_S = 60
WORKER_MEMORY_MB = 2048
INDEX_COLUMNS = ("sample", "source", "first_measure", "n_notes")
SKIPPED_COLUMNS = ("source", "reason")


def find_midi_files(input_dir):
    """All ``.mid`` / ``.midi`` files under ``input_dir``, any letter case, sorted."""
    found = []
    for folder, subfolders, files in os.walk(input_dir):
        subfolders.sort()
        found.extend(Path(folder, name) for name in sorted(files) if name.lower().endswith(MIDI_SUFFIXES))
    return found


def sample_stem(source):
    """Stable, collision-free file stem for the samples of ``source``.

    ``source`` is the path relative to INPUT_DIR. The readable part is the path with
    odd characters replaced; the hash of the exact path keeps ``a/x.mid`` and ``a_x.mid``
    (or ``x.mid`` in two folders) apart, and is the same on every operating system.
    """
    posix = PurePath(source).as_posix()
    readable = re.sub(r"[^A-Za-z0-9.-]+", "_", posix.rsplit(".", 1)[0]).strip("._")[:60]
    digest = hashlib.sha1(posix.encode("utf-8")).hexdigest()[:12]
    return f"{readable or 'song'}-{digest}"


def sample_name(source, first_measure):
    return f"{sample_stem(source)}_m{first_measure:04d}.npy"


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``, counted from 0: the MIDI files whose path hashes into it.

    The shards of one ``count`` split the files between them, each file into exactly one,
    the same way on every machine; shard 0 of 1, the default, is every file.
    """

    index: int = 0
    count: int = 1

    def __str__(self):
        return f"{self.index}/{self.count}"

    @property
    def whole(self):
        return self.count == 1

    def describe(self):
        return "all the MIDI files" if self.whole else f"shard {self}"

    def option(self):
        return "without --shard" if self.whole else f"with --shard {self}"

    def holds(self, source):
        """Whether ``source``, a path relative to INPUT_DIR with '/' separators, is in this shard."""
        # sha1, not hash(): Python salts hash() per process, and the shards run in other
        # processes, on other machines. NFC: macOS may give the same name decomposed.
        digest = hashlib.sha1(unicodedata.normalize("NFC", source).encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index

    @classmethod
    def parse(cls, text):
        """The shard that ``text``, ``"I/N"``, names.

        Raises
        ------
        ValueError
            ``text`` is not I/N, or I is not from 0 to N-1.
        """
        match = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", text)
        if not match:
            raise ValueError(f"expected I/N, shard I of N counted from 0 (such as 0/4), not {text!r}")
        index, count = map(int, match.groups())
        if count < 1:
            raise ValueError(f"N of I/N must be 1 or more, not {count}")
        if not 0 <= index < count:
            raise ValueError(f"I of I/{count} must be from 0 to {count - 1} (counted from 0), not {index}")
        return cls(index, count)


def recorded_shard(folder):
    """The shard whose samples ``folder`` holds, as its settings.json names it: all the files
    (``Shard()``) where it names none, as older versions wrote it.

    Raises
    ------
    UsageError
        settings.json is missing, unreadable, or names no shard.
    """
    file = Path(folder) / SETTINGS_FILE
    try:
        recorded = json.loads(file.read_text(encoding="utf-8")).get("shard")
        return Shard() if recorded is None else Shard.parse(str(recorded))
    except OSError as error:
        raise UsageError(f"cannot read {file}: {error.strerror or error}") from None
    except (ValueError, AttributeError) as error:  # not JSON, not a dict, or not I/N
        raise UsageError(f"{file} names no shard that data_loader.py writes ({error})") from None


# --------------------------------------------------------------------------------------
# Converting a folder
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class ConvertedFile:
    """A worker's report on one file whose samples wait in ``.part`` files.

    ``samples`` holds ``(part_path, sample_name, first_measure, n_notes)`` per sample.
    """

    samples: list
    n_notes: int
    notes_out_of_range: int
    notes_in_pickup: int


def convert_file(path, source, output_dir, settings, max_file_mb=MAX_FILE_MB):
    """Worker: convert one file and write its samples as ``.part`` files in ``output_dir``.

    Returns
    -------
    ConvertedFile or str
        The report, or the reason the file gave no sample. A bad file never raises;
        a failed write (a full disk) does, and ends the run.
    """
    try:
        size = os.path.getsize(path)
        if size > max_file_mb * 2**20:
            return f"too large: {size / 2**20:.1f} MB, more than {max_file_mb:g} MB"
        conversion = midi_to_samples(path, settings)
    except SkipFile as skip:
        return str(skip)
    except MemoryError:
        return "out of memory: the file needs more than the worker's memory limit"
    except OSError as error:
        return f"unreadable: {error.strerror or error}"
    samples = []
    for sample, first_measure in zip(conversion.samples, conversion.first_measures):
        name = sample_name(source, first_measure)
        part = write_part(Path(output_dir, name), npy_writer(sample))
        samples.append((part, name, first_measure, int(sample.sum())))
    return ConvertedFile(samples, conversion.n_notes, conversion.notes_out_of_range, conversion.notes_in_pickup)


def _limit_worker_memory(memory_mb):
    """Cap a worker's address space where the OS can, so that a file too big fails alone."""
    try:
        import resource

        limit = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # Windows has no resource module
        pass


class OutputFolder:
    """OUTPUT_DIR: the samples, ``index.csv``, ``skipped.csv`` and ``settings.json``.

    Workers write samples as ``.part`` files; rows are appended only after all of a
    file's samples are moved into place, one write per file, so a run killed at any
    moment leaves an index that lists only complete samples, and no truncated ``.npy``.
    ``settings.json`` also names the shard, where the folder holds one (see Shard).
    """

    def __init__(self, path, settings, shard=Shard()):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._check_settings(settings, shard)
        remove_partial_files(self.path)  # from a run that was killed mid-write
        self.index = self._open_csv("index.csv", INDEX_COLUMNS)
        self.skipped = self._open_csv("skipped.csv", SKIPPED_COLUMNS)

    def _check_settings(self, settings, shard):
        found = DataSettings.read(self.path)
        if found is None:
            self._write_settings(settings, shard)
            return
        different = [
            f"{field.name}={getattr(found, field.name)}"
            for field in dataclasses.fields(settings)
            if getattr(found, field.name) != getattr(settings, field.name)
        ]
        if different:
            raise UsageError(
                f"{self.path} holds samples made with {', '.join(different)}; "
                "use the same options to resume, or a new output folder"
            )
        found_shard = recorded_shard(self.path)
        if found_shard != shard:  # resuming would mix the files of two shards in one index
            raise UsageError(
                f"{self.path} holds a conversion of {found_shard.describe()}, not of {shard.describe()}; "
                f"resume it {found_shard.option()}, or use a new output folder for each shard"
            )

    def _write_settings(self, settings, shard):
        if shard.whole:  # as older code wrote it: no shard named means all the files
            settings.write(self.path)
            return
        # DataSettings.read takes its own keys and leaves this one: older code reads the folder too.
        values = {**dataclasses.asdict(settings), "shard": str(shard)}
        atomic_write(self.path / SETTINGS_FILE, text_writer(json.dumps(values, indent=2)))

    def _open_csv(self, name, columns):
        """Open a CSV for appending, writing its header when new and dropping a torn last line."""
        path = self.path / name
        if path.exists():
            text = path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):
                path.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")
        file = open(path, "a", newline="", encoding="utf-8")
        if file.tell() == 0:
            csv.writer(file).writerow(columns)
            file.flush()
        return file

    def done_sources(self):
        """Sources already converted or skipped by an earlier run."""
        done = set()
        for file in (self.index, self.skipped):
            with open(file.name, newline="", encoding="utf-8") as reader:
                done.update(row["source"] for row in csv.DictReader(reader))
        return done

    def add(self, source, converted):
        """Move a file's samples into place, then list them. Returns the number added."""
        for part, name, _, _ in converted.samples:
            os.replace(part, self.path / name)
        self._append(self.index, [(name, source, first, notes) for _, name, first, notes in converted.samples])
        return len(converted.samples)

    def skip(self, source, reason):
        self._append(self.skipped, [(source, reason)])

    @staticmethod
    def _append(file, rows):
        buffer = io.StringIO()
        csv.writer(buffer).writerows(rows)
        file.write(buffer.getvalue())  # one write per file: a kill cannot split its rows
        file.flush()

    def close(self):
        """Close the CSVs and remove ``.part`` files of workers that were stopped."""
        self.index.close()
        self.skipped.close()
        remove_partial_files(self.path)


@dataclasses.dataclass
class Summary:
    """What a run did. ``files_found``: the MIDI files of its shard; ``files_in_input``: all of INPUT_DIR's."""

    shard: Shard = Shard()
    files_in_input: int = 0
    files_found: int = 0
    files_done_before: int = 0
    files_read: int = 0
    files_converted: int = 0
    samples_written: int = 0
    notes: int = 0
    notes_out_of_range: int = 0
    notes_in_pickup: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)
    seconds: float = 0.0

    def text(self, output_dir, settings):
        """The one-paragraph report printed at the end of a run."""
        rate = self.files_read / self.seconds if self.seconds else 0.0
        files = f"{self.files_found} MIDI files" if self.shard.whole else "them"  # the shard's, said before
        read = f"Read {self.files_read} of {files} in {self.seconds:.1f} s ({rate:.0f} files/s)"
        if self.files_done_before:
            read += f"; the other {self.files_done_before} were done by an earlier run"
        written = f"{self.samples_written} samples written from {self.files_converted} files"
        if self.skipped:
            reasons = ", ".join(f"{count} {reason}" for reason, count in self.skipped.most_common())
            written += f"; {sum(self.skipped.values())} files skipped ({reasons})"
        window = f"MIDI {settings.lowest_pitch}-{settings.lowest_pitch + PITCHES - 1}"
        moved = "moved by octaves into it" if settings.out_of_range == "fold" else "dropped"
        notes = f"{self.notes_out_of_range} of {self.notes} notes were outside {window} and {moved}"
        if self.notes_in_pickup:
            notes += f"; {self.notes_in_pickup} notes of pickup bars were left out"
        listed = f"Samples are listed in {Path(output_dir, 'index.csv')}"
        if self.skipped:
            listed += f", skipped files and why in {Path(output_dir, 'skipped.csv')}"
        sentences = [read, written, notes, listed]
        if not self.shard.whole:
            sentences.insert(0, f"Shard {self.shard}: {self.files_found} of {self.files_in_input} MIDI files")
        return ". ".join(sentences) + "."


def convert_folder(
    input_dir, output_dir, settings=DataSettings(), workers=None, timeout=FILE_TIMEOUT_S, max_file_mb=MAX_FILE_MB,
    memory_mb=WORKER_MEMORY_MB, progress=None, verbose=False, shard=Shard(),
):
    """Convert every MIDI file under ``input_dir`` into samples in ``output_dir``.

    Files run in ``workers`` processes (default: one per core). A file larger than
    ``max_file_mb``, taking longer than ``timeout`` seconds, needing more than
    ``memory_mb`` or crashing its worker is skipped; the worker is replaced. Files listed
    in ``output_dir``'s CSVs are not read again. ``progress``: show a progress bar (None:
    when writing to a terminal). ``shard``: convert only its files (see Shard); the shards'
    output folders together hold what one run on all the files writes. Returns a ``Summary``.
    """
    started = time.perf_counter()
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise UsageError(f"input folder {input_dir} does not exist")
    try:
        output = OutputFolder(output_dir, settings, shard)
    except OSError as error:
        raise UsageError(f"cannot write to output folder {output_dir}: {error.strerror or error}") from None

    summary = Summary(shard)
    paths = find_midi_files(input_dir)
    summary.files_in_input = len(paths)
    sources = {path: path.relative_to(input_dir).as_posix() for path in paths}
    paths = [path for path in paths if shard.holds(sources[path])]
    summary.files_found = len(paths)
    done = output.done_sources()
    todo = [path for path in paths if sources[path] not in done]
    summary.files_done_before = len(paths) - len(todo)

    def record(source, outcome):
        summary.files_read += 1
        if isinstance(outcome, ConvertedFile):
            summary.files_converted += 1
            summary.samples_written += output.add(source, outcome)
            summary.notes += outcome.n_notes
            summary.notes_out_of_range += outcome.notes_out_of_range
            summary.notes_in_pickup += outcome.notes_in_pickup
        else:
            output.skip(source, outcome)
            summary.skipped[outcome.split(":")[0]] += 1
            if verbose:
                tqdm.write(f"skipped {source}: {outcome}")

    bar = tqdm(total=len(todo), unit="file", disable=None if progress is None else not progress)
    pool = ProcessPool(
        max_workers=workers or os.cpu_count() or 1, initializer=_limit_worker_memory, initargs=(memory_mb,),
    )
    try:
        futures = {
            pool.submit(convert_file, timeout, path, sources[path], output.path, settings, max_file_mb): path
            for path in todo
        }
        for future in as_completed(futures):
            record(sources[futures[future]], _outcome(future, timeout))
            bar.set_postfix_str(f"{summary.samples_written} samples", refresh=False)
            bar.update()
    finally:
        pool.stop()
        pool.join()
        bar.close()
        output.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _outcome(future, timeout):
    """A worker's ConvertedFile or skip reason, also when the worker itself failed."""
    try:
        return future.result()
    except FutureTimeout:  # before OSError: since Python 3.11 it is one
        return f"timeout: no result after {timeout:g} s"
    except ProcessExpired as error:
        return f"worker crashed: exit code {error.exitcode}"
    except OSError:  # writing failed: a full disk or a vanished folder ends the run
        raise
    except MemoryError:
        return "out of memory: the file needs more than the worker's memory limit"
    except Exception as error:  # a bug of ours: the run goes on, the file is reported
        return f"error: {type(error).__name__}: {error}"
