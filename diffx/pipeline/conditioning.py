"""What the U-Net is told besides x_t and t, for both branches of classifier-free guidance.

- SD1.x / SD2.x: the text context c (B, 77, width) of the prompt, and of the negative prompt for the
  unconditional branch;
- SDXL (Podell et al. 2023): the 2048-wide context of its two text encoders, and the vector y of bigG's pooled
  embedding and the size/crop micro-conditioning (`diffx.models.sdxl.micro_conditioning`). Like diffusers'
  `StableDiffusionXLPipeline` called without `original_size`, `crops_coords_top_left` or `target_size`, the
  original and target sizes are the output's (height, width) and the crop (0, 0), for both branches. With
  `force_zeros_for_empty_prompt` (SDXL base's `model_index.json`, and the pipeline's default) a run without a
  negative prompt gives the unconditional branch zeros for both its context and its pooled embedding; a negative
  prompt given as "" is encoded, as diffusers 0.42's `encode_prompt` does (`zero_out_negative_prompt =
  negative_prompt is None and self.config.force_zeros_for_empty_prompt`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from diffx.errors import elide
from diffx.models.sdxl import micro_conditioning
from diffx.models.tokenizer import TokenizedPrompt
from diffx.pipeline.prompt_weights import WeightedPrompt, apply_weights, positions_weights, weighted_tokens

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion


class PromptTruncatedWarning(UserWarning):
    """The prompt had more than 77 tokens; the message says which words were cut."""


@dataclass(frozen=True)
class Conditioning:
    """The U-Net's conditioning per CFG branch; `*_uncond` is None without guidance (w = 1), `added_*` without
    SDXL's vector y (B, 2816)."""

    context_cond: Tensor
    context_uncond: Tensor | None
    added_cond: Tensor | None = None
    added_uncond: Tensor | None = None


def _encode(model: StableDiffusion, prompts: Sequence[TokenizedPrompt], pooled: bool) -> tuple[Tensor, Tensor | None]:
    ids = torch.tensor([p.ids for p in prompts], device=model.device)
    # SD3's three encoders: the CLIP part of their context (`clip_context`), what word weights scale.
    encoder = getattr(model.text_encoder, "clip_context", model.text_encoder)
    context, pooled_out = model.text_encoder.encode(ids) if pooled else (encoder(ids), None)
    weights = positions_weights(list(prompts))
    return (context if weights is None else apply_weights(context, weights)), pooled_out


@torch.no_grad()
def encode_text(model: StableDiffusion, prompts: Sequence[TokenizedPrompt]) -> Tensor:
    """Context for cross-attention: the text encoder's hidden states, (B, 77, width), with the word weights of
    `WeightedPrompt`s applied (each token's vector scaled, then the mean restored: `apply_weights`)."""
    return _encode(model, prompts, pooled=False)[0]


@torch.no_grad()
def prompt_conditioning(model: StableDiffusion, tokens: Sequence[TokenizedPrompt], negative_tokens: TokenizedPrompt,
                        guided: bool, size: tuple[int, int], no_negative: bool) -> Conditioning:
    """Both branches' conditioning for a batch of B prompts sharing one negative prompt; `guided`: w != 1 (the
    unconditional branch runs), `size`: the output's (height, width), `no_negative`: no negative prompt was given
    (None, not ""; SDXL may then use zeros, see the module docstring). The negative prompt is encoded once and
    repeated for the B images."""
    batch = len(tokens)
    if model.config.text_encoder_2 is None:
        uncond = encode_text(model, [negative_tokens]).expand(batch, -1, -1) if guided else None
        return Conditioning(encode_text(model, tokens), uncond)
    context, pooled = _encode(model, tokens, pooled=True)  # (B, 77, 2048), (B, 1280)
    if not guided:
        context_uncond, pooled_uncond = None, None
    elif no_negative and model.config.force_zeros_for_empty_prompt:
        context_uncond, pooled_uncond = torch.zeros_like(context), torch.zeros_like(pooled)
    else:
        context_uncond, pooled_uncond = (part.expand(batch, *part.shape[1:])
                                         for part in _encode(model, [negative_tokens], pooled=True))

    def added(pooled_embedding: Tensor | None) -> Tensor | None:
        return None if pooled_embedding is None else micro_conditioning(pooled_embedding, size, (0, 0), size)

    return Conditioning(context, context_uncond, added(pooled), added(pooled_uncond))


def tokenize(model: StableDiffusion, prompt: str, what: str = "prompt") -> WeightedPrompt:
    """Tokenize the prompt without its word weights (`diffx.pipeline.prompt_weights`: "(red:1.3)", "[blue]"), each
    position keeping its weight; warn (not fail) when the 77-token window cuts words off."""
    tokens = weighted_tokens(model.tokenizer, prompt, what)
    if tokens.truncated_text:
        warnings.warn(PromptTruncatedWarning(
            f"prompt is longer than 77 tokens; cut off: {elide(tokens.truncated_text)}"), stacklevel=3)
    return tokens
