"""The pictures training draws at every checkpoint, its progress made visible: the VAE's reconstructions of a
few pool pictures (`vae_preview`) and a grid of fixed prompts at a few guidance weights (`preview_grid`)."""

from __future__ import annotations

from pathlib import Path

import torch

from diffx.embedded.pool import to_unit
from diffx.images import tensor_to_image
from diffx.models.stable_diffusion import StableDiffusion
from diffx.pipeline.generation import generate
from diffx.pipeline.settings import GenerationSettings
from diffx.render import make_grid, save_png, to_pil


@torch.no_grad()
def vae_preview(model: StableDiffusion, images: torch.Tensor, path: Path) -> None:
    """Originals (top row) over their reconstructions (bottom row)."""
    x = to_unit(images.to(model.device))
    reconstruction = model.vae.decode(model.vae.encode(x).mean)
    cells = [[to_pil(tensor_to_image(im)) for im in x],
             [to_pil(tensor_to_image(im.clamp(-1, 1))) for im in reconstruction]]
    save_png(make_grid(cells, row_labels=["original", "VAE"], col_labels=None, title="VAE reconstructions",
                       cell_size=(96, 96)), path, force=True)


@torch.no_grad()
def preview_grid(model: StableDiffusion, path: Path, prompts: tuple[str, ...],
                 guidances: tuple[float, ...] = (1.0, 5.0)) -> None:
    """A grid of fixed prompts (columns, e.g. a world's `preview_prompts`) at a few guidance weights (rows):
    progress made visible."""
    modes = (model.text_encoder.training, model.unet.training)
    model.text_encoder.eval()
    model.unet.eval()
    rows = [[to_pil(generate(model, GenerationSettings(prompt=prompt, guidance=w, steps=25)).images[0])
             for prompt in prompts] for w in guidances]
    model.text_encoder.train(modes[0])
    model.unet.train(modes[1])
    save_png(make_grid(rows, row_labels=[f"w = {w}" for w in guidances], col_labels=list(prompts),
                       title=path.stem.replace("_", " "), cell_size=(96, 96)), path, force=True)
