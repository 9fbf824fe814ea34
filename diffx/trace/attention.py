"""The attention maps a `Tracer` keeps (`diffx.trace`): one layer's token maps (mean over heads), the DAAM
aggregate over layers (Tang et al. 2023), words merged from their BPE tokens, and short layer labels.

Shapes: probabilities arrive as (heads, rows·cols, 77) per prompt (see `diffx.models.attention`); a
layer's token maps are (K, rows, cols) for the K positions the prompt uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from diffx.models.tokenizer import TokenizedPrompt

SECTIONS = {"input_blocks": "down", "middle_block": "mid", "output_blocks": "up"}  # U-Net part -> label


def merge_words(maps: Tensor, tokens: TokenizedPrompt) -> Tensor:
    """(K, r, c) token maps → (words, r, c): each word the mean of its tokens' maps (zeros if all were cut).

    A word's tokens lie among the K kept positions (the padding after them belongs to no word).
    """
    out = []
    for word_index in range(len(tokens.words)):
        positions = tokens.word_positions(word_index)
        out.append(maps[positions].mean(0) if positions else torch.zeros_like(maps[0]))
    return torch.stack(out) if out else maps[:0]


def layer_token_maps(probs: Tensor, num_tokens: int, rows: int, cols: int) -> Tensor:
    """(heads, rows*cols, 77) probabilities → (num_tokens, rows, cols), the mean over heads."""
    return probs[:, :, :num_tokens].mean(0).T.reshape(num_tokens, rows, cols)


def daam_aggregate(maps: list[Tensor]) -> Tensor:
    """DAAM: upsample every layer's (K, r, c) map to the largest grid (bicubic), then average.

    Interpolation is linear, so the maps of one grid size are summed first and upsampled once.
    """
    rows = max(m.shape[-2] for m in maps)
    cols = max(m.shape[-1] for m in maps)
    by_grid: dict[tuple[int, ...], Tensor] = {}
    for m in maps:
        grid = tuple(m.shape[-2:])
        by_grid[grid] = by_grid[grid] + m.float() if grid in by_grid else m.float()
    total = sum(summed if grid == (rows, cols) else
                F.interpolate(summed[None], size=(rows, cols), mode="bicubic", align_corners=False)[0]
                for grid, summed in by_grid.items())
    return (total / len(maps)).clamp_min(0)


def layer_labels(names: Sequence[str]) -> list[str]:
    """Short labels in U-Net order: "down.0", "down.1", …, "mid", "up.0", … (numbered within each part)."""
    parts = [SECTIONS.get(name.split(".")[0], name.split(".")[0]) for name in names]
    labels, seen = [], dict.fromkeys(parts, 0)
    for part in parts:
        labels.append(part if parts.count(part) == 1 and part == "mid" else f"{part}.{seen[part]}")
        seen[part] += 1
    return labels
