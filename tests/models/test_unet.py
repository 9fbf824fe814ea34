"""The U-Net against diffusers' UNet2DConditionModel holding the same (random) weights.

The weights travel through diffusers' own LDM->diffusers key converter, so these tests also prove that
our module paths are the original checkpoint keys.
"""

import pytest
import torch
from diffusers.models.embeddings import get_timestep_embedding

from diffx.errors import InvalidArgumentError
from diffx.models.configs import ModelConfig, sd15, sd21_v, shapes_world, tiny
from diffx.models.unet import UNet, timestep_embedding
from tests.models.ldm_configs import reference_unet


def tiny_9_channels() -> ModelConfig:
    config = tiny()
    config.unet.in_channels = 9  # the inpainting U-Net's input: latent, mask, masked-image latent
    return config


def max_abs_diff_to_diffusers(model_config: ModelConfig, latent_size: int, seed: int = 0) -> float:
    """Build both U-Nets with the same random weights, run one batch of 2, return max |ours - theirs|."""
    torch.manual_seed(seed)
    ours = UNet(model_config.unet).eval()
    theirs = reference_unet(model_config, ours.state_dict())
    cfg = model_config.unet
    x = torch.randn(2, cfg.in_channels, latent_size, latent_size)
    timesteps = torch.tensor([999, 10])
    context = torch.randn(2, 77, cfg.context_dim)
    with torch.inference_mode():
        eps_ours = ours(x, timesteps, context)
        eps_theirs = theirs(x, timesteps, encoder_hidden_states=context).sample
    assert eps_ours.shape == (2, cfg.out_channels, latent_size, latent_size)
    assert eps_theirs.abs().max() > 1e-2  # a vacuous comparison (all zeros) would prove nothing
    return (eps_ours - eps_theirs).abs().max().item()


@pytest.mark.parametrize("make_config", [tiny, tiny_9_channels, shapes_world], ids=lambda f: f.__name__)
def test_small_unets_match_diffusers(make_config):
    assert max_abs_diff_to_diffusers(make_config(), latent_size=8) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("make_config", [sd15, sd21_v], ids=lambda f: f.__name__)
def test_full_size_unet_matches_diffusers(make_config):
    """SD1.5's and SD2.1-v's whole U-Nets (SD2.1: 5/10/20/20 heads, Linear proj, context 1024), 8x8 latent."""
    diff = max_abs_diff_to_diffusers(make_config(), latent_size=8)
    print(f"{make_config.__name__} U-Net max abs diff vs diffusers: {diff:.3g}")
    assert diff <= 1e-4


def test_timestep_embedding_matches_ldm_layout():
    timesteps = torch.tensor([0, 1, 500, 999])
    expected = get_timestep_embedding(timesteps, 320, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(timestep_embedding(timesteps, 320), expected)
    cos_then_sin_of_zero = torch.tensor([1.0] * 4 + [0.0] * 4)
    assert torch.equal(timestep_embedding(timesteps, 8)[0], cos_then_sin_of_zero)


def test_scalar_timestep_is_shared_by_the_batch_and_float_equals_int():
    torch.manual_seed(0)
    unet = UNet(tiny().unet).eval()
    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    with torch.inference_mode():
        per_sample = unet(x, torch.tensor([250, 250]), context)
        torch.testing.assert_close(unet(x, torch.tensor(250), context), per_sample)
        torch.testing.assert_close(unet(x, torch.tensor([250.0, 250.0]), context), per_sample)


def test_bf16_stays_close_to_fp32():
    torch.manual_seed(0)
    unet = UNet(tiny().unet).eval()
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([999, 10]), torch.randn(2, 77, 32)
    with torch.inference_mode():
        eps_fp32 = unet(x, t, context)
        eps_bf16 = unet.to(torch.bfloat16)(x.bfloat16(), t, context.bfloat16())
    assert eps_bf16.dtype == torch.bfloat16
    relative_error = (eps_bf16.float() - eps_fp32).norm() / eps_fp32.norm()
    assert relative_error < 3e-2


def test_attention_layers_are_named_with_their_kind():
    unet = UNet(tiny().unet)
    layers = {name: module.kind for name, module in unet.named_modules() if hasattr(module, "kind")}
    assert layers["input_blocks.1.1.transformer_blocks.0.attn1"] == "self"
    assert layers["middle_block.1.transformer_blocks.0.attn2"] == "cross"
    assert all(unet.get_submodule(name).layer_name == name for name in layers)
    # tiny: 2 encoder + 1 middle + 4 decoder transformers, each with one self- and one cross-attention
    assert sorted(layers.values()) == ["cross"] * 7 + ["self"] * 7


def test_latent_size_must_divide_by_the_downsampling():
    unet = UNet(tiny().unet)
    with pytest.raises(InvalidArgumentError, match="not divisible by 2"):
        unet(torch.randn(1, 4, 9, 8), torch.tensor([1]), torch.randn(1, 77, 32))
