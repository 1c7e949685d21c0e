"""Training on several devices and machines, on Keras' own engine.

``--distribute data-parallel`` keeps a copy of the model on every device and spreads each
batch over them; their gradients are summed, so that a step is the one a single device
would take on the whole batch.

- JAX: ``keras.distribution.DataParallel`` over the devices. Several machines (processes)
  join through ``keras.distribution.initialize``, which reads the coordinator's address,
  the number of processes and this one's id from the KERAS_DISTRIBUTION_* environment
  variables; every process reads its own part of each batch, process 0 alone writes.
- TensorFlow: ``tf.distribute.MirroredStrategy``, on one machine. Keras divides its own
  losses by the number of replicas, whose gradients the optimizer sums, but not a model's
  own ``compute_loss``: the VAE divides its loss by ``VAE.replicas``. Adam's update is not
  fused into one XLA call there, since it could not hold the strategy's cross-replica sum.
- PyTorch: Keras 3.15 distributes nothing there; a one-line error says what to use.

Every batch is cut to a multiple of the number of devices (see SongFiles), since each
device must get as many samples as the others.
"""

import contextlib
import dataclasses
import os

from music_vae.backend import keras
from music_vae.files import UsageError

# What keras.distribution.initialize reads: the coordinator's address ("host:port"; or every
# process's, comma-separated), the number of processes, and this one's id, from 0.
CLUSTER_VARIABLES = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_PROCESS_ID",
)


@dataclasses.dataclass(frozen=True)
class Processes:
    """The processes of a run, one a machine as a rule: how many, and which one this is."""

    count: int = 1
    index: int = 0

    @staticmethod
    def of_environment(environment=os.environ):
        """The processes that ``environment`` names (CLUSTER_VARIABLES); one where it names none.

        Raises
        ------
        UsageError
            The variables are incomplete or not numbers, or the backend cannot join processes.
        """
        given = {name: environment.get(name, "") for name in CLUSTER_VARIABLES}
        if not given["KERAS_DISTRIBUTION_NUM_PROCESSES"]:
            return Processes()
        try:
            count, index = int(given["KERAS_DISTRIBUTION_NUM_PROCESSES"]), int(given["KERAS_DISTRIBUTION_PROCESS_ID"])
        except ValueError:
            numbers = " and ".join(f"{name}={given[name]!r}" for name in CLUSTER_VARIABLES[1:])
            raise UsageError(f"{numbers} must be whole numbers") from None
        if count == 1:
            return Processes()
        if not 0 <= index < count or not given["KERAS_DISTRIBUTION_JOB_ADDRESSES"]:
            raise UsageError(
                f"a run of {count} processes needs KERAS_DISTRIBUTION_JOB_ADDRESSES (the first process's host:port) "
                f"and a KERAS_DISTRIBUTION_PROCESS_ID from 0 to {count - 1}"
            )
        if keras.backend.backend() != "jax":
            raise UsageError(
                "training on several machines needs the JAX backend (KERAS_BACKEND=jax), "
                f"not {keras.backend.backend()}"
            )
        return Processes(count, index)

    @property
    def writes(self):
        """Whether this process writes the run folder, its songs, logs and models: the first."""
        return self.index == 0

    def join(self):
        """Join the other processes, before any computation, as JAX asks: keras.distribution
        reads the CLUSTER_VARIABLES."""
        if self.count > 1:
            keras.distribution.initialize()

    def wait_for_all(self, name):
        """Return once every process has called this with ``name``."""
        if self.count > 1:
            from jax.experimental import multihost_utils  # only JAX joins processes (of_environment)

            multihost_utils.sync_global_devices(name)


@dataclasses.dataclass
class Devices:
    """The devices a run trains on, and how.

    Attributes
    ----------
    names : list of str
        Every device a batch is spread over, on all machines ("gpu:0", "cpu:1", ...); one
        where nothing is distributed.
    processes : Processes
    strategy : tf.distribute.Strategy or None
        TensorFlow's, where it distributes.
    """

    names: list
    processes: Processes = Processes()
    strategy: object = None

    @property
    def count(self):
        return len(self.names)

    def scope(self):
        """Where the model must be made (and loaded) to live on every device."""
        return self.strategy.scope() if self.strategy else contextlib.nullcontext()

    def prepare(self, vae):
        """Set up ``vae``, made in ``scope``, to train on these devices: the loss divided
        among TensorFlow's replicas, and Adam unfused there."""
        if self.strategy:
            vae.replicas = self.strategy.num_replicas_in_sync
            getattr(vae.optimizer, "inner_optimizer", vae.optimizer).fuse = False

    def holds(self, size):
        """Whether ``size`` bytes fit on the one device a run trains on, beside the model and
        its steps: in a quarter of its memory (JAX says a GPU's; a CPU's is the machine's,
        where the copy in RAM that it is made from stays until it is made). True where
        neither can be read; False for a run spread over several devices, where each would
        need its own copy."""
        if self.count > 1 or self.processes.count > 1:
            return False
        memory = None
        if keras.backend.backend() == "jax":
            import jax

            memory = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
        memory = memory or machine_memory()
        return memory is None or size <= memory // 4

    def summary(self):
        """What a run's state records of its devices."""
        return {"names": self.names, "processes": self.processes.count}


def machine_memory():
    """Bytes of this machine's memory, or None where the system does not say (Windows)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def choose_devices(distribute, devices=None, processes=Processes()):
    """The Devices of ``--distribute`` (``"none"`` or ``"data-parallel"``) and ``--devices``
    (how many of this machine's devices; None: all), and, with JAX, the distribution set.

    Raises
    ------
    UsageError
        The backend cannot distribute, or there are fewer devices than asked for.
    """
    backend = keras.backend.backend()
    if distribute == "none":
        if processes.count > 1:
            raise UsageError(
                f"{processes.count} processes are set up (KERAS_DISTRIBUTION_*): pass --distribute data-parallel, "
                "or unset those variables"
            )
        return Devices(names=listed_devices()[:1])
    if backend == "jax":
        if processes.count > 1 and devices:
            raise UsageError(
                "--devices is for one machine: with several processes, each uses the devices it sees "
                "(choose them with CUDA_VISIBLE_DEVICES)"
            )
        processes.join()
        names = jax_devices(devices)
        # SongFiles serves each process its own part of a batch: Keras shards only a tf.data.Dataset.
        distribution = keras.distribution.DataParallel(devices=names, auto_shard_dataset=False)
        keras.distribution.set_distribution(distribution)
        return Devices(names=names, processes=processes)
    if backend == "tensorflow":
        return mirrored_devices(devices)
    raise UsageError(
        f"--distribute data-parallel works with the JAX and TensorFlow backends, not {backend}: "
        "run with KERAS_BACKEND=jax"
    )


def listed_devices():
    """The names of the backend's devices (GPUs where there are, else CPUs), as Keras lists
    them; one that says so where the backend lists none."""
    try:
        return keras.distribution.list_devices()
    except Exception:  # not every backend lists its devices
        return ["(not listed by this backend)"]


def jax_devices(wanted):
    """The first ``wanted`` of JAX's devices (GPUs where there are, else CPUs; with several
    processes, those of all); None: all."""
    names = keras.distribution.list_devices()
    if wanted and wanted > len(names):
        raise UsageError(f"--devices {wanted}: this machine has {len(names)} ({', '.join(names)})")
    return names[:wanted] if wanted else names


def mirrored_devices(wanted):
    """Devices with TensorFlow's MirroredStrategy over its first ``wanted`` GPUs (else
    logical CPUs; None: all)."""
    import tensorflow as tf

    found = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    if wanted and wanted > len(found):
        raise UsageError(f"--devices {wanted}: TensorFlow sees {len(found)} ({', '.join(d.name for d in found)})")
    chosen = [device.name for device in found[: wanted or len(found)]]
    return Devices(names=chosen, strategy=tf.distribute.MirroredStrategy(chosen))


@contextlib.contextmanager
def undistributed():
    """Compute on this process's own device inside the block, with no distribution set: a
    song of a few latent vectors cannot be split over the devices, and with several
    processes the others would wait for their part."""
    distribution = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)


class LocalCopy:
    """The encoder and decoder of a VAE trained on several processes, copied onto this
    process's own device for the songs and the evaluation, which process 0 alone makes. A
    JAX model on several processes computes only with all of them; where there is one
    process, the model itself serves.

    ``update`` copies the weights in again after every epoch."""

    def __init__(self, vae, processes):
        self.vae = vae
        self.copies = processes.count > 1
        if self.copies:
            with undistributed():
                self.encoder = keras.models.clone_model(vae.encoder)
                self.decoder = keras.models.clone_model(vae.decoder)
        else:
            self.encoder, self.decoder = vae.encoder, vae.decoder

    def update(self):
        """Copy the VAE's weights (and its latent batch norm's statistics) into the copies."""
        if self.copies:
            with undistributed():
                self.encoder.set_weights(self.vae.encoder.get_weights())
                self.decoder.set_weights(self.vae.decoder.get_weights())
        return self
