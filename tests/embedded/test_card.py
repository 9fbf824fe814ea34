"""The run history and the model card: every run that trained a model, and the adherence table."""

import json

from diffx.embedded.card import update_model_card, write_model_card
from diffx.embedded.flow_model import flow_model_config
from diffx.embedded.history import run_record
from diffx.models.any_model import build_model
from diffx.models.configs import tiny
from diffx.models.stable_diffusion import build
from diffx.weights.load import save_model


def _states(vae_losses: list[float], unet_losses: list[float]) -> dict:
    return {"vae": {"step": len(vae_losses), "losses": vae_losses, "seconds": 61.0, "wall_seconds": 90.0,
                    "hardware": "cpu"},
            "unet": {"step": len(unet_losses), "losses": unet_losses, "seconds": 120.4, "wall_seconds": 540.2,
                     "hardware": "gpu"}}


def test_run_record_keeps_settings_and_stage_summaries_without_the_model_config():
    record = run_record({"pool_size": 8, "model": {"big": "dict"}}, _states([], [2.0] * 150 + [1.0] * 100))
    assert record["settings"] == {"pool_size": 8}
    assert record["vae"]["final_loss"] is None  # a continued run trained no VAE
    assert record["unet"] == {"steps": 250, "step_seconds": 120, "wall_seconds": 540, "final_loss": 1.0,
                              "hardware": "gpu"}  # the steps alone, and everything: two clocks, each named
    assert "pool_scenes" not in record and run_record({}, _states([], [1.0]), pool_scenes=64)["pool_scenes"] == 64
    v_model = {"scheduler": {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "beta_start": 1e-3}}
    settings = run_record({"pool_size": 8, "model": v_model}, _states([], [1.0]))["settings"]
    assert settings == {"pool_size": 8, "prediction_type": "v_prediction", "zero_snr": True}  # the target is kept


SETTINGS = {"pool_size": 8, "seed": 0, "vae_batch": 4, "vae_crop": 32, "shape_pixel_weight": 10.0,
            "vae_kl_weight": 1e-3, "unet_batch": 4, "unet_lr": 5e-4, "ema_decay": 0.999, "caption_dropout": 0.1,
            "init_from": None}


def _scores(colour: float, unguided_all: float) -> dict:
    default = {"n": 200, "seed": 0, "sampler": "ddim", "steps": 25, "guidance": 5.0, "pointing": 0.9,
               "pointing_trials": 70, "rates": {"colour": colour, "shape": 0.9, "position": 0.9, "all": 0.5}}
    unguided = {**default, "guidance": 1.0, "pointing": 0.5, "pointing_trials": 40,
                "rates": {"colour": 0.5, "shape": 0.5, "position": 0.5, "all": unguided_all}}
    return {"default": default, "unguided": unguided}


def test_model_card_lists_every_run_and_the_adherence_table(tmp_path):
    model = build(tiny())
    save_model(model, tmp_path)
    v_model = {"scheduler": {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True}}
    runs = [run_record(SETTINGS, _states([0.5] * 3, [0.1] * 3), pool_scenes=6),
            run_record({**SETTINGS, "init_from": "data/x", "model": v_model}, _states([], [0.05] * 2))]
    card = write_model_card(tmp_path, model, runs, _scores(0.97, 0.2)).read_text()
    assert "- Run 1: 6 rendered scenes" in card and "- Run 2, continued from `data/x`: 8 rendered scenes" in card
    assert ("2.0 min in training steps, 9.0 min in all (with the pool, loss curves, preview pictures and "
            "checkpoints) on gpu") in card
    assert "- Run 1:" in card and "- Run 2, continued from `data/x`" in card
    assert "caption dropout 0.1, target epsilon; final" in card  # a run recorded without its target: ε
    assert "caption dropout 0.1, target v_prediction on a zero-terminal-SNR schedule; final" in card
    assert "scaled_linear schedule, T = 1000, leading timestep spacing; the U-Net predicts epsilon." in card
    assert card.count("  - VAE:") == 1 and card.count("Text encoder + U-Net:") == 2
    assert "| colour | 0.970 | 0.500 | ≥ 0.95 ✓ |" in card and "| all: default − guidance 1 | +0.300 |" in card
    assert "All targets are met." in card and "color=0.970 shape=0.900 position=0.900 pointing=0.900" in card


def test_a_flow_models_card_says_what_it_took_over_and_whose_runs_open_its_history(tmp_path):
    flow = build_model(flow_model_config(tiny(), depth=1, heads=2, head_dim=16))
    save_model(flow, tmp_path)
    runs = [run_record({**SETTINGS, "world": "shapes2"}, _states([0.5] * 3, [0.1] * 3), pool_scenes=6),
            run_record({**SETTINGS, "world": "shapes2", "init_from": "data/u-net", "family": "sd3"},
                       _states([], [0.2] * 2))]
    card = write_model_card(tmp_path, flow, runs, None).read_text()
    assert card.startswith("# tiny-flow — diffx's embedded flow model (SD3's architecture)")
    assert "started from (data/u-net;" in card and "(runs 1-1, a\nU-Net model's)" in card
    assert "Text encoder + U-Net:" in card and "Text encoder + MMDiT:" in card  # the history: theirs, then its own
    unet_card = write_model_card(tmp_path, build(tiny()), runs[:1], None).read_text()
    assert unet_card.startswith("# shapes-world-2 — diffx's embedded default model (v2)")  # the world's words


def test_a_run_recorded_with_one_clock_says_it_was_the_steps(tmp_path):
    """Runs recorded before the two clocks (the shipped model's) have `seconds`: the training steps alone."""
    save_model(build(tiny()), tmp_path)
    run = run_record(SETTINGS, _states([0.5], [0.1]))
    for stage in ("vae", "unet"):
        run[stage]["seconds"] = run[stage].pop("step_seconds")
        del run[stage]["wall_seconds"]
    card = write_model_card(tmp_path, build(tiny()), [run], None).read_text()
    assert "final L_simple 0.1000; 2.0 min in training steps on gpu." in card


def test_update_model_card_reads_the_history_and_names_missed_targets(tmp_path):
    save_model(build(tiny()), tmp_path)
    run = run_record(SETTINGS, _states([0.5], [0.1]))
    (tmp_path / "training.json").write_text(json.dumps({"runs": [run]}))
    card = update_model_card(tmp_path, _scores(0.90, 0.45)).read_text()
    assert "- Run 1:" in card and "| colour | 0.900 | 0.500 | ≥ 0.95 ✗ |" in card
    assert "Targets not met: colour, guidance gap." in card
