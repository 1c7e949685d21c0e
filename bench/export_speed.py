"""What an exported run costs and how fast it plays: for each weight setting, the export's
time, the folder's and the decoder's size and the notes it changes against the run's own
decoder; the time to decode a song in onnxruntime (Python) and in the page (Chromium); and
the page's answer to a slider move (median and slowest), against the Python explore page's,
measured in the same run.

    python bench/export_speed.py --run RUN_DIR [--moves 30]

Needs pip install -r requirements-export.txt, and Chromium with playwright for the page's
figures (skipped, saying so, without them). Writes its exports under /tmp.
"""

import argparse
import contextlib
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from music_vae import commands, portable  # noqa: E402
from music_vae.explore_server import SLIDER_RANGE  # noqa: E402
from music_vae.trained_run import TrainedRun  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained run")
    parser.add_argument("--moves", type=int, default=30, help="slider moves and decodes timed")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="export_speed_"))
    trained = TrainedRun(args.run)
    explorer = commands.run_explorer(trained)
    moves = np.random.default_rng(0).uniform(-SLIDER_RANGE, SLIDER_RANGE, (args.moves, len(explorer.components.mean)))
    moves = moves[:, : len(explorer.components.deviations)].astype(np.float32)

    python_page = timed(lambda positions: explorer.notes(explorer.song(positions)), moves)
    keras_decode = timed(lambda positions: explorer.decoder(explorer.components.latents(positions[None])), moves)
    print(f"run {args.run.name}; {args.moves} slider moves; times in ms, median / slowest")
    print(f"Python explore page, a slider move's answer (Keras): {python_page[0]:.1f} / {python_page[1]:.1f}")
    print(f"Keras decode, one song:                              {keras_decode[0]:.1f} / {keras_decode[1]:.1f}\n")
    header = f"{'weights':>8} {'export s':>9} {'folder MB':>10} {'onnx MB':>8} {'notes changed':>14} " \
             f"{'ort ms':>7} {'page song ms':>13} {'page answer ms':>15} {'x Python':>9}"
    print(header)
    for weights in portable.WEIGHTS:
        target = folder / weights
        began = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            commands.export(args.run, target, weights)
        seconds = time.perf_counter() - began
        space = json.loads((target / "song_space.json").read_text())
        size = sum(path.stat().st_size for path in target.iterdir()) / 1e6
        model = (target / "decoder.onnx").stat().st_size / 1e6
        ort = onnxruntime_decode(target / "decoder.onnx", explorer, moves)
        page = page_times(target, args.moves)
        decode_ms, answer = ("-", ("-", "-")) if page is None else page
        ratio = "-" if page is None else f"{answer[0] / python_page[0]:.2f}"
        page_decode = decode_ms if isinstance(decode_ms, str) else f"{decode_ms:.1f}"
        page_answer = "-" if page is None else f"{answer[0]:.1f} / {answer[1]:.1f}"
        print(f"{weights:>8} {seconds:9.1f} {size:10.1f} {model:8.1f} {space['decoder']['notes_changed']:14.2%} "
              f"{ort[0]:7.1f} {page_decode:>13} {page_answer:>15} {ratio:>9}")
    shutil.rmtree(folder)


def timed(call, moves):
    """Median and slowest milliseconds of ``call(positions)`` over ``moves``, after one untimed call."""
    call(moves[0])
    seconds = []
    for positions in moves:
        began = time.perf_counter()
        call(positions)
        seconds.append(time.perf_counter() - began)
    return 1000 * statistics.median(seconds), 1000 * max(seconds)


def onnxruntime_decode(path, explorer, moves):
    """Median and slowest milliseconds of one song's decode by onnxruntime in Python."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return timed(lambda positions: session.run(["song"], {"z": explorer.components.latents(positions[None])}), moves)


def page_times(folder, moves):
    """(median ms of a decode in the page, (median, slowest) ms of its answer to a slider
    move) for the export ``folder`` served by python -m http.server; None without Chromium."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("(no playwright: the page's figures are left out)")
        return None
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        print("(no Chromium: the page's figures are left out)")
        return None
    server = subprocess.Popen([sys.executable, "-m", "http.server", "8797", "--bind", "127.0.0.1", "--directory",
                               str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen("http://127.0.0.1:8797/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium)
            page = browser.new_page()
            page.goto("http://127.0.0.1:8797/")
            page.wait_for_function("window.explorer.state.draws >= 1 && window.explorer.settled()", timeout=120_000)
            decode = page.evaluate(f"""async () => {{
                const times = [];
                for (let i = 0; i <= {moves}; i++) {{
                  const began = performance.now();
                  await window.explorer.source.song();
                  if (i > 0) times.push(performance.now() - began);
                }}
                return times.sort((a, b) => a - b)[times.length >> 1];
            }}""")
            sliders = page.locator("#sliders input")
            rng = np.random.default_rng(1)
            page.evaluate("window.explorer.state.answers.length = 0")
            for move in range(moves):
                draws = page.evaluate("window.explorer.state.draws")
                sliders.nth(move % sliders.count()).fill(f"{rng.uniform(-SLIDER_RANGE, SLIDER_RANGE):.2f}")
                page.wait_for_function(f"window.explorer.state.draws > {draws} && window.explorer.settled()")
            answers = page.evaluate("window.explorer.state.answers")
            browser.close()
        return decode, (statistics.median(answers), max(answers))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
