"""How fast training could go: the FLOPs of one training sample and the machine's measured
peak matrix-product speed, whose ratio to the speed achieved is the MFU that training
reports (callbacks.Speedometer), as nanoGPT does."""

import math
import time

from music_vae.backend import layers, ops
from music_vae.model import ModelConfig
from music_vae.samples import MEASURE_SIZE


def dense_products(vae):
    """(rows per sample, inputs, outputs) of every Dense layer's matrix product, in order:
    the measure layers multiply one row per measure, the song layers one per song."""
    return [
        (math.prod(layer.input.shape[1:-1]), *layer.kernel.shape)
        for layer in vae.encoder.layers + vae.decoder.layers
        if isinstance(layer, layers.Dense)
    ]


def training_flops_per_sample(vae):
    """Floating-point operations of one training sample: the 2 * rows * inputs * outputs
    of every Dense layer's product, 3 times (forward, and backward for the weights and the
    inputs), but twice for the first layer, whose inputs (the songs) need no gradient.
    3.09 GFLOP for the default model (the usual 3 times for every layer would say 3.68)."""
    return sum(
        (2 if index == 0 else 3) * 2 * rows * inputs * outputs
        for index, (rows, inputs, outputs) in enumerate(dense_products(vae))
    )


def fastest(function, seconds):
    """Seconds of the fastest call of ``function``, after one warm-up call, over about
    ``seconds`` (3 calls at least): the best the machine does, whatever else runs on it."""
    function()
    times, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 3:
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return min(times)


def peak_flops(dtype, seconds=0.5, rows=()):
    """The machine's matrix-product speed in FLOP/s, measured: the fastest of repeated
    products of the model's largest layer (9216 by 2000) in ``dtype``, in the three
    orientations a training step uses (forward, weight gradient, input gradient), for
    about ``seconds`` in all, at each of ``rows`` (a training step's: 16 a song of the
    batch) and at rows grown until one product takes long enough to time. The fastest
    counts, so that no step of the model can beat its "peak": a peak timed at other sizes
    than training's read an MFU of 1.11 on one machine."""
    size, hidden = MEASURE_SIZE, ModelConfig.measure_hidden
    orientations = (
        lambda rows: ((rows, size), (size, hidden)),  # forward
        lambda rows: ((size, rows), (rows, hidden)),  # weight gradient
        lambda rows: ((rows, hidden), (hidden, size)),  # input gradient
    )

    def flops_per_s(shapes, count, seconds):
        left, right = shapes(count)
        a, b = ops.ones(left, dtype), ops.ones(right, dtype)
        # One product, waited for by reading one of its values.
        product = lambda: ops.convert_to_numpy(ops.cast(ops.matmul(a, b)[0, 0], "float32"))  # noqa: E731
        seconds_per_product = fastest(product, seconds)
        return 2 * count * size * hidden / seconds_per_product, seconds_per_product

    sizes = sorted(set(rows))
    share = seconds / 3 / (len(sizes) + 1)
    best = 0.0
    for shapes in orientations:
        for count in sizes:
            best = max(best, flops_per_s(shapes, count, share)[0])
        count = 256  # grown below where that is too quick to time; small enough for a slow laptop
        while True:
            speed, seconds_per_product = flops_per_s(shapes, count, share)
            if seconds_per_product > 0.005 or count >= 65536:  # long enough to hide the call's overhead
                best = max(best, speed)
                break
            count *= 4
    return best
