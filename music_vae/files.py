"""Small shared helpers: files written whole or not at all, pictures and quiet stderr for them,
user mistakes, command-line types.

Every file the project writes goes through ``atomic_write`` (or ``write_part``, whose part
file the caller moves into place), so that a kill, a crash or a full disk never leaves a
half-written file under its real name; ``remove_partial_files`` clears the part files such
a stop leaves. A mistake of the user's is a ``UsageError``: one line, exit code 2.
"""

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
from pathlib import Path

UMASK = os.umask(0o022)  # read once, at import (setting it is the only way to read it)
os.umask(UMASK)
PART = ".part"  # in the name of every file being written; see write_part


class UsageError(Exception):
    """A mistake of the user's: reported in one line, exit code 2."""


# --------------------------------------------------------------------------------------
# Writing files
# --------------------------------------------------------------------------------------


def write_part(path, write, suffix=""):
    """Call ``write(part)`` for a new file ``part`` beside ``path``; return ``part``.

    The part file, ``<name>.<random>.part<suffix>``, becomes ``path`` by ``os.replace``,
    in one step, once complete. Whatever stops the writing (a crash, a full disk) leaves
    at most a part file, which ``remove_partial_files`` removes on the next run.
    """
    path = Path(path)
    descriptor, part = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=PART + suffix)
    os.close(descriptor)
    try:
        write(part)
        # mkstemp makes the file private (0600); give it the mode any new file gets.
        os.chmod(part, 0o666 & ~UMASK)
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise
    return part


def atomic_write(path, write, suffix=""):
    """Call ``write(temporary_path)`` and move the result to ``path``: readers see the old
    file or the complete new one, never a half-written one, even after a power cut (both
    the file and its new name reach the disk before this returns). ``suffix`` ends the
    temporary name, for writers that insist on one (Keras wants ``.keras``)."""
    part = write_part(path, write, suffix)
    flush_to_disk(part)
    os.replace(part, path)
    flush_to_disk(Path(path).parent)


def flush_to_disk(path):
    """Wait until the file or folder ``path`` is on the disk, not only in the system's cache
    (for a folder: the names in it; Windows cannot, and does without)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # a folder, on Windows
        return
    try:
        os.fsync(descriptor)
    except OSError:  # not every file system can
        pass
    finally:
        os.close(descriptor)


def remove_partial_files(folder, recursive=False):
    """Remove the part files that writers killed mid-write left in ``folder`` (and its
    subfolders where ``recursive``). Only for a folder that nothing is writing to."""
    for path in Path(folder).rglob("*") if recursive else Path(folder).iterdir():
        if re.search(rf"{re.escape(PART)}(\.\w+)?$", path.name) and path.is_file():
            path.unlink()


def text_writer(text):
    """A ``write(path)`` function for ``atomic_write`` that saves ``text`` as UTF-8."""
    return lambda path: Path(path).write_text(text, encoding="utf-8")


def npy_writer(array):
    """A ``write(path)`` function for ``write_part`` and ``atomic_write`` that saves
    ``array`` in ``.npy`` format at exactly ``path`` (``np.save`` would append ``.npy``)."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)

    def write(path):
        # One write of the finished bytes: a full disk raises OSError with its errno
        # ("No space left on device"); numpy's own file writer does not say why.
        with open(path, "wb") as file:
            file.write(buffer.getbuffer())

    return write


def figure_pixels(figure):
    """A matplotlib figure drawn as an (height, width, 4) uint8 RGBA array."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure.tight_layout()
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba()).copy()
    figure.clear()  # a figure and its canvas refer to each other: free the drawing now
    return image


def png_writer(image):
    """A ``write(path)`` function for ``atomic_write`` that saves an RGBA array as PNG."""
    import matplotlib.image

    return lambda path: matplotlib.image.imsave(path, image, format="png")


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2: TensorFlow prints start-up lines from C++, at import and
    when it first looks for devices, that no setting hides (abseil logs before it is
    configured)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# --------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a mistake in the flags reported in one line rather than the usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def int_between(low, high=None):
    """An argparse type: an integer from ``low`` to ``high`` (no upper bound when None)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"must be {bounds}, not {value}")
        return value

    return parse


positive_int = int_between(1)


def any_float(text):
    """An argparse type: any number; the types below add their bounds."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None


def positive_float(text):
    """An argparse type: a finite number above 0."""
    value = any_float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def non_negative_float(text):
    """An argparse type: a finite number of 0 or more."""
    value = any_float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def steering(text):
    """An argparse type: standard deviations along a mood direction, from -10 to 10 (the
    labelled songs lie within about 3 either way)."""
    value = any_float(text)
    if not -10 <= value <= 10:
        raise argparse.ArgumentTypeError(f"must be from -10 to 10 standard deviations, not {text}")
    return value


def mood_setting(text):
    """An argparse type: NAME=V, a mood direction's name and its steering (see steering)."""
    name, equals, amount = text.partition("=")
    if not (equals and name.strip()):
        raise argparse.ArgumentTypeError(f"expected NAME=V, a direction's name and standard deviations, not {text!r}")
    return name.strip(), steering(amount)


def fraction(text):
    """An argparse type: a number from 0 up to, not including, 1 (a share of the songs)."""
    value = any_float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, not {text}")
    return value


def probability(text):
    """An argparse type: a number above 0, up to 1."""
    value = any_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, not {text}")
    return value
