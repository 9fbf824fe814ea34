"""Inpainting: repaint the masked region of a picture, with either kind of U-Net.

- A 9-channel inpainting U-Net is conditioned on the mask and the masked picture's latent (`mask_conditioned`).
- Any other U-Net gets latent blending: after every step the known region of the next state is overwritten with
  the input picture's latent noised to that state's level (`latent_blending`, a sampler post-step hook).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from diffx.sampling.samplers import StepRecord


def latent_mask(repaint: Tensor, like: Tensor) -> Tensor:
    """(1, 1, H, W) pixel mask → the latent grid of `like`, (1, 1, h, w), by nearest neighbour as diffusers."""
    return F.interpolate(repaint, size=like.shape[-2:], mode="nearest").to(like.device, like.dtype)


def mask_conditioned(denoiser: Callable[[Tensor, Tensor], Tensor], repaint: Tensor,
                     masked_image_latent: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """The 9-channel inpainting U-Net sees [x_t, mask (1 = repaint), latent of the image with the hole blanked]."""
    latent_repaint = latent_mask(repaint, masked_image_latent)

    def conditioned(x_in: Tensor, t: Tensor) -> Tensor:
        return denoiser(torch.cat([x_in, latent_repaint, masked_image_latent], dim=1), t)

    return conditioned


def latent_blending(repaint: Tensor, init_latent: Tensor, noise: Tensor) -> Callable[[StepRecord], None]:
    """Inpainting with a plain SD1.x U-Net: after every step, overwrite the known region of the next state.

    It becomes the input image's latent noised to the state's level σ' with the initial noise, in the
    sampler's own space (VP x_t = √ᾱ x0 + √(1 − ᾱ) ε, or σ-space x0 + σ' ε); after the last step the
    clean latent itself — as diffusers' StableDiffusionInpaintPipeline does for a 4-channel U-Net.
    """
    known = 1 - latent_mask(repaint, init_latent)

    def blend(record: StepRecord) -> None:
        next_sigma = record.next_sigma
        if record.index == record.num_steps - 1:
            noised = init_latent
        elif record.state is record.x:  # VP samplers hand the model their state itself
            alpha = 1.0 / (next_sigma**2 + 1.0)
            noised = math.sqrt(alpha) * init_latent + math.sqrt(1 - alpha) * noise
        else:
            noised = init_latent + next_sigma * noise
        record.x_next.copy_(known * noised + (1 - known) * record.x_next)

    return blend
