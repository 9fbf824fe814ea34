"""The latent codec: pictures ↔ scaled latents through the VAE (z = scaling_factor · (sample of q(z | x) −
shift_factor); the shift is SD3's, 0 elsewhere), and what the decoder costs."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffx.images import image_to_tensor, tensor_to_image

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

DECODE_BATCH = 8  # VAE decodes per batch: bounds the decoder's memory


@torch.no_grad()
def encode_image(model: StableDiffusion, image: Image.Image | np.ndarray | Tensor,
                 generator: torch.Generator | None) -> Tensor:
    """Picture → scaled latent z = scaling_factor · (sample of q(z | x) − shift_factor)  (image (H, W, 3) uint8 or
    PIL)."""
    x = image_to_tensor(image).to(model.device, model.dtype)
    posterior = model.vae.encode(x)
    vae = model.config.vae
    return (posterior.sample(generator).float() - vae.shift_factor) * vae.scaling_factor


@torch.no_grad()
def decoder_gflops(model: StableDiffusion, height: int | None = None, width: int | None = None) -> float:
    """The VAE decoder's cost for one image of `height` × `width` pixels (default: the model's size), in GFLOPs.

    Counted, not guessed: the decoder runs once on a 4×4 latent with hooks on its convolutions and linear
    layers (2 · outputs · inputs-per-output FLOPs each), and the count is scaled to the image's latent
    area — convolutions cost in proportion to it; the mid-block attention, quadratic in it, is a few
    percent of SD's decoder and is left out. SD1.5 at 512 px: ~2,480 GFLOPs; the embedded model
    (shapes-world-2) at 128 px: ~7.7.
    """
    factor = model.config.vae.downsample_factor
    height, width = height or model.config.image_size, width or model.config.image_size
    flops = []

    def count(module: torch.nn.Module, inputs: tuple, output: Tensor) -> None:
        per_output = module.in_features if isinstance(module, torch.nn.Linear) else \
            module.in_channels // module.groups * math.prod(module.kernel_size)
        flops.append(2 * output.numel() * per_output)

    layers = [m for m in model.vae.decoder.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    layers += [m for m in [model.vae.post_quant_conv] if isinstance(m, torch.nn.Conv2d)]  # SD3's: an identity
    hooks = [layer.register_forward_hook(count) for layer in layers]
    try:
        model.vae.decode(torch.zeros(1, model.config.vae.embed_dim, 4, 4, device=model.device, dtype=model.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(flops) / 1e9 * (height // factor) * (width // factor) / 16


@torch.no_grad()
def decode_latents(model: StableDiffusion, latents: Tensor, batch: int = DECODE_BATCH) -> list[np.ndarray]:
    """Scaled latents (N, C, h, w) → pictures (H, W, 3) uint8, `batch` at a time (fp32 for `force_upcast`)."""
    # SDXL's VAE overflows in fp16: it decodes in fp32 then (diffusers' SDXL pipeline upcasts it the same way).
    # Only then is the VAE cast, and cast back after; every other model decodes in its own dtype, untouched.
    vae = model.config.vae
    upcast = vae.force_upcast and model.dtype == torch.float16
    dtype = torch.float32 if upcast else model.dtype
    if upcast:
        model.vae.to(dtype)
    try:
        pictures = []
        for chunk in latents.split(batch):
            z = (chunk.float().to(model.device) / vae.scaling_factor + vae.shift_factor).to(dtype)
            pictures += [tensor_to_image(image.clamp(-1, 1)) for image in model.vae.decode(z).float()]
    finally:
        if upcast:
            model.vae.to(model.dtype)
    return pictures



@torch.no_grad()
def decode_tiny(model: StableDiffusion, latents: Tensor) -> list[np.ndarray]:
    """Scaled latents (N, C, h, w) → pictures (H, W, 3) uint8 through the model's tiny preview decoder
    (`models.tiny_decoder`: an approximation of the VAE's decode at a fraction of its cost; fp32)."""
    if model.tiny_decoder is None:
        raise ValueError(f"{model.config.name} has no tiny preview decoder")
    device = next(model.tiny_decoder.parameters()).device
    pictures = model.tiny_decoder(latents.float().to(device)).float()  # (N, C, h, w) -> (N, 3, H, W)
    return [tensor_to_image(picture.clamp(-1, 1)) for picture in pictures]
