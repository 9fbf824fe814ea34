"""Shipping a training folder as a diffx model folder: EMA weights in fp16, the fitted latent preview,
the run history and the model card; and a default guidance chosen on validation prompts, recorded in it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffx.embedded.card import write_model_card
from diffx.embedded.checkpoints import load_train_config, model_from_checkpoints
from diffx.embedded.config import TrainConfig
from diffx.embedded.history import read_runs, run_record, write_runs
from diffx.embedded.pool import scene_pool, to_unit
from diffx.embedded.world_quality import TUNING_FILE
from diffx.errors import CheckpointError
from diffx.files import atomic_output
from diffx.models.any_model import AnyModel
from diffx.render import fit_latent_rgb_mlp
from diffx.weights.load import load_model, save_model

PREVIEW_FIELDS = ("latent_rgb_factors", "latent_rgb_bias", "latent_rgb_hidden_weight", "latent_rgb_hidden_bias")


@torch.no_grad()
def fit_preview(model: AnyModel, images: torch.Tensor, count: int = 512) -> None:
    """Fit the model's latent → RGB preview (the per-pixel MLP: this VAE's colours are not linear in its
    latent, see benchmarks/preview_fit.py) on `count` pool pictures and store it in its config."""
    x = to_unit(images[:count])
    latents = model.vae.encode(x).mean * model.config.vae.scaling_factor
    preview = fit_latent_rgb_mlp(latents, x)
    for name, key in zip(PREVIEW_FIELDS, ("factors", "bias", "hidden_weight", "hidden_bias"), strict=True):
        setattr(model.config.vae, name, _nested(preview[key]))


def _nested(tensor: torch.Tensor) -> tuple:
    """A tensor as nested tuples of floats, as configs hold numbers."""
    return tuple(_nested(row) for row in tensor) if tensor.ndim > 1 else tuple(float(v) for v in tensor)


def export_model(out_dir: str | Path, folder: str | Path, scores: dict | None = None) -> AnyModel:
    """Ship a training folder as a diffx model folder (fp16 safetensors + config.json + MODEL_CARD.md +
    training.json, the history of the runs that trained it)."""
    out, folder = Path(out_dir), Path(folder)
    model, states = model_from_checkpoints(out)
    train_config = load_train_config(out)
    config = TrainConfig(**{**train_config, "out_dir": str(out)})
    source = same_vae_source(model, train_config.get("init_from"))
    if source is None:
        _, images = scene_pool(config)
        fit_preview(model, images)
        model.tiny_decoder = None
    else:  # the VAE it started from, kept frozen: its previews, fitted to these very latents, come along
        inherit_previews(model, source)
    model.source = "embedded shapes-world model"
    save_model(model, folder, dtype=torch.float16)
    runs = [*read_runs(out), run_record(train_config, states, config.pool_scenes)]
    write_runs(folder, runs)
    write_model_card(folder, model, runs, scores)
    return model


def same_vae_source(model: AnyModel, init_from: str | None) -> AnyModel | None:
    """The model a run started from (`--init-from`), when `model`'s VAE is still that model's bit for bit (as
    stored, fp16) at the same latent scaling; else None (trained from scratch, or a run that trained its VAE).
    The flow model keeps shapes-world-2's VAE frozen, so its latents are that model's, value for value."""
    if not init_from:
        return None
    source = load_model(init_from)
    ours, theirs = model.vae.state_dict(), source.vae.state_dict()
    same = ours.keys() == theirs.keys() and all(
        torch.equal(ours[key].to(theirs[key].dtype), theirs[key]) for key in ours)
    return source if same and model.config.vae.scaling_factor == source.config.vae.scaling_factor else None


def inherit_previews(model: AnyModel, source: AnyModel) -> None:
    """Give `model` the latent previews of `source`, whose VAE and scaling it shares (`same_vae_source`): the
    latent → RGB preview and the tiny decoder (if it has one), both fitted to exactly these latents, so a refit
    (2,000 MLP steps on 512 pool pictures) would only add fitting noise."""
    ours, theirs = model.config.vae, source.config.vae
    for name in PREVIEW_FIELDS:
        setattr(ours, name, getattr(theirs, name))
    model.tiny_decoder = source.tiny_decoder


def record_default_guidance(folder: str | Path, tuning: dict) -> float:
    """Make `tuning["chosen"]` (`world_quality.tune_guidance`) the default guidance of the model folder:
    config.json's `default_guidance`, and the tuning itself as `TUNING_FILE` for the card. Both atomically;
    the config is read and checked first, so a folder that is not a model is left as it was."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder}: no readable config.json ({err}); point at a diffx model folder") from None
    if not isinstance(config, dict) or "default_guidance" not in config:
        raise CheckpointError(f"{folder}/config.json is not a diffx model config; point at a diffx model folder")
    config["default_guidance"] = float(tuning["chosen"])
    for name, payload in ((TUNING_FILE, tuning), ("config.json", config)):
        with atomic_output(folder / name, force=True) as tmp:
            tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return config["default_guidance"]
