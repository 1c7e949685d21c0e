"""The project around the two scripts: the sweep script, the README, the demo corpus."""

import re
import subprocess
import sys

import pytest

from music_vae.samples import midi_to_samples
from test_data_loader import REPO

SWEEP = (REPO / "run_experiments.ps1").read_text()


def options(*command):
    """Every option string that ``--help`` of a script (and sub-command) lists."""
    help_text = subprocess.run(
        [sys.executable, *command, "--help"], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    return set(re.findall(r"(--[a-z][a-z-]*)", help_text)) - {"--help"}


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


def test_readme_quick_start_has_exactly_two_commands_and_ci_runs_the_second():
    demo, tests = quick_start_commands()
    assert (
        "pip install -r requirements.txt" in demo
        and "data_loader.py examples/midi" in demo
        and "music_generator.py train" in demo
    )
    assert "pip install -r requirements-test.txt" in tests and "pytest" in tests
    ci = (REPO / ".ci" / "run").read_text()
    assert "Quick start" in ci  # it reads the command from the README, so the two never drift


def test_every_option_of_both_scripts_is_in_the_readme():
    readme = (REPO / "README.md").read_text()
    for command in (
        ["data_loader.py"], ["music_generator.py", "train"], ["music_generator.py", "generate"],
        ["music_generator.py", "evaluate"],
    ):
        for option in options(*command):
            assert option in readme, f"{' '.join(command)} {option}"


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
