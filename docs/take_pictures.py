"""Retake the pictures in docs/ from a fresh quick-start run, in one command.

    .venv/bin/python docs/take_pictures.py             # convert, train (about 7 minutes on 2 cores), shoot
    .venv/bin/python docs/take_pictures.py --run RUN   # shoot a quick-start run you already have

It runs the README's first quick-start line without its venv and pip steps (read from the README,
so that the pictures always show what that line makes), then writes:

- docs/run_page.png: the top of the run's index.html in headless Chromium;
- docs/explore_page.png: `music_generator.py explore` on the run, after one press of Random;
- docs/demo_song.png: the piano roll of one of the run's final songs.

The run folder stays under runs/ (git ignores it), as the quick start leaves it.
"""

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
WIDTH = 1280
RUN_PAGE_HEIGHT = 2300  # parameters, losses and evaluation; the songs below it would make the picture huge
EXPLORE_HEIGHT = 820  # the controls, the roll and 40 sliders
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")  # as find_chromium in tests/helpers.py


def find_chromium():
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def quick_start_steps():
    """The README's first quick-start line, split at `&&`, without making the venv and installing."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("\n## Quick start\n", 1)[1].split("```", 2)[1]
    first = next(line for line in block.splitlines()[1:] if line.strip())
    steps = [step.strip() for step in first.split("&&")]
    kept = [step for step in steps if not re.search(r"-m venv|pip install", step)]
    # This interpreter, not .venv's: the script may run from a checkout without its own .venv.
    return [[sys.executable if word == ".venv/bin/python" else word for word in shlex.split(step)] for step in kept]


def train_quick_start_run():
    before = set((REPO / "runs").glob("*_DEMO"))
    for step in quick_start_steps():
        print("+", shlex.join(step), flush=True)
        subprocess.run(step, cwd=REPO, check=True)
    made = sorted(set((REPO / "runs").glob("*_DEMO")) - before)
    if not made:
        sys.exit("take_pictures.py: the quick-start line made no runs/*_DEMO folder")
    return made[-1]


def launch(playwright, chromium):
    return playwright.chromium.launch(
        executable_path=chromium,
        args=["--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update"],
    )


def shoot_run_page(playwright, chromium, run):
    browser = launch(playwright, chromium)
    page = browser.new_page(viewport={"width": WIDTH, "height": 900})
    page.goto((run / "index.html").as_uri())
    page.wait_for_load_state("load")
    # Song pictures load lazily, when seen: scroll each into view, so that none in the picture is blank.
    page.evaluate(
        """async () => {
            for (const image of document.images) {
                image.scrollIntoView();
                if (!image.complete) await new Promise(done => {
                    image.addEventListener("load", done);
                    image.addEventListener("error", done);
                });
            }
            window.scrollTo(0, 0);
        }"""
    )
    top = {"x": 0, "y": 0, "width": WIDTH, "height": RUN_PAGE_HEIGHT}
    page.screenshot(path=str(DOCS / "run_page.png"), full_page=True, clip=top)
    browser.close()


def shoot_explore_page(playwright, chromium, run):
    server = subprocess.Popen(
        [sys.executable, "music_generator.py", "explore", "--run", str(run), "--port", "0"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        address = None
        for line in server.stdout:  # "Exploring NAME at http://127.0.0.1:PORT/ (Ctrl-C stops)"
            print(line, end="", flush=True)
            if found := re.search(r"http://\S+/", line):
                address = found.group()
                break
        if address is None:
            sys.exit(f"take_pictures.py: explore stopped (exit code {server.wait()}) without printing its address")
        browser = launch(playwright, chromium)
        page = browser.new_page(viewport={"width": WIDTH, "height": EXPLORE_HEIGHT})
        page.goto(address)
        page.wait_for_function("window.explorer && window.explorer.state.draws >= 1 && window.explorer.settled()")
        # Random moves the sliders off 0, so that the picture shows what they are for.
        draws = page.evaluate("window.explorer.state.draws")
        page.click("#random")
        page.wait_for_function(f"window.explorer.state.draws > {draws} && window.explorer.settled()")
        page.screenshot(path=str(DOCS / "explore_page.png"))
        browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--run", type=Path, help="a quick-start run folder to shoot (default: train a new one)")
    parser.add_argument(
        "--song", default="final_song06", help="the final song shown in demo_song.png (default: %(default)s)"
    )
    args = parser.parse_args()
    # Fail before the 7 minutes of training, not after them.
    chromium = find_chromium()
    if chromium is None:
        names = ", ".join(CHROMIUM_NAMES)
        sys.exit(f"take_pictures.py: no Chromium ({names}) on PATH: install it (Debian: apt install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("take_pictures.py: playwright is not installed: .venv/bin/pip install -r requirements-test.txt")
    if args.run is not None and not (args.run / "index.html").is_file():
        sys.exit(f"take_pictures.py: {args.run} is not a run folder (it has no index.html)")
    started = time.monotonic()
    run = (args.run or train_quick_start_run()).resolve()
    song = run / "generated" / "img" / f"{args.song}.png"
    if not song.is_file():
        sys.exit(f"take_pictures.py: {song} does not exist (--song names a song of generated/img)")
    with sync_playwright() as playwright:
        shoot_run_page(playwright, chromium, run)
        shoot_explore_page(playwright, chromium, run)
    shutil.copyfile(song, DOCS / "demo_song.png")
    print(
        f"Took docs/run_page.png, docs/explore_page.png and docs/demo_song.png ({song.name}) of {run} "
        f"in {time.monotonic() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
