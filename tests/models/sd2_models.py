"""SD2-shaped models for tests: a tiny one with every SD2 feature, and random weights that make every tensor count."""

from __future__ import annotations

from dataclasses import replace

import torch

from diffx.models.configs import ModelConfig, SchedulerConfig, TextEncoderConfig, UNetConfig, VAEConfig


def small_sd2() -> ModelConfig:
    """An SD2-family size no preset has, with SD2's conventions for what weights do not store (64-wide heads,
    32 groups, the last text block skipped, "!" padding, 768-v's v-prediction, 96-latent default size and
    fp32 attention): architecture inference gives back exactly this config. The real CLIP vocabulary."""
    return ModelConfig(
        name="sd2-inferred",
        text_encoder=TextEncoderConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                                       num_attention_heads=2, hidden_act="gelu", layout="open_clip",
                                       skipped_layers=1, pad_token="!"),
        unet=UNetConfig(model_channels=64, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(0, 1),
                        num_head_channels=64, use_linear_in_transformer=True, upcast_attention=True,
                        context_dim=128, norm_num_groups=32),
        vae=VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, norm_num_groups=32),
        scheduler=SchedulerConfig(prediction_type="v_prediction"),
        image_size=192)


def tiny_sd2() -> ModelConfig:
    """small_sd2 narrower, with 16-wide U-Net heads: 2 and 4 heads at 32 and 64 channels."""
    config = small_sd2()
    config.name = "tiny-sd2"
    config.text_encoder = replace(config.text_encoder, hidden_size=64, intermediate_size=128)
    config.unet = replace(config.unet, model_channels=32, num_head_channels=16, context_dim=64, norm_num_groups=8)
    config.vae = replace(config.vae, norm_num_groups=8)
    return config


def randomise_norms(module: torch.nn.Module, seed: int = 0) -> None:
    """LayerNorm/GroupNorm scales and shifts near 1 and 0 but random, so a swapped norm would show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for child in module.modules():
            if isinstance(child, torch.nn.LayerNorm | torch.nn.GroupNorm):
                child.weight.copy_(1 + 0.1 * torch.randn(child.weight.shape, generator=generator))
                child.bias.copy_(0.1 * torch.randn(child.bias.shape, generator=generator))
