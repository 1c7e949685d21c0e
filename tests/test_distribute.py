"""Training on several devices and processes (music_vae/distribute.py): the losses of one
device, resume and generate, two processes as two machines, TensorFlow's replicas, the part
of each batch that every device and process gets, and the mistakes.

Each training runs in a subprocess, where JAX is given two CPU devices (JAX_NUM_CPU_DEVICES)
and TensorFlow two logical ones, as a machine with two GPUs would have."""

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest

import data_loader as dl
from music_vae.dataset import SongFiles, following_samples, read_data, read_index
from music_vae.distribute import Processes, choose_devices
from music_vae.files import UsageError
from music_vae.samples import DataSettings
from helpers import REPO, SMALL, make_samples

needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
# 18 training samples in batches of 4, the last of 2, and 2 validation samples: every batch
# divides between two devices, so that one device and two see the same songs.
SAMPLES, BATCH = 20, 4
# TensorFlow's logical devices must be made before it starts; then the command as usual.
TWO_TENSORFLOW_DEVICES = (
    "import sys, runpy, tensorflow as tf; "
    "tf.config.set_logical_device_configuration(tf.config.list_physical_devices('CPU')[0], "
    "[tf.config.LogicalDeviceConfiguration()] * 2); "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def command(backend="jax", devices=2, env=None, timeout=600):
    """A function that runs music_generator.py with ``backend`` and ``devices`` CPU devices,
    and returns the CompletedProcess."""
    environment = {**os.environ, "KERAS_BACKEND": backend, "JAX_NUM_CPU_DEVICES": str(devices), **(env or {})}
    prefix = ["-c", TWO_TENSORFLOW_DEVICES] if backend == "tensorflow" and devices == 2 else []

    def run(*args, wait=True):
        argv = [sys.executable, *prefix, str(REPO / "music_generator.py"), *map(str, args)]
        options = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=environment)
        if not wait:
            return subprocess.Popen(argv, **options)
        return subprocess.run(argv, timeout=timeout, **options)

    return run


def train_args(data, output, *options, epochs=2):
    return [
        "train", "--data", data, "--output-dir", output, "--epochs", epochs, "--batch-size", BATCH, *SMALL,
        "--no-audio", "--songs", "2", "--songs-per-epoch", "1", *options,
    ]


def only_run(output):
    runs = list(output.iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def losses(run):
    """Every epoch's losses of a run: (epoch, name) -> value."""
    history = json.loads((run / "state.json").read_text())["history"]
    return {
        (row["epoch"], name): value for row in history for name, value in row.items()
        if name in ("loss", "reconstruction", "kl", "val_loss", "val_reconstruction", "val_kl")
    }


def assert_same_losses(run, reference):
    """The same losses, but for float32 sums in another order (the KL, a few thousandths of a
    nat a song, absolutely)."""
    got, expected = losses(run), losses(reference)
    assert got.keys() == expected.keys()
    np.testing.assert_allclose([got[key] for key in expected], list(expected.values()), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return make_samples(tmp_path_factory.mktemp("samples") / "samples", SAMPLES)


@pytest.fixture(scope="module")
def one_device(samples, tmp_path_factory):
    """A future of the samples' run on one device (JAX): what the distributed runs must match.
    It trains in a thread, beside the first test's processes: each of these JAX processes keeps
    about one core of the two busy."""
    output = tmp_path_factory.mktemp("one_device")

    def train_on_one_device():
        result = command(devices=1)(*train_args(samples, output))
        assert result.returncode == 0, result.stderr[-3000:]
        return only_run(output)

    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(train_on_one_device)


@needs_jax
@pytest.mark.slow
def test_two_devices_learn_what_one_does_and_their_run_resumes_and_generates(tmp_path, samples, one_device):
    run = command()
    result = run(*train_args(samples, tmp_path / "runs", "--distribute", "data-parallel", epochs=1))
    assert result.returncode == 0, result.stderr[-3000:]
    two = only_run(tmp_path / "runs")
    result = run("train", "--resume", two, "--epochs", "2", "--no-audio")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_losses(two, one_device.result())
    assert "trained on               2 devices (cpu:0, cpu:1), 1 process" in (two / f"{two.name}_info.txt").read_text()
    assert "<td>trained on</td><td>2 devices (cpu:0, cpu:1), 1 process</td>" in (two / "index.html").read_text()

    result = run("generate", "--run", two, "--songs", "3", "--seed", "1", "--no-audio")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((two / "generated" / "midi").glob("sample_song*.mid"))) == 3


def two_processes(*args):
    """Run music_generator.py as the two processes of one run, on one CPU device each, and
    return their outputs."""
    with socket.socket() as free:  # a port for the first process, the coordinator
        free.bind(("localhost", 0))
        port = free.getsockname()[1]
    processes = [
        command(
            devices=1,
            env={
                "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"localhost:{port}", "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
                "KERAS_DISTRIBUTION_PROCESS_ID": str(index),
            },
        )(*args, wait=False)
        for index in range(2)
    ]
    try:
        outputs = [process.communicate(timeout=600) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    said = [line for line in outputs[1][0].splitlines() if not line.startswith("[Gloo]")]  # gloo's own line
    assert "Done:" in outputs[0][0] and not said  # the second process writes nothing, says nothing
    return outputs


@needs_jax
@pytest.mark.slow
def test_two_processes_on_one_machine_make_one_run_with_the_losses_of_one_device(tmp_path, samples, one_device):
    """Two processes stand in for two machines: a run of one epoch, then resumed for one more."""
    two_processes(*train_args(samples, tmp_path / "runs", "--distribute", "data-parallel", epochs=1))
    run = only_run(tmp_path / "runs")
    two_processes("train", "--resume", run, "--epochs", "2", "--no-audio")
    assert only_run(tmp_path / "runs") == run
    assert_same_losses(run, one_device.result())
    assert re.search(r"2 devices \(cpu:0, cpu:\d+\), 2 processes", (run / f"{run.name}_info.txt").read_text())


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow is not installed")
@pytest.mark.slow
def test_tensorflow_replicas_share_the_loss_instead_of_adding_it_up(tmp_path, samples):
    """TensorFlow's replicas draw their own noise for the latent vectors, so the losses match
    one device's only roughly; a loss added up over the two would be twice as large. The two
    runs train at once: each process spends most of its time on one core of the two."""
    results, outputs = {}, {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for devices, options in ((1, ()), (2, ("--distribute", "data-parallel"))):
            args = train_args(samples, tmp_path / str(devices), *options, "--latent-batch-norm", "0", epochs=1)
            results[devices] = pool.submit(command("tensorflow", devices), *args)
    for devices, result in results.items():
        assert result.result().returncode == 0, result.result().stderr[-3000:]
        outputs[devices] = only_run(tmp_path / str(devices))
    two, one = losses(outputs[2]), losses(outputs[1])
    assert json.loads((outputs[2] / "state.json").read_text())["devices"]["names"] == ["/device:CPU:0", "/device:CPU:1"]
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=0.01, abs=0.05), key


def test_every_device_and_process_gets_its_part_of_the_batch_one_device_would_get(tmp_path):
    data = make_samples(tmp_path / "samples", 11)
    paths = sorted(data.glob("*.npy"))
    with open(data / "index.csv", "w") as index:  # runs of two samples of one file, for --random-start
        index.write("sample,source,first_measure,n_notes\n")
        for number, path in enumerate(paths):
            index.write(f"{path.name},song{number // 2}.mid,{16 * (number % 2)},1\n")
    options = dict(
        batch_size=4, shape=(16, 9216), shuffle=True, seed=3, transpose=5,
        following=following_samples(paths, data, 16),
    )
    whole = SongFiles(paths, **options)
    two = SongFiles(paths, devices=2, **options)
    assert len(whole) == 3 and len(two) == 3  # batches of 4, 4 and 3, cut to 4, 4 and 2 for two devices
    assert len(SongFiles(paths[:9], devices=2, **options)) == 2  # a last batch of 1 is left out
    for epoch in (0, 1):
        for songs in (whole, two):
            songs.start_epoch(epoch)
        for index in range(3):
            expected = whole[index][: len(whole[index]) // 2 * 2]
            np.testing.assert_array_equal(two[index], expected)
            parts = []
            for process in (0, 1):
                part = SongFiles(paths, devices=2, processes=(2, process), **options)
                part.start_epoch(epoch)
                parts.append(part[index])
            np.testing.assert_array_equal(np.concatenate(parts), expected)
    assert not np.array_equal(whole[0], SongFiles(paths, **options)[0])  # epochs differ: the test can tell


@pytest.mark.parametrize(
    "variables, message",
    [
        ({"KERAS_DISTRIBUTION_JOB_ADDRESSES": ""}, "a run of 2 processes needs KERAS_DISTRIBUTION_JOB_ADDRESSES"),
        ({"KERAS_DISTRIBUTION_PROCESS_ID": "2"}, "a KERAS_DISTRIBUTION_PROCESS_ID from 0 to 1"),
        ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "two"}, "_NUM_PROCESSES='two' and .* must be whole numbers"),
    ],
)
def test_the_processes_of_a_run_are_read_from_the_environment_and_checked(variables, message):
    two = {
        "KERAS_DISTRIBUTION_JOB_ADDRESSES": "node1:1234", "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
        "KERAS_DISTRIBUTION_PROCESS_ID": "1",
    }
    assert Processes.of_environment({}) == Processes(1, 0)
    if keras.backend.backend() == "jax":
        assert Processes.of_environment(two) == Processes(2, 1) and not Processes(2, 1).writes
    else:
        with pytest.raises(UsageError, match=f"several machines needs the JAX backend .*not {keras.backend.backend()}"):
            Processes.of_environment(two)
    with pytest.raises(UsageError, match=message):
        Processes.of_environment({**two, **variables})
    with pytest.raises(UsageError, match="2 processes are set up .*: pass --distribute data-parallel"):
        choose_devices("none", None, Processes(2, 0))
    with pytest.raises(UsageError, match="--devices 3: (this machine has|TensorFlow sees) 1 "):
        choose_devices("data-parallel", 3)


@needs_jax
@pytest.mark.parametrize(
    "backend, options, message",
    [
        ("torch", [], "--distribute data-parallel works with the JAX and TensorFlow backends, not torch"),
        ("jax", ["--batch-size", "1"], "1 samples a batch cannot be spread over 2 devices"),
    ],
    ids=["torch", "small-batch"],
)
@pytest.mark.slow
def test_distribution_mistakes_get_one_line_and_exit_code_2(tmp_path, backend, options, message):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    data = make_samples(tmp_path / "samples", 4)
    run = command(backend, timeout=120)
    result = run("train", "--data", data, "--output-dir", tmp_path / "runs", "--distribute", "data-parallel", *options)
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "runs").exists()


def test_the_shards_of_a_conversion_are_read_as_one_folder(tmp_path):
    """data_loader.py --shard I/N writes a folder a shard; train --data reads them together:
    their settings, and the index that keeps a MIDI file's samples together and says which
    sample follows which (--random-start)."""
    for shard in range(2):
        folder = tmp_path / f"shard{shard}"
        options = ["--shard", f"{shard}/2", "--lowest-pitch", "20", "--workers", "1", "--no-progress"]
        assert dl.main([str(REPO / "examples" / "midi"), str(folder), *options]) == 0
    data = read_data(tmp_path, 0.25, seed=0)
    assert data.settings == DataSettings(lowest_pitch=20)  # from the shards' settings.json, none above them
    index = read_index(tmp_path)
    assert len(index) == len(data.training) + len(data.validation) == 96
    sources = {index[path.name][0] for path in data.validation}
    assert not sources & {index[path.name][0] for path in data.training}  # a file's samples stay together
    assert sum(number >= 0 for number in following_samples(data.training, tmp_path, 16)) >= 32
    DataSettings(lowest_pitch=16).write(tmp_path / "shard1")
    with pytest.raises(UsageError, match="shard0 and .*shard1 hold samples made with other settings"):
        read_data(tmp_path, 0.25, seed=0)
