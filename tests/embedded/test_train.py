"""The training helpers: VAE loss weights, the progress line, `train` checking its config again, the CLI's
one-line refusals, and the training folder's files. (The end-to-end run, resume and export are tested through
`diffx train` in tests/test_cli.py.)"""

import math

import pytest
import torch
from typer.testing import CliRunner

from diffx.cli import app
from diffx.embedded.checkpoints import CONFIG_FILE, load_train_config, save_checkpoint, save_train_config
from diffx.embedded.config import TrainConfig
from diffx.embedded.history import HISTORY_FILE, copy_history, read_runs, write_runs
from diffx.embedded.train import _object_weight, recent_loss, train
from diffx.errors import InvalidArgumentError


def test_object_pixels_weigh_more_than_the_background():
    images = torch.full((1, 3, 4, 4), -1.0)
    images[0, 0, 1:3, 1:3] = 1.0  # a red square on black
    weight = _object_weight(images, 10.0)
    assert weight.shape == (1, 1, 4, 4)
    assert weight[0, 0, 1:3, 1:3].eq(10.0).all() and weight.sum() == 4 * 10 + 12


def test_progress_shows_the_recent_mean_loss_and_nothing_before_the_first():
    assert recent_loss([]) == ""  # a stage resumed with no steps left, or a VAE kept from --init-from: not "nan"
    assert recent_loss([9.0] + [0.5] * 50) == "loss 0.5000"  # the last 50 only
    assert recent_loss([0.25, 0.75], "grounding") == "grounding 0.5000"


def test_train_checks_a_config_changed_after_it_was_made(tmp_path):
    config = TrainConfig(out_dir=str(tmp_path / "run"))
    config.unet_lr = math.nan
    with pytest.raises(InvalidArgumentError, match="^unet_lr must be a finite number above 0"):
        train(config)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("option", "field"), [("--threads", "threads"), ("--seed", "seed"),
                                               ("--object-counts", "object_counts")])
def test_the_cli_reports_a_bad_setting_as_one_line(tmp_path, monkeypatch, option, field):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "--out-dir", str(tmp_path / "run"), "--device", "cpu", option, "-1"])
    assert result.exit_code == 2 and result.stderr.startswith("error:") and field in result.stderr
    assert not (tmp_path / "run").exists()


class _Unsaveable:
    def __reduce__(self):
        raise ValueError("cannot be saved")


def test_training_files_are_written_atomically(tmp_path):
    config = TrainConfig(out_dir=str(tmp_path), pool_size=3)
    save_train_config(config)
    assert load_train_config(tmp_path)["pool_size"] == 3 and (tmp_path / CONFIG_FILE).is_file()
    path = tmp_path / "state.pt"
    save_checkpoint(path, {"x": torch.ones(2)})
    with pytest.raises(ValueError, match="cannot be saved"):
        save_checkpoint(path, {"x": _Unsaveable()})  # fails while writing: the earlier checkpoint survives
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))
    assert {p.name for p in tmp_path.iterdir()} == {CONFIG_FILE, "state.pt"}  # no temporary left


def test_history_is_copied_and_read_back(tmp_path):
    source, dest = tmp_path / "model", tmp_path / "run"
    assert read_runs(source) == []
    copy_history(source, dest)  # nothing to copy
    assert not (dest / HISTORY_FILE).exists()
    write_runs(source, [{"settings": {}, "vae": {}, "unet": {}}])
    copy_history(source, dest)
    assert (dest / HISTORY_FILE).read_bytes() == (source / HISTORY_FILE).read_bytes()
    assert read_runs(dest) == [{"settings": {}, "vae": {}, "unet": {}}]
