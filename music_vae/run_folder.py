"""A run's folder: what one training run leaves, its state (the record of what is done),
its info file, its models, and the way back to its last recorded epoch after a stop."""

import contextlib
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import sys
from pathlib import Path

from music_vae.backend import keras
from music_vae.config import grouped_parameters
from music_vae.distribute import listed_devices
from music_vae.evaluation import evaluation_table
from music_vae.files import UsageError, atomic_write, remove_partial_files, text_writer
from music_vae.latent import DENSITY_FILE, LatentDensity
from music_vae.moods import steering_text
from music_vae.samples import PITCHES, DataSettings

try:
    import fcntl  # locks a run folder while it trains; Windows has none
except ImportError:
    fcntl = None


class RunFolder:
    """``<output>/<YYYYMMDDHHMMSS>_<RUN-NAME>/``: everything one training run leaves.

    - ``<folder name>_info.txt``: the run's purpose, parameters, data, versions, losses
    - ``state.json``: the same, for the program (and ``--resume``)
    - ``logs/``: TensorBoard event files (``train``, ``validation``, ``songs``)
    - ``model/``: ``vae.keras`` (with the optimizer's state), ``encoder.keras``,
      ``decoder.keras`` and, where songs are drawn from the data, ``latent_density.npz``,
      saved after every completed epoch (in ``model/epochNNN/`` until state.json records
      the epoch, then moved into place)
    - ``generated/npy``, ``generated/midi``, ``generated/img``, ``generated/wav``: the songs
    - ``index.html`` and ``losses.png``: the run page, rewritten after every epoch
    - ``evaluation.json``, ``evaluation.png``: the evaluation of the final songs
    """

    def __init__(self, path):
        self.path = Path(path)
        self.info = self.path / f"{self.path.name}_info.txt"
        self.state_file = self.path / "state.json"
        self.logs = self.path / "logs"
        self.model = self.path / "model"
        self.generated = self.path / "generated"
        self.page = self.path / "index.html"

    @staticmethod
    def check_new(output_dir, run_name):
        """Raise UsageError where ``create`` would fail for a reason the user can fix: a
        run name unfit for a folder, or an output folder that cannot be made or written."""
        if not re.fullmatch(r"[A-Za-z0-9._-]+", run_name):
            raise UsageError(f"run name {run_name!r} may hold only letters, digits, '.', '_' and '-'")
        existing = Path(output_dir).absolute()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            problem = "Not a directory" if not existing.is_dir() else "Permission denied"
            raise UsageError(f"cannot create the run folder in {output_dir}: {problem} ({existing})")

    @classmethod
    def create(cls, output_dir, run_name):
        """A new run folder, with its ``model`` and ``logs`` folders."""
        cls.check_new(output_dir, run_name)
        stamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        run = cls(Path(output_dir) / f"{stamp}_{run_name}")
        try:
            run.path.mkdir(parents=True)
            run.model.mkdir()
            run.logs.mkdir()
        except FileExistsError:
            raise UsageError(
                f"run folder {run.path} exists already; wait a second or pick another --run-name"
            ) from None
        except OSError as error:
            raise UsageError(f"cannot create the run folder {run.path}: {error.strerror or error}") from None
        return run

    @classmethod
    def open(cls, path, trained=True):
        """The run folder at ``path``; with ``trained``, one whose model has learnt an epoch."""
        run = cls(path)
        if not run.state_file.is_file():
            raise UsageError(
                f"{path} is not a run folder made by train (it has no state.json; "
                "a run stopped before it wrote one must be started again)"
            )
        if trained and not (run.model / "decoder.keras").is_file():
            resume = f"python music_generator.py train --resume {path}"
            raise UsageError(f"{path} has no trained model in place yet (continue it with: {resume})")
        return run

    @contextlib.contextmanager
    def training(self):
        """Hold the run folder while this process trains it, so that a second ``--resume``
        of it is refused instead of cleaning up files that are being written."""
        descriptor = None
        if fcntl:  # not on Windows, which has no such lock
            descriptor = os.open(self.path, os.O_RDONLY)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                message = f"{self.path} is being trained by another process; wait for it, or stop it first"
                raise UsageError(message) from None
            except OSError as error:  # a file system without locks (some network ones): train unguarded
                os.close(descriptor)
                descriptor = None
                note = f"note: cannot lock {self.path} ({error.strerror}); do not resume it twice at once"
                print(note, file=sys.stderr)
        try:
            yield
        finally:
            if descriptor is not None:
                os.close(descriptor)

    def remove_unless_saved(self):
        """Remove the folder if its state was never saved (the disk was full from the start):
        it would hold nothing to resume."""
        if not self.state_file.exists():
            shutil.rmtree(self.path, ignore_errors=True)

    def load_state(self):
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError) as error:
            raise UsageError(f"cannot read {self.state_file}: {error}") from None

    def save(self, state):
        """Write state.json and the info file, atomically. state.json is the record of what
        is complete: an epoch counts once it is written there."""
        atomic_write(self.state_file, text_writer(json.dumps(state, indent=1)))
        atomic_write(self.info, text_writer(info_text(state)))

    def staged_models(self, epoch):
        """Where the models of ``epoch`` wait until state.json records it."""
        return self.model / f"epoch{epoch:03d}"

    def save_models(self, vae, epoch, density=None):
        """Save the VAE (with its optimizer, for --resume), encoder and decoder of ``epoch``,
        and ``density`` (a LatentDensity) where given, into ``model/epochNNN/``;
        ``use_models`` moves them into place once state.json records the epoch. So the
        models in place are always those of the last recorded epoch, whenever a kill comes."""
        folder = self.staged_models(epoch)
        folder.mkdir(exist_ok=True)
        for name, model in (("vae", vae), ("encoder", vae.encoder), ("decoder", vae.decoder)):
            atomic_write(folder / f"{name}.keras", model.save, suffix=".keras")
        if density is not None:
            atomic_write(folder / DENSITY_FILE, density.write)

    def use_models(self, epoch):
        """Move the models of ``epoch``, which state.json records, into place. A kill halfway
        leaves the rest in their folder, which ``recover`` moves. A latent density fitted to
        the models of an earlier epoch goes: it would draw from where they put the songs."""
        folder = self.staged_models(epoch)
        if not (folder / DENSITY_FILE).exists():
            (self.model / DENSITY_FILE).unlink(missing_ok=True)
        for path in folder.iterdir():
            os.replace(path, self.model / path.name)
        folder.rmdir()

    def latent_density(self, sample_from, latent, fit):
        """Where the run's songs are drawn from: the prior N(0, I), or (``sample_from``
        "data") the density fitted to its training songs with the models in place, which
        ``fit()`` fits and this saves where the run has none yet (one trained from the prior)."""
        if sample_from == "prior":
            return LatentDensity.prior(latent)
        path = self.model / DENSITY_FILE
        if path.is_file():
            return LatentDensity.load(path)
        density = fit()
        atomic_write(path, density.write)
        return density

    def recover(self, epochs_done):
        """Bring the folder back to its last recorded epoch after a kill: remove part files,
        move that epoch's models into place if the kill came before, and remove the models
        and songs of an epoch that was not recorded."""
        remove_partial_files(self.path, recursive=True)
        for folder in self.model.glob("epoch*"):
            if folder == self.staged_models(epochs_done):
                self.use_models(epochs_done)
            else:
                shutil.rmtree(folder)
        for path in self.generated.glob("*/epoch*_song*"):
            epoch = re.match(r"epoch(\d+)_", path.name)
            if epoch and int(epoch.group(1)) > epochs_done:
                path.unlink()


def info_text(state):
    """The human-readable info file of a run."""
    lines = [state["run"], "=" * len(state["run"]), "", state["run_info"] or "(no --run-info given)", ""]
    lines += [f"Status:   {state['status']}, {state['epochs_done']} of {state['parameters']['epochs']} epochs done"]
    for session in state["sessions"]:
        lines += [
            f"Session:  {session['started']} to {session.get('ended') or 'now'}, from epoch {session['from_epoch']}"
        ]
    lines += ["", "Parameters"]
    for group, options in grouped_parameters(state["parameters"]):
        lines += [f"  {group}:"] + [f"  {flag:24} {value}" for flag, value in options]
    data, model, speed = state["data"], state["model"], state["speed"]
    lines += [
        "",
        "Data",
        f"  folder                   {data['folder']}",
        f"  samples                  {data['samples']}: {split_text(data)}",
        f"  malformed, skipped       {len(data['malformed'])}",
        *[f"    {name}: {problem}" for name, problem in data["malformed"][:20]],
        f"  notes per sample         {data['mean_notes']:.1f} on average (the default note count of a song)",
        f"  pitch window             MIDI {data['lowest_pitch']}-{data['lowest_pitch'] + PITCHES - 1}",
        "",
        "Model",
        f"  parameters               {model['parameters']:,} "
        f"(encoder {model['encoder']:,}, decoder {model['decoder']:,})",
        "",
        "Speed",
        f"  XLA, cache               {speed['jit']}, {speed['cache']}",
        *([f"  trained on               {devices_text(state['devices'])}"] if "devices" in state else []),
        f"  GFLOP a training sample  {speed['gflop_per_sample']:.2f}",
        f"  peak GFLOP/s             {speed['peak_gflop_per_s']:,.0f} "
        "(a measured matrix product on one device; mfu is the share of it, times the devices, in use)",
        "",
        "Songs",
        f"  audio                    {state.get('audio', 'none')}",
        *([f"  from generate            {generate_text(state['generate'])}"] if "generate" in state else []),
        *[
            f"  mood direction           {name}: moves {', '.join(moved) or 'no feature beyond its interval'}"
            for name, moved in state.get("mood_directions", {}).items()
        ],
        "",
        "Environment",
        *[f"  {key:24} {value}" for key, value in state["environment"].items()],
        "",
        "Losses per epoch",
    ]
    if state["history"]:
        columns = loss_columns(state["history"])
        lines.append("  epoch" + "".join(f"{column:>20}" for column in columns))
        for row in state["history"]:
            cells = (f"{row[column]:20.4f}" if column in row else " " * 20 for column in columns)
            lines.append(f"  {row['epoch']:5d}" + "".join(cells))
    else:
        lines.append("  (no epoch completed yet)")
    if state.get("evaluation"):
        lines += [
            "", "Evaluation (the latest: at the end of training, or by python music_generator.py evaluate)",
            "  " + evaluation_table(state["evaluation"]),
        ]
    return "\n".join(lines) + "\n"


def generate_text(generated):
    """What the last generate into the run's folder did, as "8 songs, seed 5, steered valence +1.0 sd"."""
    steered = f", steered {steering_text(generated['steering'])}" if generated.get("steering") else ""
    return f"{generated['songs']} songs, seed {generated['seed']}{steered}"


def data_settings(state):
    """The DataSettings of a run's samples, as its state records them (runs before
    ``out_of_range`` was recorded used the converter's default)."""
    return DataSettings.from_dict({"out_of_range": DataSettings.out_of_range, **state["data"]})


def devices_text(devices):
    """A run's devices and processes in words: "2 devices (gpu:0, gpu:1), 1 process"."""
    names, processes = devices["names"], devices["processes"]
    return (
        f"{len(names)} device{'s' * (len(names) > 1)} ({', '.join(names)}), "
        f"{processes} process{'es' * (processes > 1)}"
    )


def loss_columns(history):
    """The names of the numbers a run's history holds, in the order they first appear."""
    return list(dict.fromkeys(key for row in history for key in row if key != "epoch"))


def split_text(data):
    """A run's data splits in words (its state's ``data``): "2177: 1744 for training, 217 for
    validation, 216 for test"."""
    test = f", {data['test']} for test" if data.get("test") else ""  # none before the test split existed
    return f"{data['training']} for training, {data['validation']} for validation{test}"


# The modules that only judge, show or play a run's songs, or time the machine: they do not
# change what it learns. config.py decides only a run's parameters, which are compared apart.
NOT_TRAINING_CODE = (
    "audio.py", "commands.py", "config.py", "evaluation.py", "explore_server.py", "latent_space.py", "moods.py",
    "music_metrics.py", "peak_speed.py", "portable.py", "run_page.py", "trained_run.py", "web_runtime.py",
)


def code_version():
    """A hash of the sources of music_vae/ that decide what a run learns (all but
    NOT_TRAINING_CODE): two runs whose parameters and code_version agree were trained alike,
    and the bench takes one for the other."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.name not in NOT_TRAINING_CODE:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def environment():
    """Versions and devices, for the info file."""
    versions = {
        "music_vae": code_version(),
        "python": platform.python_version(),
        "keras": f"{keras.__version__} (backend {keras.backend.backend()})",
    }
    for module in ("tensorflow", "jax", "torch", "numpy", "pretty_midi"):
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", "?")
    versions["devices"] = ", ".join(listed_devices())
    versions["machine"] = f"{platform.platform()}, {os.cpu_count()} cores"
    return versions


def now():
    return datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
