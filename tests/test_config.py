"""TrainConfig: train's options in one dataclass, and what is made from it (the parser,
--preset paper, --resume, the info file, the run page); and the progress bar's lines."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

import music_generator as mg
from music_vae.backend import keras
from music_vae.callbacks import ProgressBar
from music_vae.config import TrainConfig, given_options, grouped_parameters, page_option_names, song_option_names
from music_vae.model import ModelConfig
from music_vae.run_folder import RunFolder, info_text
from music_vae.run_page import run_page
from music_vae.training import model_config


def parsed(*options):
    return given_options(mg.parse_args(["train", "--data", "SAMPLES", *options]))


def test_every_field_is_an_option_of_train_with_its_default_in_its_help(capsys):
    with pytest.raises(SystemExit):
        mg.parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        assert flag in help_text, flag
        assert field.metadata["group"] in help_text
    assert "--free-bits FREE_BITS bits of KL per song that cost nothing (MusicVAE's free bits) (default: 1024.0)" in (
        help_text
    )
    assert "--pitch-step-terms, --no-pitch-step-terms" in help_text and "(default: on)" in help_text


def test_options_given_win_and_the_rest_take_their_preset_or_default():
    config = TrainConfig.new(parsed("--lr", "0.5", "--no-random-start", "--threshold", "0.3"))
    assert (config.lr, config.random_start, config.threshold, config.epochs) == (0.5, False, 0.3, 100)
    paper = TrainConfig.new(parsed("--preset", "paper", "--epochs", "7"))
    assert (paper.batch_size, paper.lr, paper.reconstruction, paper.free_bits, paper.epochs) == (1, 0.01, "mse", 0, 7)
    assert model_config(paper, 16) == ModelConfig(measures=16)  # the paper's model exactly


def test_an_old_run_takes_what_it_did_before_an_option_existed_and_drops_options_gone():
    config = TrainConfig.of_run({"epochs": 3, "data": "d", "an_option_since_removed": 1})
    assert (config.epochs, config.data) == (3, "d")
    assert (config.free_bits, config.transpose, config.sample_from, config.pitch_step_terms) == (0.0, 0, "prior", False)
    assert config.lr == TrainConfig.lr  # an option it had, at the default it then had too
    assert "an_option_since_removed" not in config.parameters()


def test_a_resumed_run_changes_only_what_resume_may_change_and_says_each():
    run = TrainConfig.new(parsed("--epochs", "4", "--no-audio"))
    resumed, notes = run.resumed(parsed("--epochs", "9", "--lr", "0.5", "--batch-size", str(run.batch_size)))
    assert (resumed.epochs, resumed.lr, resumed.data) == (9, run.lr, run.data)
    assert resumed.audio  # whether songs sound follows each session's command line, not the run
    assert notes == [  # in the order of train --help
        "note: --epochs 9 from now on (the run had 4)",
        f"note: --lr 0.5 is ignored: the run keeps {run.lr} (a new run can change it)",
        "note: --audio True from now on (the run had False)",
    ]


def test_how_songs_sound_follows_each_sessions_command_line_not_the_run():
    run = TrainConfig.new(parsed("--soundfont", "my.sf2"))
    assert run.resumed(parsed())[0].soundfont is None  # the best one this machine has
    assert run.resumed(parsed("--soundfont", "other.sf2"))[0].soundfont == "other.sf2"


def test_song_options_given_replace_the_runs_and_no_other():
    run = TrainConfig.new(parsed())
    changed = run.with_song_options({"temperature": 0.5, "note_rule": None, "lr": 9.0})
    assert (changed.temperature, changed.note_rule, changed.lr) == (0.5, run.note_rule, run.lr)
    names = {"sample_from", "temperature", "note_rule", "threshold", "max_pitches_per_step", "bpm"}
    assert set(song_option_names()) == names


def test_the_info_file_and_the_run_page_list_the_options_by_group(tmp_path):
    parameters = TrainConfig.new(parsed("--run-name", "X")).parameters()
    groups = dict(grouped_parameters({**parameters, "gone": 1}))
    assert ("--lr", 0.001) in groups["training (paper, section 3.4)"] and groups["other"] == [("--gone", 1)]
    state = {
        "run": "X", "run_info": "", "parameters": parameters, "status": "training", "epochs_done": 0,
        "sessions": [], "history": [], "environment": {},
        "data": {"folder": "d", "samples": 1, "training": 1, "validation": 0, "malformed": [], "mean_notes": 1.0,
                 "lowest_pitch": 24},
        "model": {"parameters": 1, "encoder": 1, "decoder": 1},
        "speed": {"jit": False, "cache": False, "gflop_per_sample": 1.0, "peak_gflop_per_s": 1.0},
    }
    info = info_text(state)
    assert info.index("training (paper, section 3.4):") < info.index("--lr                     0.001")
    page = run_page(RunFolder(tmp_path), json.loads(json.dumps(state)))
    shown = [name for name in page_option_names() if f"--{name.replace('_', '-')}" in page]
    assert shown == [name for name in page_option_names() if parameters[name] is not None]
    assert "--log-every" not in page


def test_each_message_during_fit_starts_a_line_of_its_own(capfd):
    """Keras draws its bar over and over on one line; what EpochEnd says after an epoch,
    and what a stop says, come after that line is ended."""

    class Says(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            print(f"epoch {epoch + 1}: saved")

        def on_train_batch_end(self, batch, logs=None):
            if batch == 1 and self.stop:
                raise KeyboardInterrupt

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((8, 2), "float32"), np.zeros((8, 1), "float32")
    progress, says = ProgressBar(), Says()
    says.stop = False
    model.fit(x, y, batch_size=2, epochs=2, callbacks=[progress, says], verbose=1)
    says.stop = True
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, batch_size=2, epochs=1, callbacks=[progress, says], verbose=1)
    progress.end_line()
    print("Interrupted.")
    lines = capfd.readouterr().out.replace("\b", "").split("\n")
    said = [line for line in lines if "saved" in line or "Interrupted" in line]
    assert said == ["epoch 1: saved", "epoch 2: saved", "Interrupted."]


def test_a_resumed_old_run_keeps_the_options_it_recorded_that_are_gone(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / tiny_run.name)  # a finished run of 1 epoch
    state = json.loads((run / "state.json").read_text())
    state["parameters"]["an_option_since_removed"] = 1
    del state["parameters"]["test_split"]  # as a run made before --test-split existed
    (run / "state.json").write_text(json.dumps(state))
    assert mg.main(["train", "--resume", str(run), "--epochs", "2", "--songs", "0"]) == 0
    parameters = json.loads((run / "state.json").read_text())["parameters"]
    assert parameters["an_option_since_removed"] == 1 and parameters["test_split"] == 0.0
    assert "  other:\n  --an-option-since-removed 1" in (run / f"{run.name}_info.txt").read_text()
