"""The pictures training draws at every checkpoint, its progress made visible: the VAE's reconstructions of a
few pool pictures (`vae_preview`) and a grid of fixed prompts at a few guidance weights (`preview_grid`)."""

from __future__ import annotations

from pathlib import Path

import torch

from diffx.embedded.pool import to_unit
from diffx.images import tensor_to_image
from diffx.models.any_model import AnyModel, denoiser_of
from diffx.pipeline.generation import generate
from diffx.pipeline.settings import GenerationSettings
from diffx.render import make_grid, save_png, to_pil


@torch.no_grad()
def vae_preview(model: AnyModel, images: torch.Tensor, path: Path) -> None:
    """Originals (top row) over their reconstructions (bottom row)."""
    x = to_unit(images.to(model.device))
    reconstruction = model.vae.decode(model.vae.encode(x).mean)
    cells = [[to_pil(tensor_to_image(im)) for im in x],
             [to_pil(tensor_to_image(im.clamp(-1, 1))) for im in reconstruction]]
    save_png(make_grid(cells, row_labels=["original", "VAE"], col_labels=None, title="VAE reconstructions",
                       cell_size=(96, 96)), path, force=True)


@torch.no_grad()
def preview_grid(model: AnyModel, path: Path, prompts: tuple[str, ...],
                 guidances: tuple[float, ...] = (1.0, 5.0)) -> None:
    """A grid of fixed prompts (columns, e.g. a world's `preview_prompts`) at a few guidance weights (rows):
    progress made visible. A flow model's are drawn by its default sampler, Euler steps along the flow."""
    denoiser = denoiser_of(model)
    modes = (model.text_encoder.training, denoiser.training)
    model.text_encoder.eval()
    denoiser.eval()
    rows = [[to_pil(generate(model, GenerationSettings(prompt=prompt, guidance=w, steps=25)).images[0])
             for prompt in prompts] for w in guidances]
    model.text_encoder.train(modes[0])
    denoiser.train(modes[1])
    save_png(make_grid(rows, row_labels=[f"w = {w}" for w in guidances], col_labels=list(prompts),
                       title=path.stem.replace("_", " "), cell_size=(96, 96)), path, force=True)
