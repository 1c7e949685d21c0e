"""How fast training runs on 1, 2, ... devices with --distribute data-parallel, in one run.

    python bench/distributed_speed.py [--devices 1,2] [--batch-sizes 64] [--precision float32]
                                      [--seconds 15] [--json FILE]

For each number of devices and batch size: training samples/s through the real fit path
(music_generator's model, distribute.py, SongFiles from --cache, the default run's moves
and random starts) as a run trains (on one device with JAX, the cache on the device and
each batch gathered in the step; the run's per-batch callbacks, async-safe), and as runs
trained before issue 26 (every batch gathered on the host and copied, a callback that
makes fit wait for every step); the step alone (``train_on_batch`` on one batch held in
memory); the milliseconds the host takes to make a batch, each way; the scaling
efficiency (samples/s over the devices times one device's); and the MFU: the FLOPs used
against the peak of one device, measured (products of the model's largest layer, at the
batch sizes' rows among others, and a square 8192 product, whichever is fastest), times
the devices. fit is timed over whole epochs from outside, after one that compiles.

Where a machine has fewer accelerators than asked for, the devices are CPU devices carved
out of the same cores (JAX_NUM_CPU_DEVICES; TensorFlow's logical CPUs): the figures then
check that the distributed path trains and what it costs, not a speed-up. On GPUs, run it
with KERAS_BACKEND=jax. The samples are random onsets at the density of real music.
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="1,2", help="comma-separated device counts (default: %(default)s)")
    parser.add_argument("--batch-sizes", default="64", help="comma-separated global batch sizes (default: %(default)s)")
    parser.add_argument(
        "--precision", default="float32", choices=("float32", "bfloat16", "float16"), help="(default: %(default)s)"
    )
    parser.add_argument("--seconds", type=float, default=15, help="time each figure this long (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser.parse_args()


def carve_cpu_devices(count):
    """Make ``count`` CPU devices for the backend, before it starts: they stand in for
    accelerators where there are fewer."""
    os.environ.setdefault("JAX_NUM_CPU_DEVICES", str(count))
    if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


ARGS = parse_args()
COUNTS = [int(count) for count in ARGS.devices.split(",")]
carve_cpu_devices(max(COUNTS))

from train_speed import SHAPE, NOTES_PER_SAMPLE, write_samples  # noqa: E402

from music_vae.callbacks import NonFiniteStop, Speedometer, StepsAhead  # noqa: E402

from music_vae.dataset import EpochOrder, SongFiles  # noqa: E402
from music_vae.distribute import choose_devices, undistributed  # noqa: E402
from music_vae.backend import keras, ops  # noqa: E402
from music_vae.model import PRECISIONS, FusedAdam, ModelConfig, build_vae, default_jit  # noqa: E402
from music_vae.peak_speed import fastest, peak_flops, training_flops_per_sample  # noqa: E402
from music_vae.run_folder import environment  # noqa: E402


def square_peak(dtype, size=8192, seconds=1.0):
    """FLOP/s of the fastest (size x size) by (size x size) product in ``dtype``."""
    a, b = ops.ones((size, size), dtype), ops.ones((size, size), dtype)
    seconds_per_product = fastest(lambda: ops.convert_to_numpy(ops.cast(ops.matmul(a, b)[0, 0], "float32")), seconds)
    return 2 * size**3 / seconds_per_product


def timed_fit(vae, files, callbacks, seconds):
    """Training samples/s of ``fit`` over whole epochs, timed from outside after one epoch
    that compiles, with ``callbacks``."""
    vae.fit(files, epochs=1, callbacks=callbacks, verbose=0, shuffle=False)
    started = time.perf_counter()
    vae.fit(files, epochs=1, callbacks=callbacks, verbose=0, shuffle=False)
    epoch = time.perf_counter() - started
    epochs = max(1, math.ceil(seconds / epoch))
    started = time.perf_counter()
    vae.fit(files, initial_epoch=1, epochs=1 + epochs, callbacks=callbacks, verbose=0, shuffle=False)
    sizes = [min(files.batch_size, len(files.paths) - index * files.batch_size) for index in range(len(files))]
    samples = sum(size - size % files.devices for size in sizes)  # what an epoch trains on
    return samples * epochs / (time.perf_counter() - started)


def samples_per_s(count, paths, batch_size, seconds):
    """Training samples/s on ``count`` devices (1: none distributed): through fit as a run
    trains (the cache on the device where training puts it, the run's per-batch callbacks),
    through fit as runs trained before issue 26 (batches gathered on the host, a callback
    that makes fit wait for every step), and of the step alone; the milliseconds the host
    takes to make a batch, each way; the devices' names, and the model."""
    devices = choose_devices("data-parallel" if count > 1 else "none", count)
    with devices.scope():
        vae = build_vae(ModelConfig(), note_density=NOTES_PER_SAMPLE / math.prod(SHAPE))  # the paper's sizes
        jit = default_jit()
        vae.compile(optimizer=FusedAdam(learning_rate=1e-4, fuse=not jit), jit_compile=jit)
    devices.prepare(vae)
    # The default run's songs: each moved up to 6 semitones, and run on into the next sample.
    options = dict(shuffle=True, cache=True, devices=count, transpose=6, following=[*range(1, len(paths)), -1])
    on_device = keras.backend.backend() == "jax" and devices.holds(len(paths) * math.prod(SHAPE) // 8)
    files = SongFiles(paths, batch_size, SHAPE, on_device=on_device, **options)
    before = SongFiles(paths, batch_size, SHAPE, **options)
    speedometer = Speedometer(len(paths), batch_size, training_flops_per_sample(vae), 1.0)
    fit = timed_fit(vae, files, [StepsAhead(), EpochOrder(files), NonFiniteStop(), speedometer], seconds)
    fit_before = timed_fit(vae, before, [EpochOrder(before), keras.callbacks.TerminateOnNaN()], seconds)
    # The step alone, on one batch held in memory: what fit would do if feeding it cost nothing.
    batch = files[0]
    batch = batch[0] if isinstance(batch, tuple) else batch  # one input, (rows, moves, bank), from the device's cache
    step = fastest(lambda: vae.train_on_batch(batch), seconds / 3)
    host = {
        name: 1000 * fastest(lambda: [songs[index] for index in range(min(len(songs), 4))], 1) / min(len(songs), 4)
        for name, songs in (("host_ms", files), ("host_ms_before", before))
    }
    keras.distribution.set_distribution(None)
    used = batch_size - batch_size % count
    return {"fit": fit, "fit_before": fit_before, "step": used / step, **host}, devices.names, vae, on_device


def main():
    batch_sizes = [int(size) for size in ARGS.batch_sizes.split(",")]
    keras.mixed_precision.set_global_policy(PRECISIONS[ARGS.precision])
    dtype = keras.mixed_precision.global_policy().compute_dtype
    with undistributed():
        peak = max(peak_flops(dtype, seconds=2, rows=[16 * size for size in batch_sizes]), square_peak(dtype))
    results = {"backend": keras.backend.backend(), "environment": environment(), "precision": ARGS.precision}
    results.update(peak_gflop_per_s=peak / 1e9, rows=[])
    with tempfile.TemporaryDirectory() as folder:
        paths = write_samples(folder, max(512, 4 * max(batch_sizes)))
        for batch_size in batch_sizes:
            one = None
            for count in COUNTS:
                speeds, names, vae, on_device = samples_per_s(count, paths, batch_size, ARGS.seconds)
                flops = training_flops_per_sample(vae)
                one = one or speeds["fit"] / count
                row = {
                    "devices": count, "names": names, "batch_size": batch_size, "on_device": on_device, **speeds,
                    "efficiency": speeds["fit"] / (count * one), "fit_vs_step": speeds["fit"] / speeds["step"],
                    "mfu": speeds["fit"] * flops / (count * peak), "step_mfu": speeds["step"] * flops / (count * peak),
                }
                results["rows"].append(row)
                print(
                    f"  measured {count} devices ({', '.join(names)}), batch {batch_size}: fit {row['fit']:.1f} "
                    f"samples/s, as before {row['fit_before']:.1f}, the step alone {row['step']:.1f}", flush=True,
                )
    results["gflop_per_sample"] = flops / 1e9
    print(
        f"\nbackend {results['backend']}, {ARGS.precision}; {flops / 1e9:.2f} GFLOP a training sample; "
        f"peak of one device {peak / 1e12:.1f} TFLOP/s (measured)\n"
    )
    print(
        "| devices | batch | cache on device | fit | scaling efficiency | MFU | step alone | its MFU | fit / step | "
        "fit as before | host ms a batch | before |"
    )
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in results["rows"]:
        print(
            f"| {row['devices']} | {row['batch_size']} | {'yes' if row['on_device'] else 'no'} | {row['fit']:.1f} | "
            f"{row['efficiency']:.2f} | {row['mfu']:.2f} | {row['step']:.1f} | {row['step_mfu']:.2f} | "
            f"{row['fit_vs_step']:.2f} | {row['fit_before']:.1f} | {row['host_ms']:.2f} | {row['host_ms_before']:.2f} |"
        )
    for row in results["rows"]:
        if row["devices"] == 1:
            target = 0.9 if "gpu" in row["names"][0] else 0.95
            met = "met" if row["fit_vs_step"] >= target else "NOT MET"
            print(f"fit / step alone, batch {row['batch_size']}: {row['fit_vs_step']:.2f}   target >= {target}   {met}")
    if ARGS.json:
        ARGS.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
