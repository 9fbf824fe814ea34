"""Attention grounding: a training loss that pulls each object word's cross-attention into its object.

Plain L_simple training gives the embedded model faithful pictures, but its DAAM maps of shape words
peak on object edges or on the other object (the pointing game stayed near chance). TokenCompose
(Wang et al., CVPR 2024, eq. 2) adds a token-level loss on the U-Net's cross-attention: for a token i
that names an object with mask M_i, its attention map A_i (mean over heads) should put its mass inside
the mask,

    L_token = mean_i (1 - sum_u A_i[u] M_i[u] / sum_u A_i[u])^2,

averaged over every cross-attention layer (masks pooled to each layer's grid). A world knows every
object's exact mask, so the colour and shape words of each captioned object are supervised. In the v2
world's loose captions only the objects named by colour and shape that match exactly one object of the
scene are: an omitted colour or a wrong one leaves that object's words unsupervised, as no pixel shows
what they say. The maps a learner sees from such a model were *taught* to be grounded: the model card
says so.

A caption that places its object on the grid ("... in the top left") grounds the position words too
("top", "left" attend inside the object) when the cell it names is the object's own: the U-Net's queries
must then know where they are and the position words' values can carry the object there. Without it the v2
model never learnt position words (benchmarks/signal_leak.py: it read the layout from x_T instead).

An MMDiT (the flow model, `--family sd3`) has no cross-attention: one joint attention over image and text
tokens. Its image→text quadrant is what the tracer records as the words' maps (`diffx.trace.tracer`, what the
pointing game reads), so the same loss supervises that quadrant; the loss's own normalisation (each token's
mass over the image) makes the share of each query's attention that goes to the text irrelevant.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffx.embedded.shapes import object_word_indices
from diffx.embedded.worlds import World
from diffx.models.attention import AttentionLayer
from diffx.models.tokenizer import TokenizedPrompt


def token_targets(world: World, scenes: Sequence, masks: Sequence[np.ndarray], encodings: Sequence[TokenizedPrompt],
                  size: int) -> tuple[Tensor, Tensor]:
    """The mask each token should attend inside, and which tokens are supervised.

    `masks[b]`: (objects, size, size) of scene b of `world` (`world.object_masks`); `encodings[b]`: its caption.
    Returns (B, tokens, size, size) float masks and a (B, tokens) bool of the colour and shape tokens of
    objects the caption names unambiguously (a dropped caption, or two objects of the same colour and
    shape, supervises nothing), and of the position words of a grid cell the caption names rightly.
    """
    num_tokens = len(encodings[0].ids)
    token_masks = torch.zeros(len(scenes), num_tokens, size, size)
    supervised = torch.zeros(len(scenes), num_tokens, dtype=torch.bool)
    for b, (scene, scene_masks, encoding) in enumerate(zip(scenes, masks, encodings, strict=True)):
        specs = list(world.prompt_objects(encoding.prompt))
        for spec, words in zip(specs, object_word_indices(encoding.words, specs), strict=True):
            matching = [i for i, obj in enumerate(scene.objects)
                        if obj.colour == spec.colour and obj.shape == spec.shape]
            if words is None or len(matching) != 1:
                continue
            if spec.position is not None and spec.position == scene.objects[matching[0]].position:
                words = (*words, *_phrase_indices(encoding.words, spec.position.split(), start=words[1] + 1))
            positions = [p for word in words for p in encoding.word_positions(word)]
            token_masks[b, positions] = torch.from_numpy(scene_masks[matching[0]])
            supervised[b, positions] = True
    return token_masks, supervised


def _phrase_indices(words: Sequence[str], phrase: Sequence[str], start: int) -> tuple[int, ...]:
    """Indices of the first run of `phrase` in `words` from `start` on; () when it is not there."""
    for i in range(start, len(words) - len(phrase) + 1):
        if list(words[i:i + len(phrase)]) == list(phrase):
            return tuple(range(i, i + len(phrase)))
    return ()


class CrossAttentionCollector:
    """An attention observer (diffx.models.attention) that keeps every image→text attention map, with gradients,
    for `grounding_loss`: a U-Net's cross-attention, or the image→text quadrant of an MMDiT's joint attention
    (image tokens first, then the `text_tokens` of the context), as the tracer records it."""

    def __init__(self, text_tokens: int | None = None) -> None:
        self.text_tokens = text_tokens
        self.probs: list[Tensor] = []

    def wants(self, layer: AttentionLayer) -> bool:
        return layer.kind == "cross" or (layer.kind == "joint" and self.text_tokens is not None)

    def observe(self, layer: AttentionLayer, probs: Tensor) -> None:
        if layer.kind == "joint":
            # (B, heads, N_img + N_txt, N_img + N_txt) -> image queries' text keys (B, heads, N_img, N_txt)
            n_image = probs.shape[-1] - self.text_tokens
            probs = probs[:, :, :n_image, n_image:]
        self.probs.append(probs.mean(1))  # (B, N_query, tokens), mean over heads


def grounding_loss(probs: Sequence[Tensor], token_masks: Tensor, supervised: Tensor) -> Tensor:
    """TokenCompose's L_token over image→text attention maps `probs` [(B, N, tokens) per layer], masks pooled
    to each layer's square grid. Zero when no token is supervised."""
    if probs:  # a context shorter than the tokenizer's ids (the flow model's 40 tokens): the words past it are
        # not in the network's input, so nothing grounds them
        tokens = probs[0].shape[-1]
        token_masks, supervised = token_masks[:, :tokens], supervised[:, :tokens]
    weight = supervised.float()
    if not probs or weight.sum() == 0:
        return token_masks.new_zeros(())
    losses = []
    for layer_probs in probs:
        side = int(round(layer_probs.shape[1] ** 0.5))
        masks = F.adaptive_avg_pool2d(token_masks, side).flatten(2)  # (B, tokens, N)
        maps = layer_probs.transpose(1, 2)  # (B, tokens, N)
        inside = (maps * masks).sum(-1) / maps.sum(-1).clamp_min(1e-8)
        losses.append((((1 - inside) ** 2) * weight).sum() / weight.sum())
    return torch.stack(losses).mean()
