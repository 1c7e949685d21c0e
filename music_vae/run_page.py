"""The run page, ``RUN_DIR/index.html``: a run's parameters, losses and evaluation, then
every song with its piano roll, an audio player and its MIDI file, from the Jinja2 template
templates/run_page.html. Its links are relative, so that it works opened from disk and from
a copy of the folder."""

import contextlib
import json
import re
from pathlib import Path
from urllib.parse import quote

import jinja2

from music_vae.config import flag, page_option_names
from music_vae.evaluation import feature_rows, summary_rows
from music_vae.files import atomic_write, figure_pixels, png_writer, text_writer
from music_vae.run_folder import devices_text, generate_text, loss_columns, now, split_text

TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")), autoescape=True, keep_trailing_newline=True,
)
TEMPLATES.filters["link"] = quote


def write_run_page(run, state):
    """Write (again) ``RUN_DIR/index.html`` and its loss curve ``losses.png``."""
    if state["history"]:
        atomic_write(run.path / "losses.png", png_writer(loss_curve_image(state["history"])))
    evaluation = None
    with contextlib.suppress(OSError, ValueError):
        evaluation = json.loads((run.path / "evaluation.json").read_text())
    atomic_write(run.page, text_writer(run_page(run, state, evaluation)))


def run_page(run, state, evaluation=None):
    """The HTML of ``RUN_DIR/index.html``: the run's info, losses and evaluation, then
    every song with its piano roll, an audio player and a link to its MIDI file."""
    parameters = state["parameters"]
    rows = [
        ("run folder", run.path.name),
        ("status", f"{state['status']}, {state['epochs_done']} of {parameters['epochs']} epochs done"),
    ]
    shown = [key for key in page_option_names() if parameters.get(key) is not None]  # no "--threshold None"
    rows += [(flag(key), parameters[key]) for key in shown]
    if "model" in state:
        rows.append(("parameters of the model", f"{state['model']['parameters']:,}"))
    if "data" in state:
        data = state["data"]
        rows.append(("samples", f"{data['samples']}: {split_text(data)}"))
    if "devices" in state:
        rows.append(("trained on", devices_text(state["devices"])))
    evaluation_rows = None
    if evaluation:
        with contextlib.suppress(KeyError, TypeError, AttributeError):  # an evaluation.json of another version
            evaluation_rows = {"features": feature_rows(evaluation), "summary": summary_rows(evaluation)}
    groups = song_groups(run.generated, generate_text(state["generate"]) if "generate" in state else None)
    return TEMPLATES.get_template("run_page.html").render(
        state=state, parameters=rows, info=run.info.name, loss_columns=loss_columns(state["history"]),
        evaluation=evaluation, evaluation_rows=evaluation_rows, song_groups=groups,
        with_audio={path.stem for path in (run.generated / "wav").glob("*.wav")}, written=now(),
    )


def loss_curve_image(history):
    """The losses per epoch as an (height, width, 4) uint8 RGBA picture: loss,
    reconstruction, KL and, where recorded, the reconstructions' F1 side by side, training
    solid and validation dashed."""
    from matplotlib.figure import Figure

    rebuilt = any("f1" in row or "val_f1" in row for row in history)
    names = ["loss", "reconstruction", "kl"] + (["f1"] if rebuilt else [])
    figure = Figure(figsize=(5 * len(names), 3.6), dpi=100)
    epochs = [row["epoch"] for row in history]
    for number, name in enumerate(names, start=1):
        axes = figure.add_subplot(1, len(names), number)
        for key, line, label in ((name, "-", "training"), (f"val_{name}", "--", "validation")):
            points = [(epoch, row[key]) for epoch, row in zip(epochs, history) if key in row]
            if points:
                axes.plot(*zip(*points), line, marker="o", markersize=3, label=label)
        axes.set_title("reconstruction F1 (notes rebuilt)" if name == "f1" else name)
        axes.set_xlabel("epoch")
        axes.legend()
    return figure_pixels(figure)


def song_groups(generated, generated_with=None):
    """The songs in a run's ``generated/`` folder as [(heading, [names])]: the final
    songs, those of ``generate`` (how, where ``generated_with`` says), ``reconstruct``,
    ``interpolate`` and ``variations``, then each epoch's, newest first."""
    names = sorted(path.stem for path in (Path(generated) / "img").glob("*.png"))
    groups = {}
    for name in names:
        rebuilt = re.fullmatch(r"(.+)_(original|reconstruction)", name)
        groups.setdefault("reconstruction" if rebuilt else name.split("_song")[0], []).append(name)
    headings = {
        "final": "Final songs", "sample": "Songs from generate" + (f": {generated_with}" if generated_with else ""),
        "reconstruction": "Songs of MIDI files, each as given and as the model rebuilds it",
        "interpolation": "Interpolation, from the first song's reconstruction to the second's",
        "variation": "Variations of a song",
    }
    epochs = sorted(
        (prefix for prefix in groups if re.fullmatch(r"epoch\d+", prefix)), key=lambda prefix: -int(prefix[5:])
    )
    others = sorted(prefix for prefix in groups if prefix not in headings and prefix not in epochs)
    ordered = [(headings[prefix], groups[prefix]) for prefix in headings if prefix in groups]
    return (
        ordered
        + [(f"Epoch {int(prefix[5:])}", groups[prefix]) for prefix in epochs]
        + [(prefix, groups[prefix]) for prefix in others]
    )
