"""Tensors of the diffusion process (latents, noise, decoded images) to RGB pictures.

A 4-channel SD latent is not a picture, but the VAE decoder is close to linear in colour: each latent
pixel covers an 8x8 patch whose average RGB is roughly a fixed linear map of its 4 channels. That map
gives a "free" preview of x_t and x0_pred at every step without running the decoder.
"""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from diffx.images import unit_range_to_uint8

# Linear latent -> RGB factors for SD1.x latents, rows = latent channels, columns = (R, G, B). Applied
# to the *scaled* latents the U-Net works on (VAE latent * 0.18215); the result is roughly in [-1, 1].
# These are the community preview factors from the Hugging Face forum thread "Decoding latents to RGB
# without upscaling" (discuss.huggingface.co/t/23204), used as `cheap_approximation` in AUTOMATIC1111's
# modules/sd_vae_approx.py and as SD15.latent_rgb_factors in early ComfyUI comfy/latent_formats.py.
SD15_LATENT_RGB_FACTORS = torch.tensor(
    [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ]
)

# Standardized noise is shown over ±NOISE_DISPLAY_SIGMAS standard deviations (a statistics σ, not the noise
# level σ = √((1 − ᾱ)/ᾱ) of the schedules): values beyond saturate to 0 or 255.
NOISE_DISPLAY_SIGMAS = 2.5


def latent_to_rgb_fast(
    latent: torch.Tensor, factors: torch.Tensor | Sequence | None = None, bias: torch.Tensor | Sequence | None = None,
    hidden_weight: torch.Tensor | Sequence | None = None, hidden_bias: torch.Tensor | Sequence | None = None,
) -> np.ndarray:
    """Preview a scaled latent (C, h, w) as uint8 (h, w, 3), one latent pixel at a time.

    Linear (SD1.5's community factors, or a fitted map): rgb = latentᵀ factors + bias, factors (C, 3).
    With a hidden layer (a per-pixel MLP, i.e. two 1×1 convolutions, fitted by `fit_latent_rgb_mlp` for a
    VAE whose colours are not linear in its latent): rgb = SiLU(latentᵀ W + b_h)ᵀ factors + bias, with
    W = `hidden_weight` (C, H), b_h = `hidden_bias` (H,) and factors (H, 3). Tensors, or nested lists as
    configs and trace files hold them — this is the one reader of that representation.
    """
    factors = SD15_LATENT_RGB_FACTORS if factors is None else torch.as_tensor(factors, dtype=torch.float32)
    first = factors if hidden_weight is None else torch.as_tensor(hidden_weight, dtype=torch.float32)
    if latent.ndim != 3 or latent.shape[0] != first.shape[0]:
        raise ValueError(f"expected a ({first.shape[0]}, h, w) latent, got shape {tuple(latent.shape)}")
    features = latent.detach().float().cpu().permute(1, 2, 0)  # (C, h, w) -> (h, w, C)
    if hidden_weight is not None:
        hidden = features @ first + torch.as_tensor(hidden_bias, dtype=torch.float32)  # (h, w, C) -> (h, w, H)
        features = F.silu(hidden)
    rgb = features @ factors.float()  # (h, w, C or H) -> (h, w, 3)
    if bias is not None:
        rgb = rgb + torch.as_tensor(bias, dtype=torch.float32)
    return unit_range_to_uint8(rgb)


def fit_latent_rgb_factors(latents: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares fit of the linear preview: min_{W, b} || latent^T W + b - avgpool(image) ||^2.

    latents: (N, C, h, w) scaled latents; images: (N, 3, H, W) their decodes in [-1, 1]. Each image is
    average-pooled to the latent grid (h, w), so every latent pixel is matched to the mean colour of
    the patch it decodes to. Returns factors (C, 3) and bias (3,).
    """
    n, channels, h, w = latents.shape
    targets = F.adaptive_avg_pool2d(images.double(), (h, w))  # (N, 3, H, W) -> (N, 3, h, w)
    inputs = latents.double().permute(0, 2, 3, 1).reshape(-1, channels)  # (N*h*w, C)
    targets = targets.permute(0, 2, 3, 1).reshape(-1, 3)  # (N*h*w, 3)
    design = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=inputs.dtype)], dim=1)  # (N*h*w, C+1)
    solution = torch.linalg.lstsq(design, targets).solution  # (C+1, 3)
    return solution[:channels].float(), solution[channels].float()


PREVIEW_HIDDEN = 32  # hidden width of the fitted per-pixel preview MLP: 259 numbers for a 4-channel latent


def fit_latent_rgb_mlp(latents: torch.Tensor, images: torch.Tensor, hidden: int = PREVIEW_HIDDEN,
                       iterations: int = 2000, seed: int = 0) -> dict[str, torch.Tensor]:
    """Fit the per-pixel MLP preview rgb = SiLU(latentᵀ W + b_h)ᵀ factors + bias to avgpool(image).

    The same targets as `fit_latent_rgb_factors` (each latent pixel matched to the mean colour of the
    patch it decodes to), minimised in mean squared error with Adam (full batch, seeded: the same fit
    every time). `benchmarks/preview_fit.py` scores it against the linear fit on held-out samples.
    Returns the keyword arguments of `latent_to_rgb_fast`: factors (H, 3), bias (3,), hidden_weight (C, H),
    hidden_bias (H,).
    """
    _, channels, h, w = latents.shape
    inputs = latents.float().permute(0, 2, 3, 1).reshape(-1, channels)  # (N*h*w, C)
    targets = F.adaptive_avg_pool2d(images.float(), (h, w)).permute(0, 2, 3, 1).reshape(-1, 3)  # (N*h*w, 3)
    generator = torch.Generator().manual_seed(seed)
    hidden_weight = (torch.randn(channels, hidden, generator=generator) * channels**-0.5).requires_grad_()
    hidden_bias = torch.zeros(hidden, requires_grad=True)
    factors = (torch.randn(hidden, 3, generator=generator) * 0.01).requires_grad_()
    bias = targets.mean(0).requires_grad_()
    parameters = [hidden_weight, hidden_bias, factors, bias]
    optimizer = torch.optim.Adam(parameters, lr=1e-2)
    with torch.enable_grad():
        for _ in range(iterations):
            prediction = F.silu(inputs @ hidden_weight + hidden_bias) @ factors + bias
            loss = F.mse_loss(prediction, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return {"factors": factors.detach(), "bias": bias.detach(), "hidden_weight": hidden_weight.detach(),
            "hidden_bias": hidden_bias.detach()}


def visualize_noise(eps: torch.Tensor) -> np.ndarray:
    """Show a noise tensor (C >= 3, h, w), e.g. eps_pred or eps_cond - eps_uncond, as uint8 (h, w, 3).

    Each channel is standardized on its own (zero mean, unit std) so structure is visible whatever the
    scale, then the first 3 channels are shown as R, G, B over +-NOISE_DISPLAY_SIGMAS (grey = 0).
    The 4th SD channel is dropped: any fixed 4->3 projection would mix channels and hide which is which.
    """
    if eps.ndim != 3 or eps.shape[0] < 3:
        raise ValueError(f"expected a (C>=3, h, w) noise tensor, got shape {tuple(eps.shape)}")
    channels = eps.detach().float().cpu()[:3]
    mean = channels.mean(dim=(1, 2), keepdim=True)
    std = channels.std(dim=(1, 2), keepdim=True).clamp_min(1e-8)
    standardized = (channels - mean) / std  # (3, h, w), unit variance per channel
    return unit_range_to_uint8((standardized / NOISE_DISPLAY_SIGMAS).permute(1, 2, 0))


def noisy_picture(x0_rgb: torch.Tensor, eps: torch.Tensor, alpha_cumprod: float) -> np.ndarray:
    """Draw a state x_t = √ᾱ x̂0 + √(1 − ᾱ) ε̂ (DDPM eq. 4) as a picture the eye can read, uint8 (H, W, 3).

    `x0_rgb`: the predicted clean image (3, H, W) in [-1, 1] (a VAE decode or the latent preview);
    `eps`: the predicted noise (C >= 3, h, w), its first three channels drawn as R, G, B (as
    `visualize_noise` does) at the image size. The mixture is divided by √ᾱ + NOISE_DISPLAY_SIGMAS · √(1 − ᾱ),
    so pure noise (ᾱ = 0) shows at ±NOISE_DISPLAY_SIGMAS standard deviations, the clean image (ᾱ = 1) as
    itself, and in between the picture emerges from noise without clipping more than the noise's own far
    tail. The
    latent x_t itself cannot be shown this way: a linear preview multiplies its unit noise by the
    preview's steep factors and clips.
    """
    if x0_rgb.ndim != 3 or x0_rgb.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) picture tensor, got shape {tuple(x0_rgb.shape)}")
    signal = x0_rgb.detach().float().cpu()
    noise = F.interpolate(eps.detach().float().cpu()[None, :3], size=signal.shape[-2:], mode="nearest")[0]
    signal_scale, noise_scale = alpha_cumprod**0.5, (1.0 - alpha_cumprod) ** 0.5
    mixture = (signal_scale * signal + noise_scale * noise) / (signal_scale + NOISE_DISPLAY_SIGMAS * noise_scale)
    return unit_range_to_uint8(mixture.permute(1, 2, 0))
