"""How fast training runs on 1, 2, ... devices with --distribute data-parallel, in one run.

    python bench/distributed_speed.py [--devices 1,2] [--batch-sizes 64] [--precision float32]
                                      [--seconds 15] [--json FILE]

For each number of devices and batch size: training samples/s through the real fit path
(music_generator's model, distribute.py, SongFiles from --cache), the scaling efficiency
(samples/s over the devices times one device's), and the MFU: the FLOPs used against the
peak of one device, measured (a product of the model's largest layer, and a square 8192
product, whichever is faster), times the devices.

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

from train_speed import SHAPE, NOTES_PER_SAMPLE, StepTimer, write_samples  # noqa: E402

from music_vae.dataset import SongFiles  # noqa: E402
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


def samples_per_s(count, paths, batch_size, seconds):
    """Training samples/s on ``count`` devices (1: none distributed) through fit, through fit
    with no per-batch callback, and of the step alone; the devices' names, and the model."""
    devices = choose_devices("data-parallel" if count > 1 else "none", count)
    with devices.scope():
        vae = build_vae(ModelConfig(), note_density=NOTES_PER_SAMPLE / math.prod(SHAPE))  # the paper's sizes
        jit = default_jit()
        vae.compile(optimizer=FusedAdam(learning_rate=1e-4, fuse=not jit), jit_compile=jit)
    devices.prepare(vae)
    files = SongFiles(paths, batch_size, SHAPE, shuffle=True, cache=True, devices=count)
    timer = StepTimer(warmup=2, seconds=seconds)
    vae.fit(files, epochs=1000, callbacks=[timer], verbose=0)  # the timer stops it
    used = batch_size - batch_size % count
    # fit again without a callback that reads every batch's logs, which makes fit wait for
    # each step before it starts the next: whole epochs, timed from outside.
    epochs = max(1, math.ceil(seconds / 2 / (timer.seconds_per_step() * len(files))))
    started = time.perf_counter()
    vae.fit(files, epochs=epochs, verbose=0)
    unwaited = used * len(files) * epochs / (time.perf_counter() - started)
    # The step alone, on one batch held in memory: what fit would do if reading the batches
    # cost nothing.
    batch = files[0]
    step = fastest(lambda: vae.train_on_batch(batch), seconds / 3)
    keras.distribution.set_distribution(None)
    return used / timer.seconds_per_step(), unwaited, used / step, devices.names, vae


def main():
    batch_sizes = [int(size) for size in ARGS.batch_sizes.split(",")]
    keras.mixed_precision.set_global_policy(PRECISIONS[ARGS.precision])
    dtype = keras.mixed_precision.global_policy().compute_dtype
    with undistributed():
        peak = max(peak_flops(dtype, seconds=2), square_peak(dtype))
    results = {"backend": keras.backend.backend(), "environment": environment(), "precision": ARGS.precision}
    results.update(peak_gflop_per_s=peak / 1e9, rows=[])
    with tempfile.TemporaryDirectory() as folder:
        paths = write_samples(folder, max(512, 4 * max(batch_sizes)))
        for batch_size in batch_sizes:
            one = None
            for count in COUNTS:
                speed, unwaited, step, names, vae = samples_per_s(count, paths, batch_size, ARGS.seconds)
                flops = training_flops_per_sample(vae)
                one = one or speed / count
                row = {
                    "devices": count, "names": names, "batch_size": batch_size, "samples_per_s": speed,
                    "efficiency": speed / (count * one), "mfu": speed * flops / (count * peak),
                    "unwaited_samples_per_s": unwaited, "step_samples_per_s": step,
                    "step_mfu": step * flops / (count * peak),
                }
                results["rows"].append(row)
                print(
                    f"  measured {count} devices ({', '.join(names)}), batch {batch_size}: {speed:.1f} samples/s, "
                    f"{unwaited:.1f} with no per-batch callback, the step alone {step:.1f}", flush=True,
                )
    results["gflop_per_sample"] = flops / 1e9
    print(
        f"\nbackend {results['backend']}, {ARGS.precision}; {flops / 1e9:.2f} GFLOP a training sample; "
        f"peak of one device {peak / 1e12:.1f} TFLOP/s (measured)\n"
    )
    print(
        "| devices | batch | samples/s | samples/s a device | scaling efficiency | MFU | no per-batch callback | "
        "step alone | its MFU |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in results["rows"]:
        print(
            f"| {row['devices']} | {row['batch_size']} | {row['samples_per_s']:.1f} | "
            f"{row['samples_per_s'] / row['devices']:.1f} | {row['efficiency']:.2f} | {row['mfu']:.2f} | "
            f"{row['unwaited_samples_per_s']:.1f} | {row['step_samples_per_s']:.1f} | {row['step_mfu']:.2f} |"
        )
    if ARGS.json:
        ARGS.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
