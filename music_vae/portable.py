"""A run made portable (the paper's outlook, its section 5.4: a composer's tool, music made
on demand in a game): its decoder as ONNX, what turns slider positions into a song as JSON,
and the explore page as static files that decode in the browser with onnxruntime-web, so
that the run plays where neither Python nor this repository is.

The decoder goes through Keras' own ONNX export (``model.export(format="onnx")``, tf2onnx
underneath), in float32 whatever precision the run trained in: onnxruntime-web has no
bfloat16. The smaller weight settings then store each weight matrix as float16, or as int8
with one scale per output column, turned back to float32 by the graph's first nodes (which
onnxruntime folds into float32 matrices as it loads the model).
"""

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path

import jinja2
import numpy as np

from music_vae import web_runtime
from music_vae.backend import keras
from music_vae.explore_server import SLIDER_RANGE, TEMPLATE
from music_vae.files import UMASK, UsageError, flush_to_disk, quiet_stderr
from music_vae.samples import NOTE_STEPS, PITCHES, STEPS_PER_MEASURE
from music_vae.songs import fixed_noise

WEIGHTS = ("float32", "float16", "int8")
KERAS_WITH_ONNX = (3, 8)  # the first Keras whose model.export writes ONNX
AGREEMENT_SONGS = 100  # songs of the run's density on which the exported decoder is compared with Keras'
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "decode_with_onnxruntime.py"
# The files of an export: a folder holding these alone (song_space.json among them) may be replaced.
EXPORT_FILES = {"decoder.onnx", "song_space.json", "index.html", "README.txt", EXAMPLE.name, *web_runtime.FILES,
                web_runtime.LICENCE}
README = """\
{name}: a music_vae run, exported

A variational autoencoder's decoder that turns {latent} numbers into a {measures}-measure song
(a piano roll of {pitches} pitches x {steps} steps a measure), with a page to explore it.

  index.html                    the explore page: sliders, piano roll, playback, MIDI download
  decoder.onnx                  the decoder: input "z" (batch, {latent}) float32, output "song"
                                (batch, {measures}, {cells}) note probabilities ({weights} weights)
  song_space.json               slider axes, the run's latent density, its note rule, the pitch window
  decode_with_onnxruntime.py    a song from the decoder with onnxruntime and numpy alone
  ort.wasm.min.js, ort-wasm-*   onnxruntime-web {runtime_version} (MIT licence: package.json)

Serve the folder with any static web server and open it, for example:

  python -m http.server --directory . 8000      then open http://127.0.0.1:8000/

Opened as a file (file://), the browser refuses to load decoder.onnx and the runtime: a page
from file:// may not fetch other files. The page loads nothing from the network.

Made by: python music_generator.py export --run {run} --weights {weights}
Run: {run}
"""


def need_export_libraries():
    """Import onnx, onnxruntime and tf2onnx, or raise a UsageError naming their requirements
    file; likewise where Keras is too old to export ONNX."""
    if keras_version() < KERAS_WITH_ONNX:
        raise UsageError(f"export needs Keras 3.8 or newer (this is {keras.__version__}): pip install -U keras")
    missing = []
    for name in ("onnx", "onnxruntime", "tf2onnx"):
        try:
            with quiet_stderr():
                __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UsageError(f"export needs {', '.join(missing)}: pip install -r requirements-export.txt")


def keras_version():
    """Keras' version as (major, minor)."""
    return tuple(int(part) for part in keras.__version__.split(".")[:2])


def float32_decoder(decoder):
    """``decoder`` computing in float32: itself, or, for a run trained in mixed precision,
    a copy of it with every layer in float32 (its weights are float32 either way)."""
    if all(layer.dtype_policy.name == "float32" for layer in decoder.layers):
        return decoder
    copy = keras.models.clone_model(
        decoder, clone_function=lambda layer: layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})
    )
    copy.set_weights(decoder.get_weights())
    return copy


def decoder_onnx(decoder):
    """``decoder`` (a Keras model, latent vectors -> songs) as an onnx.ModelProto computing
    in float32, with input "z" (batch, latent) and output "song" (batch, measures, 9216)."""
    import onnx

    decoder = float32_decoder(decoder)
    decoder(np.zeros((1, decoder.input_shape[-1]), np.float32))  # Keras exports only a model that has run
    with tempfile.TemporaryDirectory() as folder, quiet_stderr(), contextlib.redirect_stdout(None):
        path = os.path.join(folder, "decoder.onnx")
        decoder.export(path, format="onnx", verbose=False)
        model = onnx.load(path)
    graph = model.graph
    old_input, old_output = graph.input[0].name, graph.output[0].name
    for node in graph.node:
        node.input[:] = ["z" if name == old_input else name for name in node.input]
        node.output[:] = ["song" if name == old_output else name for name in node.output]
    graph.input[0].name, graph.output[0].name = "z", "song"
    exact_sigmoid(graph)
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.checker.check_model(model)
    return model


def exact_sigmoid(graph):
    """Replace ``graph``'s Sigmoid nodes by 1 / (1 + exp(-x)). onnxruntime's Sigmoid is
    accurate to 1.5e-7 only as an absolute figure: on values of 1e-7 it errs by up to 5 times
    the value, and a blurred decoder's notes are picked among values of 1e-4 and less, where
    its errors change which cells are notes; 1 / (1 + exp(-x)) errs by 1.4e-7 of the value
    (onnxruntime 1.32, over x in [-30, 30])."""
    import onnx

    for position, node in reversed(list(enumerate(graph.node))):
        if node.op_type != "Sigmoid":
            continue
        x, y, name = node.input[0], node.output[0], node.name or node.output[0]
        graph.node.remove(node)
        nodes = [
            onnx.helper.make_node("Neg", [x], [f"{name}/minus"]),
            onnx.helper.make_node("Exp", [f"{name}/minus"], [f"{name}/exp"]),
            onnx.helper.make_node("Add", [f"{name}/exp", "one"], [f"{name}/denominator"]),
            onnx.helper.make_node("Reciprocal", [f"{name}/denominator"], [y]),
        ]
        for offset, replacement in enumerate(nodes):
            graph.node.insert(position + offset, replacement)
    if "one" not in {initializer.name for initializer in graph.initializer}:
        graph.initializer.append(onnx.numpy_helper.from_array(np.float32(1.0), "one"))


def with_weights(model, weights):
    """``model`` (onnx.ModelProto) with its weight matrices stored as ``weights``:
    "float32" as they are; "float16", cast back to float32 by a Cast node; "int8", with the
    symmetric scale of each output column, by a Cast and a Mul node. Biases stay float32."""
    import onnx
    from onnx import numpy_helper

    if weights == "float32":
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph, stored, nodes = model.graph, [], []
    for initializer in list(graph.initializer):
        matrix = numpy_helper.to_array(initializer)
        if matrix.dtype != np.float32 or matrix.ndim != 2:
            continue
        name = initializer.name
        if weights == "float16":
            stored.append(numpy_helper.from_array(matrix.astype(np.float16), f"{name}_float16"))
            nodes.append(onnx.helper.make_node("Cast", [f"{name}_float16"], [name], to=onnx.TensorProto.FLOAT))
        else:
            scale = (np.maximum(np.abs(matrix).max(axis=0), 1e-30) / 127).astype(np.float32)
            values = np.clip(np.round(matrix / scale), -127, 127).astype(np.int8)
            stored += [
                numpy_helper.from_array(values, f"{name}_int8"), numpy_helper.from_array(scale, f"{name}_scale"),
            ]
            # Cast and Mul, not DequantizeLinear: onnxruntime folds them into one float32 matrix when it
            # loads the model, but keeps DequantizeLinear, which then runs at every decode (3x slower).
            nodes += [
                onnx.helper.make_node("Cast", [f"{name}_int8"], [f"{name}_unscaled"], to=onnx.TensorProto.FLOAT),
                onnx.helper.make_node("Mul", [f"{name}_unscaled", f"{name}_scale"], [name]),
            ]
        graph.initializer.remove(initializer)
    graph.initializer.extend(stored)
    for position, node in enumerate(nodes):  # first: the nodes that read the matrices come after them
        graph.node.insert(position, node)
    onnx.checker.check_model(model)
    return model


def onnx_decode(model_bytes, latents):
    """The songs of ``latents`` (count, latent) by an ONNX decoder in onnxruntime:
    (count, measures, 9216) float32."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(["song"], {"z": np.asarray(latents, np.float32)})[0]


def notes_changed(model_bytes, decoder, density, rule, seed, count=AGREEMENT_SONGS):
    """How far the ONNX decoder ``model_bytes`` agrees with the run's Keras ``decoder``, in
    the precision it computes in (a bfloat16 run's differs from its float32 export), on
    ``count`` songs drawn from ``density`` with ``seed``: {"notes_changed": the cells that are
    a note in one and not the other, as a share of the Keras songs' notes,
    "largest_difference": of a value}. Notes are picked by ``rule`` (a NoteRule)."""
    latents = density.latents(fixed_noise(count, len(density.mean), seed))
    reference = np.asarray(decoder.predict(latents, batch_size=20, verbose=0), np.float32)
    exported = onnx_decode(model_bytes, latents)
    changed = notes = 0
    for ours, theirs in zip(reference, exported):
        ours_kept, ours_passing = rule.apply(ours)
        theirs_kept, theirs_passing = rule.apply(theirs)
        ours_notes, theirs_notes = ours_kept >= ours_passing, theirs_kept >= theirs_passing
        changed += int(np.count_nonzero(ours_notes != theirs_notes))
        notes += int(np.count_nonzero(ours_notes))
    return {"notes_changed": changed / max(notes, 1), "largest_difference": float(np.abs(reference - exported).max())}


def song_space(name, parameters, settings, components, density, rule, bpm, decoder_info, directions=None):
    """What turns slider positions into a song, as a JSON-ready dict: the sliders' axes
    (``components``, a PrincipalComponents, then ``directions``, {name: moods.Direction}), the
    density "Random" draws from, the note rule, the song's size and pitch window, the tempo,
    the run's name and parameters, and ``decoder_info`` (its file, input, output, weights
    and agreement)."""
    directions = directions or {}
    return {
        "format": "music_vae song space 1",
        "run": name,
        "decoder": decoder_info,
        "latent": len(components.mean),
        "measures": settings.measures, "pitches": PITCHES, "steps_per_measure": STEPS_PER_MEASURE,
        "lowest_pitch": settings.lowest_pitch, "bpm": bpm,
        "sliders": {
            "mean": components.mean.tolist(), "axes": components.axes.tolist(),
            "deviations": components.deviations.tolist(), "range": SLIDER_RANGE,
        },
        "moods": {
            "names": list(directions), "units": [direction.unit.tolist() for direction in directions.values()],
            "deviations": [direction.deviation for direction in directions.values()],
        },
        "density": {"mean": density.mean.tolist(), "scale": density.scale.tolist()},
        "note_rule": {
            "threshold": rule.threshold, "notes": rule.notes, "method": rule.method,
            "max_pitches_per_step": rule.max_pitches_per_step, "count_scale": rule.count_scale,
        },
        "midi": {"ticks_per_quarter": 480, "note_steps": NOTE_STEPS, "velocity": 100, "program": 0},
        "parameters": parameters,
    }


def static_page(space):
    """The explore page of ``space`` (a song_space dict) that decodes in the browser."""
    template = jinja2.Template(TEMPLATE.read_text(encoding="utf-8"), autoescape=True)
    settings = {
        "run": space["run"], "sliders": len(space["sliders"]["deviations"]), "moods": space["moods"]["names"],
        "range": space["sliders"]["range"],
        "measures": space["measures"], "steps_per_measure": space["steps_per_measure"],
        "lowest_pitch": space["lowest_pitch"], "pitches": space["pitches"], "bpm": space["bpm"], "static": True,
    }
    return template.render(settings=settings, runtime=web_runtime.FILES[0])


def readme(space, run_path):
    """README.txt of an export of ``space`` from the run folder ``run_path``."""
    return README.format(
        name=space["run"], latent=space["latent"], measures=space["measures"], pitches=space["pitches"],
        steps=space["steps_per_measure"], cells=space["pitches"] * space["steps_per_measure"],
        weights=space["decoder"]["weights"], runtime_version=web_runtime.VERSION, run=run_path,
    )


def check_folder(folder):
    """Raise a UsageError where an export cannot be written as ``folder``: it exists and is
    not an export alone (whatever else it holds, a run included, would go with it), or its
    parent cannot be made."""
    folder = Path(folder)
    if folder.is_symlink() or (folder.exists() and not is_export(folder)):
        raise UsageError(f"{folder} exists and is not an export: choose another --output-dir, or remove it")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot write to {folder.parent}: {error.strerror or error}") from None


def is_export(folder):
    """Whether ``folder`` is an empty folder, or one that holds an export's files and nothing else."""
    if not folder.is_dir():
        return False
    names = {path.name for path in folder.iterdir()}
    return not names or ("song_space.json" in names and names <= EXPORT_FILES)


def write_folder(folder, files):
    """Write ``files`` ({name: bytes, or the Path of a file to copy}) as the folder
    ``folder``, in one step: they go into a hidden part folder beside it, which replaces
    ``folder`` once complete, so that a stop leaves the old export or the new one, never a
    half-written folder under its name. What such a stop left is cleared first.

    Raises
    ------
    UsageError
        As check_folder, or the part folder cannot be made.
    """
    folder = Path(folder)
    old = folder.parent / f".{folder.name}.part-old"
    if old.is_dir() and not folder.exists():  # a stop between the two renames below: the old export comes back
        old.rename(folder)
    check_folder(folder)
    for stale in folder.parent.glob(f".{glob.escape(folder.name)}.part-*"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        part = Path(tempfile.mkdtemp(prefix=f".{folder.name}.part-", dir=folder.parent))
    except OSError as error:
        raise UsageError(f"cannot write to {folder.parent}: {error.strerror or error}") from None
    try:
        part.chmod(0o777 & ~UMASK)  # mkdtemp's folder is private; a web server may run as another user
        for name, content in files.items():
            if isinstance(content, Path):
                shutil.copyfile(content, part / name)
            else:
                (part / name).write_bytes(content)
            flush_to_disk(part / name)
        if folder.exists():
            folder.rename(old)
        try:
            part.rename(folder)
        except BaseException:
            if old.exists():
                old.rename(folder)
            raise
        flush_to_disk(folder.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(part, ignore_errors=True)


def as_json(value):
    return json.dumps(value, separators=(",", ":")).encode()
