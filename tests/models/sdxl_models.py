"""SDXL-shaped models for tests: a tiny one with every SDXL feature, and SDXL's real widths at reduced depth."""

from __future__ import annotations

from dataclasses import replace

from diffx.models.configs import ModelConfig, TextEncoderConfig, UNetConfig, VAEConfig, sdxl_base
from diffx.models.sdxl import SIZE_EMBED_DIM


def tiny_sdxl() -> ModelConfig:
    """Every SDXL feature at toy size, with SDXL's conventions for what weights do not store (64-wide heads
    everywhere, 32 groups, 0.13025, 128-latent default size, Euler, guidance 5), so that architecture inference
    gives back exactly this config: CLIP 64 wide and OpenCLIP 128 wide (2 and 3 blocks, both read at the
    penultimate one without the final norm; bigG's pooled output projected to 64), a 3-level U-Net (64/128/128)
    with no attention at the top level, transformer depths 1 and 2 (2 in the middle), Linear projections,
    context 64 + 128 = 192 and y = 64 + 6 x 256; an f2 VAE. The real CLIP vocabulary."""
    return ModelConfig(
        name="sdxl-inferred",
        text_encoder=TextEncoderConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=1, skipped_layers=1, final_norm=False),
        text_encoder_2=TextEncoderConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                                         num_attention_heads=2, hidden_act="gelu", layout="open_clip",
                                         skipped_layers=1, pad_token="!", final_norm=False, projection_dim=64),
        unet=UNetConfig(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=1, attention_levels=(1, 2),
                        transformer_depth=(0, 1, 2), context_dim=192, num_head_channels=64,
                        use_linear_in_transformer=True, adm_in_channels=64 + 6 * SIZE_EMBED_DIM),
        vae=VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, scaling_factor=0.13025, force_upcast=True),
        image_size=256, default_sampler="euler", default_guidance=5.0, force_zeros_for_empty_prompt=True)


def sdxl_widths(blocks: int = 2) -> ModelConfig:
    """SDXL base's widths (CLIP-L 768, bigG 1280/20 heads/projection 1280, U-Net 320/640/1280, 64-wide heads,
    context 2048, y 2816, SD's VAE) with `blocks` blocks per text encoder and one transformer block per
    transformer and one ResBlock per level (SDXL: 12 and 32 text blocks; depths 2 and 10, 2 ResBlocks): the full
    U-Net is 2.6 G parameters, 10 GB per fp32 copy, too much to build twice on a CI machine."""
    config = sdxl_base()
    config.text_encoder = replace(config.text_encoder, num_hidden_layers=blocks)
    config.text_encoder_2 = replace(config.text_encoder_2, num_hidden_layers=blocks)
    config.unet = replace(config.unet, transformer_depth=(0, 1, 1), num_res_blocks=1)
    return config
