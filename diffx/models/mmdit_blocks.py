"""The joint blocks of SD3's MMDiT (Esser et al. 2024, "Scaling Rectified Flow Transformers for High-Resolution
Image Synthesis", sec. 4 and fig. 2) and SD3.5-medium's MMDiT-X.

A joint block keeps two streams of tokens with weights of their own — the image patches x and the text tokens —
and lets them meet in one attention over both sequences at once:

    per stream s ∈ {x, context}:   q_s, k_s, v_s = qkv_s(modulate(LN(s), shift_s, scale_s))
    [o_x; o_c] = Attention([q_x; q_c], [k_x; k_c], [v_x; v_c])           joint: every token sees every token
    s = s + gate_s · proj_s(o_s)
    s = s + gate'_s · MLP_s(modulate(LN(s), shift'_s, scale'_s))

Both streams are told the conditioning vector c (timestep + pooled text) through adaLN-Zero (Peebles & Xie 2023,
"Scalable Diffusion Models with Transformers", sec. 3.2): a Linear over SiLU(c) regresses each stream's six
vectors — shift, scale and gate for the attention, then for the MLP — instead of LayerNorm's learned affine.

Two variants of the block:
- the last block's context stream is *pre-only*: nothing reads the text tokens after it, so it keeps only its
  attention input (its adaLN regresses 2 vectors, shift and scale; no output projection, no MLP);
- MMDiT-X (SD3.5-medium, blocks 0–12): the image stream also attends to itself alone (`attn2`), from the same
  normalised input modulated by three more vectors (shift, scale, gate: 9 in all), added after the joint attention.

Where configured (SD3.5), q and k are RMS-normalised per head before the attention (QK-norm, Dehghani et al.
2023), which keeps the attention logits from growing without bound: Esser et al. 2024 add it for stable
mixed-precision training at high resolution.

Module paths are the original Stability checkpoints' (`joint_blocks.N.x_block.attn.qkv`, `.adaLN_modulation.1`,
`.mlp.fc1`...), SAI's `DismantledBlock` here called `StreamBlock`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffx.models.attention import AttentionLayer

# (q, k, v), each (B, N, width)
QKV = tuple[Tensor, Tensor, Tensor]


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN's affine map, per sample: (B, N, D) * (1 + (B, D)) + (B, D) -> (B, N, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


def layer_norm(width: int) -> nn.LayerNorm:
    """LayerNorm without its own affine (adaLN supplies shift and scale), eps 1e-6 as in SD3."""
    return nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)


class AttentionProjections(nn.Module):
    """One stream's side of an attention: the fused input projection `qkv`, the per-head QK-norm and the output
    projection `proj` (absent for a pre-only stream). SAI's `SelfAttention` without the attention itself, which
    the joint block computes over both streams at once."""

    def __init__(self, width: int, heads: int, qk_norm: bool, output: bool = True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)  # one module call for W_q, W_k, W_v: where a LoRA hooks in
        head_dim = width // heads
        # RMSNorm over each head's 64 channels, learned gain, eps 1e-6 (SD3.5); Identity holds no tensors.
        self.ln_q = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.ln_k = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(width, width) if output else None

    def project(self, x: Tensor) -> QKV:
        """(B, N, D) -> q, k, v, each (B, N, D), q and k normalised per head."""
        batch, tokens, width = x.shape
        # (B, N, D) -> (B, N, 3*D) -> 3 x (B, N, heads, head_dim)
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads).unbind(2)
        q, k = self.ln_q(q), self.ln_k(k)
        # (B, N, heads, head_dim) -> (B, N, D): the shape `attend` takes
        return q.reshape(batch, tokens, width), k.reshape(batch, tokens, width), v.reshape(batch, tokens, width)


class SelfAttention(AttentionProjections, AttentionLayer):
    """MMDiT-X's second attention (`x_block.attn2`): the image tokens attend to each other only."""

    kind = "self"

    def forward(self, x: Tensor) -> Tensor:
        # (B, N_img, D) -> (B, N_img, D)
        return self.proj(self.attend(*self.project(x), self.heads))


class JointAttention(AttentionLayer):
    """Attention over the image and text tokens together (Esser et al. 2024, fig. 2b). It holds no weights: each
    stream brings its own q, k, v (`AttentionProjections`).

    The sequence is ordered IMAGE TOKENS FIRST, THEN TEXT (diffusers' order; SAI's code puts the text first, the
    same numbers since nothing in the attention depends on the order). An observer sees probabilities
    (B, heads, N_img + N_txt, N_img + N_txt) whose four quadrants are image→image ([:N_img, :N_img]), image→text
    ([:N_img, N_img:], what cross-attention was in the U-Net), text→image and text→text.
    """

    kind = "joint"

    def __init__(self, heads: int):
        super().__init__()
        self.heads = heads

    def forward(self, image: QKV, text: QKV) -> tuple[Tensor, Tensor]:
        """(q, k, v) of each stream -> the attention output of each: (B, N_img, D), (B, N_txt, D)."""
        n_image = image[0].shape[1]
        # (B, N_img, D) ; (B, N_txt, D) -> (B, N_img + N_txt, D)
        q, k, v = (torch.cat(pair, dim=1) for pair in zip(image, text, strict=True))
        out = self.attend(q, k, v, self.heads)
        return out[:, :n_image], out[:, n_image:]


class Mlp(nn.Module):
    """Position-wise feed-forward: fc1 (D -> 4D), GELU (tanh approximation, as SD3 trained), fc2 (4D -> D)."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1 = nn.Linear(width, 4 * width)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        # (B, N, D) -> (B, N, 4D) -> (B, N, D)
        return self.fc2(self.act(self.fc1(x)))


class StreamBlock(nn.Module):
    """One stream's half of a joint block (SAI's `DismantledBlock`): its adaLN-Zero modulation, its side of the
    attention, its MLP; MMDiT-X's `attn2` on the image stream. `pre_attention` prepares the joint attention's
    input, `post_attention` adds its output and the MLP residually."""

    def __init__(self, width: int, heads: int, qk_norm: bool, pre_only: bool = False, dual_attention: bool = False):
        super().__init__()
        self.pre_only = pre_only
        # shift, scale (pre-only); + gate for the attention and shift, scale, gate for the MLP; + 3 for attn2
        self.vectors = 2 if pre_only else 9 if dual_attention else 6
        self.norm1 = layer_norm(width)
        self.attn = AttentionProjections(width, heads, qk_norm, output=not pre_only)
        self.attn2 = SelfAttention(width, heads, qk_norm) if dual_attention else None
        self.norm2 = None if pre_only else layer_norm(width)
        self.mlp = None if pre_only else Mlp(width)
        # Sequential so the Linear's key is `adaLN_modulation.1`, as in the checkpoints.
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, self.vectors * width))

    def pre_attention(self, x: Tensor, c: Tensor) -> tuple[QKV, Tensor, tuple[Tensor, ...]]:
        """The stream's q, k, v for the joint attention; also its normalised tokens and modulation vectors, which
        `post_attention` needs."""
        # (B, D) -> (B, vectors*D) -> vectors x (B, D)
        modulation = self.adaLN_modulation(c).chunk(self.vectors, dim=1)
        normed = self.norm1(x)  # (B, N, D)
        shift, scale = modulation[:2]
        return self.attn.project(modulate(normed, shift, scale)), normed, modulation

    def post_attention(self, x: Tensor, attended: Tensor, normed: Tensor, modulation: tuple[Tensor, ...]) -> Tensor:
        """x + gate · proj(attention output) [+ MMDiT-X's gated self-attention] + gate' · MLP(...): (B, N, D)."""
        _, _, gate, shift_mlp, scale_mlp, gate_mlp, *second = modulation
        x = x + gate[:, None] * self.attn.proj(attended)
        if self.attn2 is not None:
            # The second attention reads the block's input, normalised once, modulated by its own shift and scale.
            shift2, scale2, gate2 = second
            x = x + gate2[:, None] * self.attn2(modulate(normed, shift2, scale2))
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class JointBlock(nn.Module):
    """An MMDiT block: the image stream (`x_block`) and the text stream (`context_block`) through one joint
    attention (`attn`, no weights of its own)."""

    def __init__(self, width: int, heads: int, qk_norm: bool, pre_only: bool, dual_attention: bool):
        super().__init__()
        self.x_block = StreamBlock(width, heads, qk_norm, dual_attention=dual_attention)
        self.context_block = StreamBlock(width, heads, qk_norm, pre_only=pre_only)
        self.attn = JointAttention(heads)

    def forward(self, x: Tensor, context: Tensor, c: Tensor) -> tuple[Tensor, Tensor | None]:
        """x (B, N_img, D), context (B, N_txt, D), c (B, D) -> both streams updated; the context is None after a
        pre-only block (the last)."""
        x_qkv, x_normed, x_modulation = self.x_block.pre_attention(x, c)
        context_qkv, context_normed, context_modulation = self.context_block.pre_attention(context, c)
        x_attended, context_attended = self.attn(x_qkv, context_qkv)
        x = self.x_block.post_attention(x, x_attended, x_normed, x_modulation)
        if self.context_block.pre_only:
            return x, None
        return x, self.context_block.post_attention(context, context_attended, context_normed, context_modulation)


class FinalLayer(nn.Module):
    """adaLN (shift, scale — in that order here; diffusers' `norm_out` stores scale first) and a Linear from each
    token to its patch: (B, N, D) -> (B, N, patch² · out_channels)."""

    def __init__(self, width: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = layer_norm(width)
        self.linear = nn.Linear(width, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        # (B, D) -> (B, 2D) -> shift, scale (B, D)
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))
