"""How fast music_generator.py trains, against what this machine allows, in one run.

    python bench/train_speed.py [--batch-sizes 1,64,256] [--precisions float32,bfloat16]
                                [--seconds 15] [--json FILE]

Measures, on any machine and any Keras backend (KERAS_BACKEND):

- the ceilings: the model's own matrix products of one training step (forward, and
  backward for weights and, but for the first layer, inputs), timed alone at each batch
  size and precision: what the step would take if nothing else cost time;
- the machine's copy bandwidth, and the bytes one batch-1 float32 step must move: the
  weights read forward and backward, the gradient written, and Adam reading gradient,
  weights and both moments and writing weights and moments, 40 bytes a parameter. Batch 1
  is bound by memory, not arithmetic: bandwidth / bytes is its limit;
- training samples/s through the real fit path (music_generator's model, FusedAdam,
  default XLA choice, SongFiles), reading .npy files from disk and from --cache, at each
  batch size and precision;
- the ratios, printed with their targets and written with --json.

The samples are random onsets at the density of real music (240 notes a sample), written
to a temporary folder. Each figure is timed for --seconds after two warm-up steps.
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from music_vae.dataset import SongFiles  # noqa: E402
from music_vae.backend import keras, ops  # noqa: E402
from music_vae.model import PRECISIONS, FusedAdam, ModelConfig, build_vae, default_jit  # noqa: E402
from music_vae.peak_speed import dense_products, fastest, peak_flops, training_flops_per_sample  # noqa: E402
from music_vae.run_folder import environment  # noqa: E402
from music_vae.samples import MEASURE_SIZE, MEASURES_PER_SAMPLE  # noqa: E402

SHAPE = (MEASURES_PER_SAMPLE, MEASURE_SIZE)
NOTES_PER_SAMPLE = 240
TARGETS = {"fp32_b64_vs_ceiling": 0.70, "bf16_b64_vs_ceiling": 0.50, "b1_vs_membound": 0.60, "disk_vs_cache": 0.95}
ADAM_BYTES_PER_PARAMETER = 40  # see the module docstring


def write_samples(folder, count, seed=0):
    """``count`` random (16, 9216) uint8 samples with about NOTES_PER_SAMPLE onsets."""
    rng = np.random.default_rng(seed)
    density = NOTES_PER_SAMPLE / math.prod(SHAPE)
    paths = []
    for number in range(count):
        path = Path(folder, f"sample{number:05d}.npy")
        np.save(path, (rng.random(SHAPE) < density).astype(np.uint8))
        paths.append(path)
    return paths


def ceiling(vae, batch_size, dtype, seconds):
    """Samples/s if a training step were only its matrix products."""
    tensors = []
    for number, (rows, inputs, outputs) in enumerate(dense_products(vae)):
        first = number == 0
        m = rows * batch_size
        # Transposed once here: in a compiled step the products read them in place.
        x, x_t = ops.ones((m, inputs), dtype), ops.ones((inputs, m), dtype)
        w, w_t, dy = (
            ops.ones((inputs, outputs), dtype), ops.ones((outputs, inputs), dtype), ops.ones((m, outputs), dtype),
        )
        tensors.append((x, x_t, w, w_t, dy, first))

    def step():
        results = []
        for x, x_t, w, w_t, dy, first in tensors:
            results.append(ops.matmul(x, w))  # forward
            results.append(ops.matmul(x_t, dy))  # weight gradient
            if not first:  # the input needs no gradient
                results.append(ops.matmul(dy, w_t))
        ops.convert_to_numpy(ops.cast(results[-1][0, 0], "float32"))  # wait for the last one

    return batch_size / fastest(step, seconds)


def copy_bandwidth(seconds):
    """Bytes read and written per second by a copy of 1 GiB, in memory already touched."""
    source = np.ones(2**28, np.float32)
    target = np.zeros_like(source)
    return 2 * source.nbytes / fastest(lambda: np.copyto(target, source), seconds)


class StepTimer(keras.callbacks.Callback):
    """Times training steps after ``warmup`` of them; stops fit after ``seconds``."""

    def __init__(self, warmup, seconds):
        super().__init__()
        self.warmup, self.seconds = warmup, seconds
        self.steps, self.started, self.last = 0, None, None

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        self.last = time.perf_counter()
        if self.steps == self.warmup:
            self.started = self.last
        elif self.started and self.last - self.started >= self.seconds and self.steps - self.warmup >= 3:
            self.model.stop_training = True

    def seconds_per_step(self):
        return (self.last - self.started) / (self.steps - self.warmup)


def fit_speed(vae, paths, batch_size, cache, seconds):
    """Training samples/s through Keras fit, with the data path music_generator uses."""
    files = SongFiles(paths, batch_size, SHAPE, shuffle=True, cache=cache)
    timer = StepTimer(warmup=2, seconds=seconds)
    vae.fit(files, epochs=1, callbacks=[timer], verbose=0)
    return batch_size / timer.seconds_per_step()


def step_parts(vae, paths, batch_size, seconds):
    """Milliseconds of one training step at ``batch_size`` and of its parts, each timed
    alone as the fastest of repeats: the whole step (``train_on_batch``), the forward pass
    and the loss (``test_on_batch``), and Adam's update of every weight from a gradient
    (the optimizer's ``apply``); the rest of the step is the backward pass."""
    batch = SongFiles(paths, batch_size, SHAPE, cache=True)[0]
    gradients = [ops.zeros_like(variable) for variable in vae.trainable_variables]
    return {
        "step_ms": 1000 * fastest(lambda: vae.train_on_batch(batch), seconds),
        "forward_ms": 1000 * fastest(lambda: vae.test_on_batch(batch), seconds),
        "adam_ms": 1000 * fastest(
            lambda: ops.convert_to_numpy(vae.optimizer.apply(gradients, vae.trainable_variables) or 0), seconds
        ),
    }


def build(precision):
    keras.mixed_precision.set_global_policy(PRECISIONS[precision])
    vae = build_vae(ModelConfig(), note_density=NOTES_PER_SAMPLE / math.prod(SHAPE))  # the paper's
    jit = default_jit()
    vae.compile(optimizer=FusedAdam(learning_rate=1e-4, fuse=not jit), jit_compile=jit)
    return vae, jit


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="1,64,256", help="comma-separated (default: %(default)s)")
    parser.add_argument(
        "--precisions", default="float32,bfloat16",
        help="comma-separated, of float32, bfloat16, float16 (default: %(default)s)",
    )
    parser.add_argument(
        "--seconds", type=float, default=15, help="time each figure for this long (default: %(default)s)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    precisions = args.precisions.split(",")

    results = {
        "backend": keras.backend.backend(), "devices": environment()["devices"], "cores": os.cpu_count(), "rows": [],
    }
    bandwidth = copy_bandwidth(args.seconds / 5)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_samples(folder, max(512, 4 * max(batch_sizes)))
        for precision in precisions:
            vae, jit = build(precision)
            dtype = keras.mixed_precision.global_policy().compute_dtype
            peak = peak_flops(dtype, seconds=3, rows=[MEASURES_PER_SAMPLE * size for size in batch_sizes])
            flops = training_flops_per_sample(vae)
            for batch_size in batch_sizes:
                row = {"precision": precision, "batch_size": batch_size, "jit": jit, "peak_gflop_per_s": peak / 1e9}
                row["ceiling"] = ceiling(vae, batch_size, dtype, args.seconds / 3)
                row["cache"] = fit_speed(vae, paths, batch_size, cache=True, seconds=args.seconds)
                row["disk"] = fit_speed(vae, paths, batch_size, cache=False, seconds=args.seconds)
                row["mfu_cache"] = row["cache"] * flops / peak
                row.update(step_parts(vae, paths, batch_size, args.seconds / 5))
                row["products_ms"] = 1000 * batch_size / row["ceiling"]
                results["rows"].append(row)
                print(
                    f"  measured {precision} batch {batch_size}: {row['cache']:.1f} samples/s from cache, "
                    f"{row['disk']:.1f} from disk, ceiling {row['ceiling']:.1f}",
                    flush=True,
                )
            parameters = vae.count_params()

    step_bytes = ADAM_BYTES_PER_PARAMETER * parameters
    results.update(
        copy_gb_per_s=bandwidth / 1e9, batch1_step_gb=step_bytes / 1e9, b1_membound=bandwidth / step_bytes,
        gflop_per_sample=flops / 1e9, parameters=parameters,
    )
    rows = {(row["precision"], row["batch_size"]): row for row in results["rows"]}
    ratios = {}
    if ("float32", 64) in rows:
        ratios["fp32_b64_vs_ceiling"] = rows["float32", 64]["cache"] / rows["float32", 64]["ceiling"]
        ratios["disk_vs_cache"] = rows["float32", 64]["disk"] / rows["float32", 64]["cache"]
    if ("bfloat16", 64) in rows:
        ratios["bf16_b64_vs_ceiling"] = rows["bfloat16", 64]["cache"] / rows["bfloat16", 64]["ceiling"]
    if ("float32", 1) in rows:
        ratios["b1_vs_membound"] = rows["float32", 1]["cache"] / results["b1_membound"]
    results["ratios"] = ratios

    print(
        f"\nbackend {results['backend']}, devices {results['devices']}, {results['cores']} cores; "
        f"{parameters:,} parameters, {flops / 1e9:.2f} GFLOP a training sample"
    )
    print(
        f"copy bandwidth {bandwidth / 1e9:.1f} GB/s; a batch-1 float32 step moves {step_bytes / 1e9:.2f} GB: "
        f"memory-bound limit {results['b1_membound']:.1f} samples/s\n"
    )
    print(
        "| precision | batch | XLA | ceiling samples/s | fit from cache | fit from disk | cache / ceiling | MFU | "
        "peak GFLOP/s |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in results["rows"]:
        print(
            f"| {row['precision']} | {row['batch_size']} | {'yes' if row['jit'] else 'no'} | {row['ceiling']:.1f} | "
            f"{row['cache']:.1f} | {row['disk']:.1f} | {row['cache'] / row['ceiling']:.2f} | {row['mfu_cache']:.2f} | "
            f"{row['peak_gflop_per_s']:,.0f} |"
        )
    print(
        "\nWhere a step's time goes, each part timed alone (ms): the products are the ceiling's; Adam updates "
        f"{parameters:,} weights; the rest of the forward pass and the loss, and of the backward pass, is "
        "element-wise work over every cell of the batch (unpacking, activations, the loss and its gradient, casts)\n"
    )
    print("| precision | batch | step | products | Adam | forward and loss | backward | not products |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in results["rows"]:
        backward = row["step_ms"] - row["forward_ms"] - row["adam_ms"]
        print(
            f"| {row['precision']} | {row['batch_size']} | {row['step_ms']:.1f} | {row['products_ms']:.1f} | "
            f"{row['adam_ms']:.1f} | {row['forward_ms']:.1f} | {backward:.1f} | "
            f"{(row['step_ms'] - row['products_ms']) / row['step_ms']:.0%} |"
        )
    print()
    for key, value in ratios.items():
        print(f"{key:22} {value:5.2f}   target >= {TARGETS[key]:.2f}   {'met' if value >= TARGETS[key] else 'NOT MET'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
