"""Latent previews, the least-squares preview fit, decoded-image and noise conversion, upscaling."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffx.render.image import upscale
from diffx.render.latents import (
    SD15_LATENT_RGB_FACTORS,
    fit_latent_rgb_factors,
    latent_to_rgb_fast,
    visualize_noise,
)


def _expected_uint8(rgb):
    return tuple(int(round((c + 1) * 127.5)) for c in rgb)


def test_fast_preview_of_single_channels():
    latent = torch.zeros(4, 2, 3)
    latent[0, 0, 0] = 1.0  # channel 1 alone: its factor row (0.298, 0.207, 0.208), a light warm grey
    latent[3, 1, 2] = -2.0  # channel 4 negative: -2 * (-0.184, -0.271, -0.473), strongly blue
    preview = latent_to_rgb_fast(latent)
    assert preview.shape == (2, 3, 3) and preview.dtype == np.uint8
    assert tuple(preview[0, 0]) == _expected_uint8((0.298, 0.207, 0.208))
    assert tuple(preview[1, 2]) == _expected_uint8((0.368, 0.542, 0.946))
    assert preview[1, 2, 2] > preview[1, 2, 1] > preview[1, 2, 0]
    assert tuple(preview[0, 1]) == (128, 128, 128)  # a zero latent is mid-grey


def test_fast_preview_clips_and_takes_factors_and_bias():
    assert tuple(latent_to_rgb_fast(torch.full((4, 1, 1), 100.0))[0, 0]) == (255, 255, 255)
    factors = torch.zeros(4, 3)
    factors[1] = torch.tensor([1.0, 0.0, -1.0])
    latent = torch.zeros(4, 1, 1)
    latent[1] = 0.5
    preview = latent_to_rgb_fast(latent, factors=factors, bias=torch.tensor([0.0, -1.0, 0.0]))
    assert tuple(preview[0, 0]) == _expected_uint8((0.5, -1.0, -0.5))


def test_fast_preview_rejects_wrong_channels():
    with pytest.raises(ValueError, match="latent"):
        latent_to_rgb_fast(torch.zeros(3, 4, 4))


def test_fit_recovers_a_known_linear_decoder():
    torch.manual_seed(0)
    factors = torch.randn(4, 3) * 0.3
    bias = torch.tensor([0.1, -0.2, 0.05])
    latents = torch.randn(3, 4, 8, 8)
    # A fake decoder that paints each latent pixel's colour over its 8x8 patch.
    colours = torch.einsum("nchw,cr->nrhw", latents, factors) + bias[:, None, None]
    images = F.interpolate(colours, scale_factor=8, mode="nearest")  # (3, 3, 64, 64)
    fitted_factors, fitted_bias = fit_latent_rgb_factors(latents, images)
    assert fitted_factors.shape == (4, 3) and fitted_bias.shape == (3,)
    torch.testing.assert_close(fitted_factors, factors, atol=1e-5, rtol=0)
    torch.testing.assert_close(fitted_bias, bias, atol=1e-5, rtol=0)


def test_fit_averages_over_patches_with_noise():
    torch.manual_seed(1)
    latents = torch.randn(4, 4, 8, 8)
    colours = torch.einsum("nchw,cr->nrhw", latents, SD15_LATENT_RGB_FACTORS)
    images = F.interpolate(colours, scale_factor=8, mode="nearest") + 0.2 * torch.randn(4, 3, 64, 64)
    fitted_factors, _ = fit_latent_rgb_factors(latents, images)
    torch.testing.assert_close(fitted_factors, SD15_LATENT_RGB_FACTORS, atol=0.02, rtol=0)


def test_visualize_noise_standardizes_each_channel_and_drops_the_fourth():
    torch.manual_seed(0)
    eps = torch.randn(4, 16, 16)
    picture = visualize_noise(eps)
    assert picture.shape == (16, 16, 3) and picture.dtype == np.uint8
    assert abs(picture.astype(float).mean() - 127.5) < 5
    rescaled = eps * torch.tensor([100.0, 0.01, 3.0, 1.0])[:, None, None] + 7.0
    rescaled[3] = torch.randn(16, 16) * 50
    assert np.abs(visualize_noise(rescaled).astype(int) - picture.astype(int)).max() <= 1


def test_upscale_nearest_and_bilinear():
    small = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)  # (1, 2, 3): black, white
    nearest = upscale(small, (4, 2))
    assert nearest.shape == (2, 4, 3)
    assert nearest[:, :2].max() == 0 and nearest[:, 2:].min() == 255
    smooth = upscale(small, (8, 1), resample="bilinear")
    assert 0 < smooth[0, 3, 0] < 255
