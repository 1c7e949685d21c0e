"""The project around the two scripts: the sweep script, the README and docs/, .ci/run, the demo
corpus."""

import contextlib
import importlib
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from music_vae.samples import midi_to_samples

REPO = Path(__file__).resolve().parents[1]
SWEEP = (REPO / "run_experiments.ps1").read_text()
README_MOST_LINES = 200


def options(script, *command):
    """Every option string that ``--help`` of a script (and sub-command) lists, asked in this
    process: a subprocess per command would import TensorFlow nine times."""
    parse_args = importlib.import_module(script.removesuffix(".py")).parse_args
    with contextlib.redirect_stdout(io.StringIO()) as printed, pytest.raises(SystemExit):
        parse_args([*command, "--help"])
    help_text = printed.getvalue()
    # The option column of argparse's help, not its prose, which may quote other programs' options.
    columns = [found.group(1) for line in help_text.splitlines() if (found := re.match(r"\s+(-.*?)(\s{2,}|$)", line))]
    return set(re.findall(r"(--[a-z][a-z-]*)", " ".join(columns))) - {"--help"}


def subcommand_names(script):
    """The sub-commands that ``--help`` of a script lists: {train,generate,...}."""
    parse_args = importlib.import_module(script.removesuffix(".py")).parse_args
    with contextlib.redirect_stdout(io.StringIO()) as printed, pytest.raises(SystemExit):
        parse_args(["--help"])
    return re.search(r"\{([a-z,]+)\}", printed.getvalue()).group(1).split(",")


def test_every_flag_the_sweep_passes_is_a_train_option():
    passed = set(re.findall(r'"(--[a-z][a-z-]*)"', SWEEP))
    assert {
        "--data", "--output-dir", "--run-name", "--run-info", "--lr", "--batch-size", "--latent", "--kl-weight",
        "--epochs", "--reconstruction", "--preset",
    } <= passed
    assert passed <= options("music_generator.py", "train")


def test_every_sweep_parameter_reaches_the_command_line():
    arguments = SWEEP[SWEEP.index("$arguments = @(") : SWEEP.index("+ $Extra")]
    for variable in (
        "$lrText", "$batch", "$latentSize", "$klText", "$epochCount", "$loss", "$name", "$info", "$Data", "$OutputDir",
        "$presetFlags",
    ):
        assert variable in arguments, variable
    for parameter in (
        "LearningRate", "BatchSize", "Latent", "KlWeight", "Epochs", "Reconstruction", "Data", "OutputDir", "Python",
        "DryRun", "Preset",
    ):
        assert re.search(rf"\${parameter}\b", SWEEP.split("param(", 1)[1].split(")\n", 1)[0]), parameter


def test_each_run_of_the_sweep_gets_a_distinct_name():
    """The name is RUNnn from a counter that grows once per combination, in the innermost
    loop, so that no two runs of a sweep share a name."""
    loops = re.findall(r"^foreach \(\$(\w+) in \$(\w+)\) \{$", SWEEP, re.MULTILINE)
    assert [collection for _, collection in loops] == [
        "LearningRate", "BatchSize", "Latent", "KlWeight", "Epochs", "Reconstruction",
    ]
    body = SWEEP[SWEEP.index("foreach ($loss in $Reconstruction) {") : SWEEP.index("}}}}}}")]
    assert SWEEP.count("$number++") == 1 and "$number++" in body
    assert '$name = "RUN{0:D2}" -f $number' in body
    assert re.search(r"\$number = 0\s*\n\s*\nforeach", SWEEP)


def test_a_failed_run_does_not_stop_the_sweep_and_a_table_ends_it():
    assert 'ErrorActionPreference = "Stop"' not in SWEEP
    assert "$LASTEXITCODE -eq 0" in SWEEP and "Format-Table" in SWEEP
    assert SWEEP.rstrip().endswith("if ($failed -gt 0) { exit 1 }")
    assert "ToString($invariant)" in SWEEP  # 0.001 on a German Windows too


def quick_start_commands():
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Quick start\n", 1)[1]
    block = section.split("```", 2)[1]
    return [line for line in block.splitlines()[1:] if line.strip()]


def test_readme_quick_start_has_exactly_two_commands():
    demo, tests = quick_start_commands()
    assert (
        "pip install -r requirements.txt" in demo
        and "data_loader.py examples/midi" in demo
        and "music_generator.py train" in demo
    )
    assert tests.startswith("python3 -m venv .venv && .venv/bin/pip install -r requirements-test.txt")
    assert tests.endswith("pytest")


def run_ci(tmp_path, ci, present=("fluidsynth", "chromium", "corpus")):
    """.ci/run in a copy of the repository's .ci/run and README.md, on a PATH of stand-ins.

    The stand-in ``python3`` records its arguments and fails, so the README's test command
    stops at its first step instead of installing and running the suite. ``fluidsynth`` and
    ``chromium`` are there only where ``present`` names them, and so is the corpus (through
    VGMIDI_DIR). The PATH has no apt-get, so the install step is left out even as root.
    """
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", repo / ".ci" / "run")
    shutil.copy(REPO / "README.md", repo / "README.md")
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("awk", "sed", "id", "dirname", "bash"):
        (tools / tool).symlink_to(shutil.which(tool))
    calls = tmp_path / "python3 calls"
    stand_ins = {"python3": f'echo "$*" >> "{calls}"; exit 1'}
    stand_ins.update({name: "exit 0" for name in ("fluidsynth", "chromium") if name in present})
    for name, body in stand_ins.items():
        (tools / name).write_text(f"#!{shutil.which('bash')}\n{body}\n")
        (tools / name).chmod(0o755)
    corpus = tmp_path / "vgmidi"
    if "corpus" in present:
        corpus.mkdir()
    env = {"PATH": str(tools), "HOME": str(tmp_path), "VGMIDI_DIR": str(corpus)}
    if ci:
        env["CI"] = "true"
    finished = subprocess.run(
        [shutil.which("bash"), str(repo / ".ci" / "run")], capture_output=True, text=True, env=env, timeout=60,
        check=False,  # the stand-in python3 fails on purpose
    )
    ran = calls.read_text().splitlines() if calls.exists() else []
    return finished, ran


@pytest.mark.parametrize("ci", [False, True])
def test_ci_runs_the_readme_s_second_quick_start_line(tmp_path, ci):
    """It reads the command from the README, so the two never drift: what it announces and
    starts is that line, whole."""
    finished, ran = run_ci(tmp_path, ci)
    assert finished.stdout.splitlines()[0] == "+ " + quick_start_commands()[1]
    assert ran == ["-m venv .venv"]  # the line's first step, run by bash as the README writes it
    assert finished.stderr == ""


@pytest.mark.parametrize(
    "missing, said",
    [
        ("fluidsynth", "FluidSynth (no fluidsynth command)"),
        ("chromium", "Chromium (no chromium, chromium-browser or google-chrome command)"),
        ("corpus", "the MIDI corpus {corpus} (no such folder)"),
    ],
)
@pytest.mark.parametrize("ci", [True, False])
def test_ci_stops_at_once_saying_what_the_tests_would_miss(tmp_path, missing, said, ci):
    """Under CI=true a test that skips would pass without checking anything; elsewhere the
    tests skip, saying so, and .ci/run only warns."""
    finished, ran = run_ci(tmp_path, ci, present={"fluidsynth", "chromium", "corpus"} - {missing})
    said = said.format(corpus=tmp_path / "vgmidi")
    if ci:
        assert finished.returncode != 0
        assert finished.stderr == f".ci/run: CI=true and the tests would skip for want of: {said}\n"
        assert finished.stdout == "" and ran == []  # the test command never started
    else:
        assert finished.stderr == f".ci/run: the tests that need these will skip: {said}\n"
        assert ran == ["-m venv .venv"]


def test_ci_names_every_missing_thing_in_one_line(tmp_path):
    finished, ran = run_ci(tmp_path, True, present=())
    assert finished.returncode != 0 and ran == []
    assert len(finished.stderr.splitlines()) == 1
    assert finished.stderr.count("; ") == 2


def test_every_option_of_every_command_is_in_docs_cli():
    cli = (REPO / "docs" / "cli.md").read_text()
    subcommands = subcommand_names("music_generator.py")
    assert "export" in subcommands and "train" in subcommands
    for command in [["data_loader.py"]] + [["music_generator.py", subcommand] for subcommand in subcommands]:
        for option in options(*command):
            # The whole option: --songs in --songs-per-epoch does not count.
            whole = rf"(?<![\w-]){option}(?![\w-])"
            assert re.search(whole, cli), f"{' '.join(command)} {option} is not in docs/cli.md"


def test_the_readme_stays_a_front_door():
    """Everything else lives in docs/; the README keeps what a newcomer reads first."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MOST_LINES
    assert "\n## Quick start\n" in readme and "](docs/run_page.png)" in readme


def slug(heading):
    """The anchor GitHub gives a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown):
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)  # no headings in code
    return {slug(heading) for heading in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


MARKDOWN = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda path: str(path.relative_to(REPO)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if re.match(r"[a-z]+:", link):  # http:, https:, mailto:: not this repository's
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.is_file(), f"{page.name}: {link}: no file {target}"
        assert target.is_relative_to(REPO), f"{page.name}: {link} leaves the repository"
        if anchor:
            assert anchor in anchors(target.read_text()), f"{page.name}: {link}: no heading #{anchor}"


def test_the_demo_corpus_is_what_its_script_writes(tmp_path):
    subprocess.run(
        [sys.executable, str(REPO / "examples" / "make_demo_corpus.py"), str(tmp_path)], check=True, capture_output=True
    )
    made = sorted(tmp_path.glob("*.mid"))
    shipped = sorted((REPO / "examples" / "midi").glob("*.mid"))
    assert 20 <= len(shipped) <= 40
    assert [p.name for p in made] == [p.name for p in shipped]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(made, shipped))


@pytest.mark.parametrize("meter", ["4-4", "3-4", "6-8"])
def test_the_demo_corpus_converts_into_three_samples_a_song(meter):
    songs = sorted((REPO / "examples" / "midi").glob(f"*_{meter}.mid"))
    assert songs
    for song in songs:
        conversion = midi_to_samples(song)
        assert len(conversion.samples) == 3
        assert all(100 < sample.sum() < 400 for sample in conversion.samples)
