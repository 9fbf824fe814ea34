"""Where a word looks, with and without a LoRA: the same prompt and seed traced at two LoRA scales (0 = the base
model exactly, and the file's), the word's cross-attention map over each picture (`diffx lora FILE --prompt …
--attention out.png`; `diffx finetune` draws its token's the same way).

The map is DAAM's aggregate (`trace.attention.daam_aggregate`, recorded as the trace's "attention"): every
cross-attention layer's map of the word's tokens upsampled to the latent grid and summed over heads and layers,
averaged here over the steps and over the word's tokens (a trigger word such as "<zig>" is several BPE pieces
unless textual inversion taught it as one). Its mean is the share of the picture's attention the word draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from diffx.errors import InvalidArgumentError
from diffx.models.any_model import AnyModel
from diffx.models.tokenizer import ClipTokenizer
from diffx.pipeline.settings import GenerationSettings
from diffx.render.colormap import overlay
from diffx.render.grid import make_grid
from diffx.trace.tracer import TraceOptions, generate_traced
from diffx.weights.lora_apply import AppliedLora


def word_positions(tokenizer: ClipTokenizer, prompt: str, word: str) -> range:
    """The positions of `word`'s tokens in `prompt`'s token sequence (its first occurrence); one line naming the
    word and the prompt when it is not there."""
    ids, alone = tokenizer.encode(prompt).ids, tokenizer.encode(word)
    pieces = alone.ids[1:alone.num_tokens - 1]  # between the start and end tokens
    start = next((i for i in range(len(ids)) if pieces and ids[i:i + len(pieces)] == pieces), None)
    if start is None:
        raise InvalidArgumentError(f"the word {word!r} is not in the prompt {prompt!r} (as the tokenizer reads "
                                   "it); pass a --word that the prompt contains")
    return range(start, start + len(pieces))


def chosen_word(tokenizer: ClipTokenizer, prompt: str, word: str | None,
                trigger_words: Sequence[tuple[str, int]]) -> str:
    """`word`, checked to be in `prompt`; without one, the most frequent of a LoRA file's trigger words
    (`LoraReport.trigger_words`, most frequent first) that the prompt contains; one line when there is none."""
    if word is not None:
        word_positions(tokenizer, prompt, word)
        return word
    for tag, _ in trigger_words:
        try:
            word_positions(tokenizer, prompt, tag)
        except InvalidArgumentError:
            continue
        return tag
    named = ", ".join(tag for tag, _ in trigger_words[:5]) or "none"
    raise InvalidArgumentError(f"the prompt {prompt!r} contains none of the file's trigger words ({named}); pass "
                               "--word with the word whose attention to draw")


def word_attention(model: AnyModel, settings: GenerationSettings, word: str) -> tuple[np.ndarray, torch.Tensor]:
    """(the picture (H, W, 3), the word's attention map (h, w)) of one traced run of `settings` (its prompt holds
    the word)."""
    positions = word_positions(model.tokenizer, settings.prompt, word)
    traced = generate_traced(model, settings, options=TraceOptions(record=("attention",)))
    maps = traced.traces[0].tensors["attention"].float().mean(0)  # (K, h, w): each prompt position's map
    return traced.images[0], maps[positions.start:positions.stop].mean(0)


def attention_rows(rows: Sequence[tuple[np.ndarray, torch.Tensor]], labels: Sequence[str], word: str,
                   title: str) -> Image.Image:
    """A row per run: its picture and the word's map over it, on one colour scale for all rows (so a stronger map
    looks stronger), each labelled with the map's mean."""
    scale = max(float(heat.max()) for _, heat in rows) or 1.0
    return make_grid([[picture, overlay(picture, (heat / scale).numpy(), alpha=0.6, grey=True)]
                      for picture, heat in rows],
                     row_labels=list(labels), col_labels=["picture", f"{word}'s attention"],
                     cell_labels=[["", f"mean {float(heat.mean()):.3f}"] for _, heat in rows], title=title)


def lora_attention(model: AnyModel, lora: AppliedLora, settings: GenerationSettings, word: str) -> Image.Image:
    """`word`'s attention with `lora` at scale 0 (the base model) and at its own scale, same settings (prompt,
    seed, sampler…); the LoRA's scale is put back after."""
    word_positions(model.tokenizer, settings.prompt, word)  # before the first run
    scale, rows = lora.scale, []
    try:
        for run_scale in (0.0, scale):
            lora.scale = run_scale
            rows.append(word_attention(model, settings, word))
    finally:
        lora.scale = scale
    return attention_rows(rows, ["LoRA scale 0", f"LoRA scale {scale:g}"], word,
                          f"{lora.path.name} · {settings.prompt} · seed {settings.seed}")
