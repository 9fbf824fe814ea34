"""Shipping a training folder as a diffx model folder: EMA weights in fp16, the fitted latent preview,
the run history and the model card."""

from __future__ import annotations

from pathlib import Path

import torch

from diffx.embedded.card import write_model_card
from diffx.embedded.checkpoints import load_train_config, model_from_checkpoints
from diffx.embedded.config import TrainConfig
from diffx.embedded.history import read_runs, run_record, write_runs
from diffx.embedded.pool import scene_pool, to_unit
from diffx.models.stable_diffusion import StableDiffusion
from diffx.render import fit_latent_rgb_mlp
from diffx.weights import save_model


@torch.no_grad()
def fit_preview(model: StableDiffusion, images: torch.Tensor, count: int = 512) -> None:
    """Fit the model's latent → RGB preview (the per-pixel MLP: this VAE's colours are not linear in its
    latent, see benchmarks/preview_fit.py) on `count` pool pictures and store it in its config."""
    x = to_unit(images[:count])
    latents = model.vae.encode(x).mean * model.config.vae.scaling_factor
    preview = fit_latent_rgb_mlp(latents, x)
    vae = model.config.vae
    vae.latent_rgb_factors = _nested(preview["factors"])
    vae.latent_rgb_bias = _nested(preview["bias"])
    vae.latent_rgb_hidden_weight = _nested(preview["hidden_weight"])
    vae.latent_rgb_hidden_bias = _nested(preview["hidden_bias"])


def _nested(tensor: torch.Tensor) -> tuple:
    """A tensor as nested tuples of floats, as configs hold numbers."""
    return tuple(_nested(row) for row in tensor) if tensor.ndim > 1 else tuple(float(v) for v in tensor)


def export_model(out_dir: str | Path, folder: str | Path, scores: dict | None = None) -> StableDiffusion:
    """Ship a training folder as a diffx model folder (fp16 safetensors + config.json + MODEL_CARD.md +
    training.json, the history of the runs that trained it)."""
    out, folder = Path(out_dir), Path(folder)
    model, states = model_from_checkpoints(out)
    train_config = load_train_config(out)
    _, images = scene_pool(TrainConfig(**{**train_config, "out_dir": str(out)}))
    fit_preview(model, images)
    model.source = "embedded shapes-world model"
    save_model(model, folder, dtype=torch.float16)
    runs = [*read_runs(out), run_record(train_config, states)]
    write_runs(folder, runs)
    write_model_card(folder, model, runs, scores)
    return model
