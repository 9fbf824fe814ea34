"""The pictures drawn at each checkpoint: the VAE's reconstructions and the prompt x guidance grid."""

import dataclasses

import torch
from PIL import Image

from diffx.embedded.previews import preview_grid, vae_preview
from diffx.models.configs import tiny
from diffx.models.stable_diffusion import build


def test_vae_preview_draws_originals_over_reconstructions(tiny_model, tmp_path):
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)  # pool pictures are uint8
    vae_preview(tiny_model, images, tmp_path / "vae_samples.png")
    with Image.open(tmp_path / "vae_samples.png") as grid:
        assert grid.width > 3 * 96 and grid.height > 2 * 96  # 3 columns, 2 rows of 96 px cells


def test_preview_grid_draws_every_prompt_and_leaves_training_modes_as_they_were(tmp_path):
    torch.manual_seed(0)
    model = build(dataclasses.replace(tiny(), image_size=16))  # 16 px: 25 steps per picture stay quick
    model.text_encoder.train()
    model.unet.eval()
    preview_grid(model, tmp_path / "samples_000100.png", ("a red circle", "a blue square"), guidances=(5.0,))
    with Image.open(tmp_path / "samples_000100.png") as grid:
        assert grid.width > 2 * 96 and 96 < grid.height < 2 * 96  # 2 prompts x 1 guidance weight
    assert model.text_encoder.training and not model.unet.training
