"""The embedded flow model: SD3's architecture at toy size, on the same world and latents as the U-Net model.

`flow_model_config(world_config)` turns a world's U-Net model configuration (`World.model_config`, e.g.
`shapes_world_2`) into an SD3-family one (`SD3Config`) that shares with it everything but the denoiser:

- the VAE (its f8 layout: 16×16×4 latents at 128 px), trained once and reused frozen (`--init-from` a U-Net model
  folder), so both models draw in one latent space and compare fairly;
- the text encoder: its small CLIP, alone (no bigG, no T5: the world's captions need no 4096-wide T5), its weights
  taken from the U-Net model and trained on with the MMDiT (they start knowing the world's words; the pooled
  vector, which the U-Net never used, must learn to summarise the caption). Its pooled vector is the normed
  end-token feature with no projection (the MMDiT's `y_embedder` MLP is the projection), its context the final
  hidden states, cut to `CONTEXT_TOKENS` rows (the longest caption the caption-noise model writes is 35 tokens;
  CLIP is causal, so the first rows do not depend on the rest) and mapped to the MMDiT's width by its
  `context_embedder` (`context_dim` = the encoder's width: no zero-padding to 4096);
- the image size, the default steps and guidance.

The denoiser is an MMDiT (Esser et al. 2024, §4) of `DEPTH` joint blocks of `HEADS` × `HEAD_DIM` channels over
2×2 patches (64 image tokens), trained with rectified flow (`diffx.sampling.flow_training`) and sampled by Euler
steps, unshifted (shift 1: SD3's shift 3 is for 4096 tokens; at 64 tokens the logit-normal times alone centre the
training on the middle of the path).

Sizing, measured on this project's CPU (1 thread, batch 64, a 40-token context; one rectified-flow AdamW step):
depth 4 × 128 wide 0.51 s (24-token context; 0.83 s with all 77 rows), depth 6 × 128 0.96 s (3.5 M parameters),
depth 8 × 128 1.25 s, depth 4 × 192 1.15 s (5.1 M), depth 6 × 192 1.78 s (7.7 M), depth 4 × 256 1.58 s (24 tokens,
9.0 M). Depth 6 × 128 keeps the model folder within 25 MB in fp16 (22.4 MB shipped); on 2 threads it trains at
0.57 s a step (the shipped run: 8,000 steps in 76 min).
"""

from __future__ import annotations

from dataclasses import replace

from diffx.models.any_model import is_sd3_config
from diffx.models.configs import ModelConfig
from diffx.models.mmdit import MMDiTConfig
from diffx.models.sd3 import SD3Config, StableDiffusion3, flow_scheduler
from diffx.models.stable_diffusion import StableDiffusion

DEPTH, HEADS, HEAD_DIM = 6, 4, 32  # 128 wide
PATCH = 2
CONTEXT_TOKENS = 40
FLOW_NAMES = {"shapes-world-2": "shapes-world-flow"}  # a world's U-Net model -> its flow model


def flow_model_config(world_config: ModelConfig, depth: int = DEPTH, heads: int = HEADS,
                      head_dim: int = HEAD_DIM) -> SD3Config:
    """The SD3-family model of the world whose U-Net model `world_config` describes (its VAE, text encoder, size)."""
    encoder = replace(world_config.text_encoder, projection_dim=0)
    latent = world_config.image_size // world_config.vae.downsample_factor  # 16 at 128 px
    name = FLOW_NAMES.get(world_config.name, f"{world_config.name}-flow")
    mmdit = MMDiTConfig(name=f"{name}-mmdit", depth=depth, heads=heads, head_dim=head_dim,
                        patch_size=PATCH, in_channels=world_config.vae.embed_dim,
                        out_channels=world_config.vae.embed_dim, context_dim=encoder.hidden_size,
                        pooled_dim=encoder.hidden_size, pos_embed_max_size=2 * latent // PATCH, sample_size=latent)
    return SD3Config(name=name, mmdit=mmdit, clip_l=encoder, clip_g=None,
                     t5=None, vae=world_config.vae, scheduler=flow_scheduler(1.0), image_size=world_config.image_size,
                     default_sampler="euler", default_steps=world_config.default_steps,
                     default_guidance=world_config.default_guidance, t5_max_length=0, clip_length=CONTEXT_TOKENS)


def initialise_flow_model(model: StableDiffusion3, source: StableDiffusion | StableDiffusion3) -> None:
    """Copy a trained model's weights into `model`: all of them from a flow model of the same shape, or from a U-Net
    model its VAE and its text encoder (the MMDiT keeps its fresh initialisation). fp16 -> fp32 by the copy."""
    if isinstance(source, StableDiffusion3):
        for name, module in model.modules().items():
            module.load_state_dict(getattr(source, name).state_dict())
        return
    model.vae.load_state_dict(source.vae.state_dict())
    model.text_encoder.clip_l.transformer.load_state_dict(source.text_encoder.state_dict())


def inherited_fields(source: dict, model: dict) -> tuple[dict, dict]:
    """The fields of a source model's config (`--init-from`, as `config_to_dict` writes it) and the same ones of the
    model training builds (`model`), which must agree for the source's weights to be copied in: every part
    (text encoder, denoiser, VAE) and the image size between two models of one family; from a U-Net model to a flow
    model the text encoder (the flow model's `clip_l`), the VAE and the image size."""
    parts = ("vae", "image_size")
    if not is_sd3_config(model):
        parts += ("text_encoder", "unet")
    elif is_sd3_config(source):
        parts += ("clip_l", "mmdit")
    else:
        return ({"text_encoder": source.get("text_encoder"), **{key: source.get(key) for key in parts}},
                {"text_encoder": model["clip_l"], **{key: model[key] for key in parts}})
    return {key: source.get(key) for key in parts}, {key: model.get(key) for key in parts}
