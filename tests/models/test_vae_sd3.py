"""SD3's 16-channel VAE against diffusers' AutoencoderKL with the same random weights, and its latent codec."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL as DiffusersVAE

from diffx.models.configs import sd3_vae
from diffx.models.vae import AutoencoderKL
from diffx.weights.diffusers_layout import vae_from_diffusers
from diffx.weights.load import ORIGINAL_PREFIXES


def sd3_pair() -> tuple[AutoencoderKL, DiffusersVAE]:
    """diffusers' SD3 VAE (its `vae/config.json` numbers, random weights) and diffx's holding the same weights."""
    torch.manual_seed(0)
    theirs = DiffusersVAE(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                          up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                          layers_per_block=2, latent_channels=16, norm_num_groups=32, scaling_factor=1.5305,
                          shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False).eval()
    prefix = ORIGINAL_PREFIXES["vae"]
    state = {key.removeprefix(prefix): value
             for key, value in vae_from_diffusers(theirs.state_dict(), sd3_vae()).items()}
    ours = AutoencoderKL(sd3_vae()).eval()
    ours.load_state_dict(state, strict=True)
    return ours, theirs


def test_sd3_vae_matches_diffusers() -> None:
    """Real SD3 widths and depth (128-256-512-512, 16 latent channels) on a 64-px picture."""
    ours, theirs = sd3_pair()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        mean_ours, mean_theirs = ours.encode(image).mean, theirs.encode(image).latent_dist.mean
        decoded_ours, decoded_theirs = ours.decode(z), theirs.decode(z).sample
    assert mean_ours.shape == (1, 16, 8, 8) and mean_theirs.abs().max() > 1e-2
    # fp32 with another summation order: within 1e-5 on an AVX-512 CPU, 1.4e-5 on an AVX2-only EPYC's kernels
    assert (mean_ours - mean_theirs).abs().max() <= 3e-5
    assert (decoded_ours - decoded_theirs).abs().max() <= 3e-5
    assert not any(name.startswith(("quant_conv", "post_quant_conv")) for name in ours.state_dict())
