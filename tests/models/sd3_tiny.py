"""A tiny SD3-shaped model for tests of what is built on the family (tracing, views, commands): every part of SD3
(CLIP-L and bigG read at their penultimate blocks with pooled projections, T5, the MMDiT with a pre-only last block,
a 16-channel VAE with a shift) at a few dozen channels, so a traced run takes a second. Parity with diffusers at
real widths is tests/pipeline/test_sd3_pipeline.py's."""

from __future__ import annotations

from pathlib import Path

import torch

from diffx.models.configs import TextEncoderConfig, VAEConfig, sd3_vae
from diffx.models.mmdit import MMDiTConfig
from diffx.models.sd3 import SD3Config, StableDiffusion3, build_sd3
from diffx.models.t5 import T5Config
from diffx.models.t5_tokenizer import T5Tokenizer

SIZE = 32  # pixels: a 16 × 16 latent (f2 VAE), 8 × 8 image tokens (patch 2)


def tiny_sd3_config(t5: bool = True) -> SD3Config:
    encoder = {"intermediate_size": 64, "num_hidden_layers": 2, "skipped_layers": 1, "final_norm": False}
    preview = sd3_vae()
    return SD3Config(
        name="sd3-tiny",
        mmdit=MMDiTConfig(name="mmdit-tiny", depth=2, heads=2, head_dim=16, context_dim=64, pooled_dim=80,
                          pos_embed_max_size=16, sample_size=16),
        clip_l=TextEncoderConfig(hidden_size=32, num_attention_heads=2, projection_dim=32, **encoder),
        clip_g=TextEncoderConfig(hidden_size=48, num_attention_heads=2, projection_dim=48, hidden_act="gelu",
                                 pad_token="!", **encoder),
        t5=T5Config(vocab_size=512, d_model=64, d_kv=16, d_ff=64, num_layers=1, num_heads=4) if t5 else None,
        vae=VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=16, embed_dim=16, norm_num_groups=8,
                      scaling_factor=preview.scaling_factor, shift_factor=preview.shift_factor, use_quant_conv=False,
                      latent_rgb_factors=preview.latent_rgb_factors, latent_rgb_bias=preview.latent_rgb_bias),
        image_size=SIZE, default_steps=4)


def tiny_sd3(t5_tokenizer_file: Path | None = None, seed: int = 0) -> StableDiffusion3:
    """A random tiny SD3 (with T5 when a tokenizer.json is given); every adaLN and output weight random too (zeros
    there would make the network predict v = 0)."""
    torch.manual_seed(seed)
    tokenizer = T5Tokenizer.from_file(t5_tokenizer_file) if t5_tokenizer_file else None
    model = build_sd3(tiny_sd3_config(t5=tokenizer is not None), t5_tokenizer=tokenizer)
    with torch.no_grad():
        for parameter in model.transformer.parameters():
            if parameter.abs().max() == 0:
                parameter.normal_(0, 0.05)
    return model.eval()
