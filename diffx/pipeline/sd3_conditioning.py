"""What SD3's MMDiT is told besides x_s and s, for both branches of classifier-free guidance.

As diffusers' `StableDiffusion3Pipeline.encode_prompt` (its `prompt_2`, `prompt_3` left to default to the prompt):

- the context (B, 77 + 256, 4096): CLIP-L's and bigG's penultimate hidden states side by side, zero-padded from
  2048 to 4096 wide, then T5's 256 token vectors (256 zero rows when the model has no T5);
- the pooled vector (B, 2048): both CLIPs' projected end-token features.

The negative prompt of a run without one is "" and is encoded (diffusers' `negative_prompt or ""`): SD3 has no
zeros-for-empty-prompt rule. Word weights ("(red:1.3)") scale the CLIP part's token vectors
(`prompt_weights.apply_weights` over its 77 rows); T5 reads the clean prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from diffx.models.tokenizer import TokenizedPrompt
from diffx.pipeline.conditioning import Conditioning
from diffx.pipeline.prompt_weights import apply_weights, positions_weights

if TYPE_CHECKING:
    from diffx.models.sd3 import StableDiffusion3


def _encode(model: StableDiffusion3, prompts: Sequence[TokenizedPrompt]) -> tuple[Tensor, Tensor]:
    """(context (B, 77 + L, 4096), pooled (B, 2048)) of a batch of tokenized prompts."""
    clip_ids = torch.tensor([p.ids for p in prompts], device=model.device)  # (B, 77)
    t5_ids = None
    if model.t5_tokenizer is not None and model.config.t5 is not None:
        t5_ids = model.t5_tokenizer([p.prompt for p in prompts]).to(model.device)  # (B, 256)
    context, pooled = model.text_encoder.encode(clip_ids, t5_ids)
    weights = positions_weights(list(prompts))
    if weights is not None:  # (B, 77) weights for the CLIP rows; the T5 rows are left as they are
        rows, width = model.config.clip_length, model.config.clip_width  # 77, 2048: the rest is padding
        clip = apply_weights(context[:, :rows, :width], weights[:, :rows])
        context = torch.cat([torch.cat([clip, context[:, :rows, width:]], dim=-1), context[:, rows:]], dim=1)
    return context, pooled


@torch.no_grad()
def sd3_conditioning(model: StableDiffusion3, tokens: Sequence[TokenizedPrompt], negative_tokens: TokenizedPrompt,
                     guided: bool, size: tuple[int, int], no_negative: bool) -> Conditioning:
    """Both branches' conditioning for B prompts sharing one negative prompt (the family interface of
    `pipeline.conditioning.prompt_conditioning`; `size` and `no_negative` change nothing for SD3)."""
    batch = len(tokens)
    context, pooled = _encode(model, tokens)
    if not guided:
        return Conditioning(context, None, pooled, None)
    context_uncond, pooled_uncond = (part.expand(batch, *part.shape[1:]) for part in _encode(model, [negative_tokens]))
    return Conditioning(context, context_uncond, pooled, pooled_uncond)
