"""SDXL's conditioning (Podell et al. 2023, sec. 2.1-2.2; `sgm.modules.encoders.GeneralConditioner`).

Two text encoders read the same prompt, each at its penultimate block and without its final norm, and their
contexts are concatenated along the width (Podell et al. 2023, sec. 2.1):

    context = [CLIP ViT-L/14 x_11 (B, 77, 768) ; OpenCLIP ViT-bigG/14 x_31 (B, 77, 1280)]    (B, 77, 2048)

The U-Net is also told a *vector* y, added to its timestep embedding through `label_emb` (sec. 2.2,
"micro-conditioning"): bigG's pooled text embedding, then the original image size, the crop's top-left corner
and the target size, each number embedded as a 256-wide sinusoid (the timestep's, `timestep_embedding`):

    y = [pooled (1280) ; emb(h_orig) ; emb(w_orig) ; emb(top) ; emb(left) ; emb(h_target) ; emb(w_target)]   (B, 2816)

Module paths are the single-file keys under `conditioner.`: `embedders.0.transformer.text_model.*` (CLIP-L in
transformers' layout) and `embedders.1.model.*` (bigG in OpenCLIP's, with its `text_projection`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffx.models.clip import TextEncoder
from diffx.models.configs import TextEncoderConfig
from diffx.models.open_clip import OpenClipTextEncoder
from diffx.models.unet import timestep_embedding

SDXL_PREFIX = "conditioner."
SIZE_EMBED_DIM = 256  # each of the six size/crop numbers -> a 256-wide sinusoid (`ConcatTimestepEmbedderND`)


class _ClipEmbedder(nn.Module):
    """`embedders.0`: CLIP ViT-L under `transformer.` (sgm's `FrozenCLIPEmbedder`)."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.transformer = TextEncoder(config)


class _OpenClipEmbedder(nn.Module):
    """`embedders.1`: OpenCLIP bigG under `model.` (sgm's `FrozenOpenCLIPEmbedder2`)."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.model = OpenClipTextEncoder(config)


class SdxlTextEncoders(nn.Module):
    """Both SDXL text encoders: token ids (B, 77) -> context (B, 77, 768 + 1280) and bigG's pooled (B, 1280).

    The ids are the first tokenizer's, padded with `<|endoftext|>`; bigG's tokenizer pads with "!" instead
    (`open_clip.tokenize` pads with 0), so positions after the first end token are re-padded with `second_pad_id`.
    """

    checkpoint_prefix = SDXL_PREFIX

    def __init__(self, first: TextEncoderConfig, second: TextEncoderConfig, end_id: int, second_pad_id: int):
        super().__init__()
        self.config, self.config_2 = first, second
        self.end_id, self.second_pad_id = end_id, second_pad_id
        self.embedders = nn.ModuleList([_ClipEmbedder(first), _OpenClipEmbedder(second)])

    def second_ids(self, input_ids: Tensor) -> Tensor:
        """The ids bigG's tokenizer gives: the same up to the first end token, `second_pad_id` after it."""
        is_end = (input_ids == self.end_id).long()
        after_end = (is_end.cumsum(dim=-1) - is_end) > 0  # (B, 77): strictly after the first end token
        return input_ids.masked_fill(after_end, self.second_pad_id)

    def encode(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """(context (B, 77, 2048), pooled (B, 1280)) for token ids (B, 77)."""
        clip_l = self.embedders[0].transformer(input_ids)  # (B, 77, 768)
        big_g, pooled = self.embedders[1].model.encode(self.second_ids(input_ids))  # (B, 77, 1280), (B, 1280)
        return torch.cat([clip_l, big_g], dim=-1), pooled

    def forward(self, input_ids: Tensor) -> Tensor:
        # (B, 77) int64 -> (B, 77, 2048)
        clip_l = self.embedders[0].transformer(input_ids)
        return torch.cat([clip_l, self.embedders[1].model(self.second_ids(input_ids))], dim=-1)


def micro_conditioning(pooled: Tensor, original_size: tuple[int, int], crop_top_left: tuple[int, int],
                       target_size: tuple[int, int]) -> Tensor:
    """The U-Net's added vector y = [pooled ; sinusoids of the six size/crop ids] (Podell et al. 2023, sec. 2.2).

    Sizes are (height, width) in pixels, the crop (top, left). pooled (B, P) -> y (B, P + 6 * 256), fp32.
    """
    ids = torch.tensor([*original_size, *crop_top_left, *target_size], dtype=torch.float32, device=pooled.device)
    embedded = timestep_embedding(ids, SIZE_EMBED_DIM).reshape(1, -1)  # (6,) -> (6, 256) -> (1, 1536)
    return torch.cat([pooled.float(), embedded.expand(pooled.shape[0], -1)], dim=-1)
