"""The OpenCLIP text encoder of SD2.x: ViT-H/14's text tower (Cherti et al. 2023; `open_clip`, Ilharco et al. 2021).

The transformer is CLIP's (Radford et al. 2021; see `diffx.models.clip`): token + position embeddings, causal
pre-LN blocks, a final LayerNorm. It differs from SD1.x's in size (1024 wide, 16 heads, 24 blocks), in its
MLP activation (exact GELU, not quick_gelu), in which output SD2 reads, and in its checkpoint layout:

    x_0 = token_embedding(ids) + positional_embedding
    x_l = x_{l-1} + SelfAttention(ln_1(x_{l-1}))              (causal)
    x_l = x_l + c_proj(GELU(c_fc(ln_2(x_l))))
    context = ln_final(x_{L-1})                               the *penultimate* block's output

(LDM's `FrozenOpenCLIPEmbedder(layer="penultimate")`: the last block is stored but never run.)

Module paths are the keys SD2 single files keep under `cond_stage_model.model.`, so they load unrenamed:
`token_embedding.weight`, `positional_embedding` (a bare parameter), `transformer.resblocks.N.ln_1`,
`.attn.in_proj_weight` (W_q, W_k, W_v stacked, (3·1024, 1024), as `torch.nn.MultiheadAttention` stores them),
`.attn.out_proj`, `.ln_2`, `.mlp.c_fc`, `.mlp.c_proj`, `ln_final`. The file's `text_projection` and
`logit_scale` belong to CLIP's contrastive head, which SD2's conditioning does not use; the loader drops them.

SDXL's second encoder is OpenCLIP ViT-bigG/14's tower (1280 wide, 20 heads, 32 blocks), stored under
`conditioner.embedders.1.model.`; it reads the penultimate block *without* ln_final (`final_norm = False`), and
also the *pooled* embedding, CLIP's contrastive text feature (Radford et al. 2021, fig. 3), kept this time:

    pooled = ln_final(x_L)[end token] @ text_projection          (B, 1280); text_projection is (width, 1280)

diffusers converts this encoder to a transformers `CLIPTextModel` with `hidden_act="gelu"` and 23 layers (the
unused 24th dropped): the same numbers. A diffusers folder's 23 layers load here with `skipped_layers = 0`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffx.errors import check_choice
from diffx.models.attention import AttentionLayer, name_attention_layers
from diffx.models.configs import TextEncoderConfig
from diffx.models.tokenizer import END_ID

# Where this encoder's tensors sit in an SD2.x single file.
OPEN_CLIP_PREFIX = "cond_stage_model.model."


class StackedProjection(nn.Module):
    """x -> x W^T + b with W = [W_q; W_k; W_v] and b held by the attention (so the checkpoint keys stay
    `attn.in_proj_weight` / `attn.in_proj_bias`, and this module has no tensors of its own). It makes the stacked
    projection a module call, the place where hooks see it: a LoRA trained on transformers' q_proj, k_proj or
    v_proj adds to one third of its output (`diffx.weights.lora_apply`)."""

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        # (B, N, width) -> (B, N, 3 * width)
        return F.linear(x, weight, bias)


class OpenClipAttention(AttentionLayer):
    """Causal multi-head self-attention with one stacked input projection (`nn.MultiheadAttention`'s layout)."""

    kind = "self"

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        width = config.hidden_size
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))  # rows: W_q, then W_k, then W_v
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.in_proj = StackedProjection()
        self.out_proj = nn.Linear(width, width)
        nn.init.normal_(self.in_proj_weight, std=width ** -0.5)

    def forward(self, x: Tensor) -> Tensor:
        # (B, 77, 1024) -> (B, 77, 3 * 1024) -> q, k, v each (B, 77, 1024)
        q, k, v = self.in_proj(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        return self.out_proj(self.attend(q, k, v, self.heads, causal=True))


class ResidualAttentionBlock(nn.Module):
    """One pre-LN block (`open_clip.transformer.ResidualAttentionBlock`): attention, then MLP, each residual."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = OpenClipAttention(config)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # Position-wise feed-forward as open_clip builds it: c_fc (1024 -> 4096), exact GELU, c_proj (4096 -> 1024).
        check_choice("hidden_act", config.hidden_act, ["gelu"])
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(config.hidden_size, config.intermediate_size),
                                             gelu=nn.GELU(),
                                             c_proj=nn.Linear(config.intermediate_size, config.hidden_size)))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class OpenClipTextEncoder(nn.Module):
    """OpenCLIP text tower: token ids (B, 77) -> ln_final of block L - skipped_layers (B, 77, 1024), SD2's context."""

    checkpoint_prefix = OPEN_CLIP_PREFIX

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        width = config.hidden_size
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(config.max_position_embeddings, width))
        self.transformer = nn.Module()  # a plain container: its blocks' keys read `transformer.resblocks.N.*`
        self.transformer.resblocks = nn.ModuleList(ResidualAttentionBlock(config)
                                                   for _ in range(config.num_hidden_layers))
        self.ln_final = nn.LayerNorm(width, eps=config.layer_norm_eps)
        if config.projection_dim:  # SDXL's bigG: the pooled output's projection, applied as x @ text_projection
            self.text_projection = nn.Parameter(torch.empty(width, config.projection_dim))
            nn.init.normal_(self.text_projection, std=width ** -0.5)
        nn.init.normal_(self.positional_embedding, std=0.01)
        name_attention_layers(self)

    def forward(self, input_ids: Tensor) -> Tensor:
        # (B, 77) int64 -> (B, 77, 1024)
        return self.encode(input_ids, pooled=False)[0]

    def encode(self, input_ids: Tensor, pooled: bool = True) -> tuple[Tensor, Tensor | None]:
        """(context (B, 77, width), pooled (B, projection_dim) or None): the used block's output (ln_final'd
        when `final_norm`), and with `pooled` the projected end-token feature of the last block (all blocks run)."""
        x = self.token_embedding(input_ids) + self.positional_embedding[: input_ids.shape[1]]
        blocks = self.transformer.resblocks
        used = len(blocks) - self.config.skipped_layers
        context = x
        for index, block in enumerate(blocks[:len(blocks) if pooled else used]):  # SD2: blocks 0..22 of 24
            x = block(x)
            if index == used - 1:
                context = x
        context = self.ln_final(context) if self.config.final_norm else context
        if not pooled:
            return context, None
        # The end token's position: its first occurrence. open_clip's `text.argmax(dim=-1)` finds the same while
        # `<|endoftext|>` is the largest id, which textual inversion's added tokens (numbered after it) are not.
        # (B, 77, width) -> (B, width) -> (B, projection_dim)
        end = (input_ids == END_ID).int().argmax(dim=-1)
        return context, self.ln_final(x)[torch.arange(x.shape[0], device=x.device), end] @ self.text_projection
