"""Run music_generator.py's command line and stop it at one chosen moment: killed with
SIGKILL, as by a power cut or the kernel's out-of-memory killer, or interrupted with SIGINT,
as by Ctrl-C. For the tests of what ``train --resume`` makes of what is left.

    PYTHONPATH=. python tests/stop_at.py HOW@WHEN train --data ... [options]

HOW is ``kill``, ``ctrl-c`` or ``ctrl-c-twice`` (two presses at once). WHEN is

- ``batch:E:B``: as training batch B of epoch E begins (both counted from 1);
- ``write:NAME``: while the file whose path ends in NAME is written (a kill comes when
  its part file is half written);
- ``call:NAME[:N]``: as ``music_vae.NAME`` (a function such as
  ``evaluation.reconstruction_scores``, or a method such as ``run_folder.RunFolder.use_models``)
  is called for the Nth time (default: the first).
"""

import importlib
import os
import signal
import sys

import music_generator  # the repository is on PYTHONPATH: test_stopped_runs.py puts it there
from music_vae import files
from music_vae.backend import keras


def stopper(how):
    def kill():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def ctrl_c(presses):
        def press():
            for _ in range(presses):  # each handled before the next: signals to this thread come at once
                signal.raise_signal(signal.SIGINT)

        return press

    return {"kill": kill, "ctrl-c": ctrl_c(1), "ctrl-c-twice": ctrl_c(2)}[how]


def at_batch(stop, epoch, batch):
    callbacks = keras.callbacks.CallbackList
    begin_epoch, begin_batch = callbacks.on_epoch_begin, callbacks.on_train_batch_begin
    now = {}

    def epoch_begins(self, number, logs=None):
        now["epoch"] = number + 1
        return begin_epoch(self, number, logs)

    def batch_begins(self, number, logs=None):
        if (now.get("epoch"), number + 1) == (epoch, batch):
            stop()
        return begin_batch(self, number, logs)

    callbacks.on_epoch_begin, callbacks.on_train_batch_begin = epoch_begins, batch_begins


def while_writing(stop, name, half=False):
    write_part = files.write_part

    def write_and_stop(path, write, suffix=""):
        if not str(path).endswith(name):
            return write_part(path, write, suffix)

        def write_then_stop(part):
            write(part)
            if half:
                os.truncate(part, os.path.getsize(part) // 2)
            stop()

        return write_part(path, write_then_stop, suffix)

    files.write_part = write_and_stop


def at_call(stop, name, count=1):
    module, *owners, attribute = name.split(".")
    owner = importlib.import_module(f"music_vae.{module}")
    for part in owners:
        owner = getattr(owner, part)
    called, calls = getattr(owner, attribute), []

    def stop_then_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == count:
            stop()
        return called(*args, **kwargs)

    setattr(owner, attribute, stop_then_call)


if __name__ == "__main__":
    # Ctrl-C as in a terminal, also where this runs in a background job that ignores SIGINT
    # (bash without job control ignores it for `cmd &`, and children inherit that).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    how, _, when = sys.argv[1].partition("@")
    kind, _, where = when.partition(":")
    stop = stopper(how)
    if kind == "batch":
        at_batch(stop, *map(int, where.split(":")))
    elif kind == "write":
        while_writing(stop, where, half=how == "kill")
    elif kind == "call":
        name, _, count = where.partition(":")
        at_call(stop, name, int(count or 1))
    else:
        sys.exit(f"stop_at.py: no such moment: {sys.argv[1]!r}")
    code = music_generator.main(sys.argv[2:])
    sys.exit(code if how != "kill" else f"stop_at.py: the command ended (exit code {code}) before the moment came")
