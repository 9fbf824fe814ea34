"""The training folder's files: the two stages' checkpoints and the run's settings, written atomically,
and the model they hold (VAE + EMA text encoder/U-Net, or /MMDiT for a flow model) read back."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from diffx.embedded.config import TrainConfig
from diffx.files import atomic_output, write_atomic
from diffx.models.any_model import AnyModel, build_model, config_from_dict, denoiser_of

VAE_CHECKPOINT = "vae_state.pt"
UNET_CHECKPOINT = "unet_state.pt"
LATENTS_FILE = "pool_latents.pt"  # posterior mean and std of every pool picture
CONFIG_FILE = "train_config.json"


def save_checkpoint(path: Path, payload: object) -> None:
    """`torch.save` that never leaves a half-written file (a crash mid-save keeps the previous one)."""
    write_atomic(path, lambda tmp: torch.save(payload, tmp), force=True)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint on the CPU (the generator states saved with the weights must stay there)."""
    return torch.load(path, weights_only=True, map_location="cpu")


def save_train_config(config: TrainConfig) -> None:
    """The run's settings as train_config.json in its training folder (what `export_model` reads back)."""
    with atomic_output(Path(config.out_dir) / CONFIG_FILE, force=True) as tmp:
        tmp.write_text(json.dumps(asdict(config), indent=2), encoding="utf-8")


def load_train_config(out_dir: str | Path) -> dict:
    """The settings `train` saved in a training folder, as a dict (a `TrainConfig`'s fields)."""
    return json.loads((Path(out_dir) / CONFIG_FILE).read_text(encoding="utf-8"))


def model_from_checkpoints(out_dir: str | Path) -> tuple[AnyModel, dict]:
    """The model as it stands in a (possibly still running) training folder: VAE + EMA text encoder/denoiser.

    Returns the model and the stage states (steps, losses, seconds) for the model card.
    """
    out = Path(out_dir)
    vae_saved = load_checkpoint(out / VAE_CHECKPOINT)
    unet_saved = load_checkpoint(out / UNET_CHECKPOINT)
    model = build_model(config_from_dict(json.loads(unet_saved["model_config"])),
                        source=f"trained by diffx train ({out})")
    model.vae.load_state_dict(vae_saved["vae"])
    model.text_encoder.load_state_dict(unet_saved["text_encoder"])
    denoiser_of(model).load_state_dict(unet_saved["unet"])  # the U-Net or the MMDiT
    params = [*model.text_encoder.parameters(), *denoiser_of(model).parameters()]
    with torch.no_grad():
        for p, shadow in zip(params, unet_saved["ema"], strict=True):
            p.copy_(shadow)
    return model.eval(), {"vae": vae_saved["state"], "unet": unet_saved["state"]}
