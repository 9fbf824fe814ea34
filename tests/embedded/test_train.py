"""The training helpers: VAE loss weights, the progress line, `train` checking its config again, the CLI's
one-line refusals, and the training folder's files. (The end-to-end run, resume and export are tested through
`diffx train` in tests/test_cli.py.)"""

import math
import time

import pytest
import torch
from typer.testing import CliRunner

from diffx.cli import app
from diffx.embedded.checkpoints import (
    CONFIG_FILE,
    UNET_CHECKPOINT,
    VAE_CHECKPOINT,
    load_train_config,
    save_checkpoint,
    save_train_config,
)
from diffx.embedded.config import TrainConfig
from diffx.embedded.history import HISTORY_FILE, copy_history, read_runs, write_runs
from diffx.embedded.pool import POOL_FILE
from diffx.embedded.train import _object_weight, latent_scaling_factor, recent_loss, train
from diffx.errors import InvalidArgumentError


def test_object_pixels_weigh_more_than_the_background():
    images = torch.full((1, 3, 4, 4), -1.0)
    images[0, 0, 1:3, 1:3] = 1.0  # a red square on black
    weight = _object_weight(images, 10.0)
    assert weight.shape == (1, 1, 4, 4)
    assert weight[0, 0, 1:3, 1:3].eq(10.0).all() and weight.sum() == 4 * 10 + 12


def test_the_latent_scale_comes_from_the_pool_latents_without_encoding_again():
    """1 / std of z = mean + std · ε: from the posterior's mean and std the pool latents already hold."""
    mean, std = torch.zeros(3000, 4, 4, 4), torch.full((3000, 4, 4, 4), 2.0)
    assert latent_scaling_factor(mean, std) == pytest.approx(0.5, rel=0.01)  # the first 2048 pictures' samples
    assert latent_scaling_factor(mean + 5.0, std, count=10) == latent_scaling_factor(mean, std, count=10)


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


def test_a_toy_run_keeps_what_it_draws_and_counts_the_seconds_outside_its_steps(tmp_path):
    """Issue #32: a 20 + 20-step run rendered, encoded and stored a 30,000-scene pool, and its training.json
    said 135 s for a U-Net stage of 9 minutes: the steps alone. The pool now holds what the run draws, and each
    stage has two clocks: the steps, and everything (here: a preview that takes a second at the checkpoint)."""
    def slow_preview(model, path):
        time.sleep(1.0)

    torch.set_num_threads(1)  # a tiny run: a second thread only waits on a busy machine (conftest restores it)

    config = TrainConfig(out_dir=str(tmp_path), vae_steps=2, vae_batch=2, unet_steps=2, unet_batch=3,
                         checkpoint_every=2, device="cpu")
    _, summary = train(config, slow_preview)
    assert summary["pool_scenes"] == 6 and len(torch.load(tmp_path / POOL_FILE, weights_only=True)) == 6
    unet = torch.load(tmp_path / UNET_CHECKPOINT, weights_only=True)["state"]
    assert unet["wall_seconds"] >= unet["seconds"] + 1.0
    vae = torch.load(tmp_path / VAE_CHECKPOINT, weights_only=True)["state"]
    assert vae["wall_seconds"] > vae["seconds"] > 0  # with the pool's rendering and the reconstructions drawn
    assert summary["unet"]["step_seconds"] == round(unet["seconds"])
    assert summary["unet"]["wall_seconds"] == round(unet["wall_seconds"])
