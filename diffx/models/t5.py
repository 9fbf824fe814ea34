"""The T5 v1.1 text encoder (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
Text-to-Text Transformer"): SD3's third text encoder is T5-XXL v1.1's encoder half.

T5 is a pre-norm transformer with three departures from the Transformer of Vaswani et al. 2017:

- no absolute positions: each layer's attention scores get a learned scalar per head and *relative position
  bucket* (sec. 2.1), computed once by the first layer's `relative_attention_bias` table and reused by every
  layer. Encoder buckets are bidirectional: 16 for keys before the query, 16 after; in each half 8 exact
  distances 0..7 and 8 logarithmic bins up to 128 tokens, beyond which all distances share the last bin;
- no 1/sqrt(d) in the attention: softmax(Q K^T + bias) V (the scale is folded into Q's initialisation);
- a simplified layer norm (RMSNorm, Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * w, no mean subtracted,
  no bias, the mean of squares in fp32.

    x_0 = shared(ids)
    x_l = x_{l-1} + SelfAttention(RMSNorm(x_{l-1}); bias)
    x_l = x_l + wo(gelu_tanh(wi_0 RMSNorm(x_l)) * wi_1 RMSNorm(x_l))
    hidden = RMSNorm(x_L)

v1.1 (the checkpoints SD3 uses) changed the original T5: the feed-forward is a gated GELU (GEGLU, Shazeer 2020,
"GLU Variants Improve Transformer") instead of ReLU, dropout is off in pre-training, and the language-model head is
not tied to the embedding (irrelevant here: the encoder has no head). GELU is the tanh approximation
(transformers' `gelu_new`).

Module names are transformers' `T5EncoderModel` state-dict keys (`shared.weight`, `encoder.block.N.layer.0.
SelfAttention.q.weight`, ...), so a diffusers SD3 folder's `text_encoder_3/` loads without renaming.
`encoder.embed_tokens` *is* `shared` (one table); a file may hold either key or both.

fp16: T5's feed-forward outputs overflow fp16's 65504 (a known property of the v1.1 checkpoints), so, as
transformers does (`_keep_in_fp32_modules = ["wo"]`), `T5Encoder.to_dtype(torch.float16)` keeps every `wo` in fp32:
its input is cast up, its output stays fp32, and the residual stream that adds it becomes fp32 too; each RMSNorm
casts back to its weight's dtype, so the big matrix products still run in fp16. bf16 has fp32's range: no exception.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffx.models.attention import AttentionLayer, name_attention_layers

# Parameters that stay fp32 when the model runs in fp16 (transformers' `_keep_in_fp32_modules`).
KEEP_IN_FP32 = ("DenseReluDense.wo.weight",)


@dataclass(frozen=True)
class T5Config:
    """The widths of a T5 v1.1 encoder (transformers' `T5Config` names). Defaults: T5-XXL v1.1 (SD3's)."""

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64  # width of one attention head; heads * d_kv need not equal d_model
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"  # the only kind v1.1 uses

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv


def t5_xxl() -> T5Config:
    """T5-XXL v1.1's encoder (google/t5-v1_1-xxl; SD3's `text_encoder_3/`): 24 blocks, 4096 wide, 64 heads."""
    return T5Config()


def small() -> T5Config:
    """A tiny T5 for tests: 2 blocks, 64 wide, 4 heads of 16, a 1000-token vocabulary."""
    return T5Config(vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)


class T5LayerNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * w; no mean subtraction, no bias."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # The mean of squares in fp32 even for half inputs: a sum of 4096 squares overflows fp16.
        variance = x.float().pow(2).mean(-1, keepdim=True)  # (B, L, d_model) -> (B, L, 1)
        x = x * torch.rsqrt(variance + self.eps)  # (B, L, d_model), fp32 (promoted by the fp32 variance)
        # Back to the weights' dtype when they are half; an fp32 residual stream then meets fp16 matrices here.
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


def relative_position_bucket(relative_position: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """Bidirectional relative-position buckets (Raffel et al. 2020, sec. 2.1; Mesh TensorFlow's encoder).

    `relative_position` = key position - query position. Half the buckets for keys after the query, half for
    keys before; in each half, distances below a quarter of the buckets get one bucket each, the rest share
    logarithmically wider bins up to `max_distance`, beyond which everything falls in the last bucket.
    """
    half = num_buckets // 2
    buckets = (relative_position > 0).long() * half  # keys after the query: the upper half
    distance = relative_position.abs()
    max_exact = half // 2
    # log(d / max_exact) / log(max_distance / max_exact) grows from 0 at max_exact to 1 at max_distance, spread
    # over the remaining half - max_exact bins; farther keys clamp to the last. (d < max_exact is not used.)
    log_bin = max_exact + (
        torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    ).long()
    log_bin = log_bin.clamp(max=half - 1)
    return buckets + torch.where(distance < max_exact, distance, log_bin)


class T5Attention(AttentionLayer):
    """Multi-head self-attention without 1/sqrt(d): softmax(Q K^T + position bias (+ mask)) V."""

    kind = "self"
    # No 1/sqrt(d) makes the scores 8x larger than usual: compute them in fp32 when the weights are half.
    upcast = True

    def __init__(self, config: T5Config, has_relative_attention_bias: bool):
        super().__init__()
        self.config = config
        self.heads = config.num_heads
        self.q = nn.Linear(config.d_model, config.inner_dim, bias=False)
        self.k = nn.Linear(config.d_model, config.inner_dim, bias=False)
        self.v = nn.Linear(config.d_model, config.inner_dim, bias=False)
        self.o = nn.Linear(config.inner_dim, config.d_model, bias=False)
        if has_relative_attention_bias:
            # One learned scalar per (bucket, head); only the first block owns the table.
            self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_heads)

    def position_bias(self, length: int) -> Tensor:
        """The relative position bias of a length-`length` sequence: (1, heads, L, L), fp32."""
        positions = torch.arange(length, device=self.relative_attention_bias.weight.device)
        relative = positions[None, :] - positions[:, None]  # (L_query, L_key): key - query
        buckets = relative_position_bucket(
            relative, self.config.relative_attention_num_buckets, self.config.relative_attention_max_distance
        )
        # (L, L) -> (L, L, heads) -> (1, heads, L, L)
        return self.relative_attention_bias(buckets).float().permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        # (B, L, d_model) -> (B, L, heads * d_kv) each; `bias` (B or 1, heads, L, L)
        out = self.attend(self.q(x), self.k(x), self.v(x), self.heads, bias=bias, scale=1.0)
        return self.o(out)  # (B, L, heads * d_kv) -> (B, L, d_model)


class T5LayerSelfAttention(nn.Module):
    """Pre-norm attention sublayer: x + Attention(RMSNorm(x))."""

    def __init__(self, config: T5Config, has_relative_attention_bias: bool):
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_attention_bias)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        return x + self.SelfAttention(self.layer_norm(x), bias)


class T5GatedFeedForward(nn.Module):
    """GEGLU (Shazeer 2020, eq. 6): wo(gelu_tanh(x wi_0) * (x wi_1)), no biases (T5 v1.1)."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # (B, L, d_model) -> (B, L, d_ff): the gate times the linear branch
        hidden = F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)
        # wo may be kept in fp32 (see the module docstring): its input follows it; (B, L, d_ff) -> (B, L, d_model)
        return self.wo(hidden.to(self.wo.weight.dtype))


class T5LayerFF(nn.Module):
    """Pre-norm feed-forward sublayer: x + FF(RMSNorm(x))."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.DenseReluDense = T5GatedFeedForward(config)  # transformers' name, from T5's original ReLU layer
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nn.Module):
    """One encoder block: `layer.0` self-attention, `layer.1` feed-forward (transformers' list of sublayers)."""

    def __init__(self, config: T5Config, has_relative_attention_bias: bool):
        super().__init__()
        self.layer = nn.ModuleList([T5LayerSelfAttention(config, has_relative_attention_bias), T5LayerFF(config)])

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        return self.layer[1](self.layer[0](x, bias))


class T5Stack(nn.Module):
    """The encoder: embedding (the shared table), blocks, final RMSNorm."""

    def __init__(self, config: T5Config, embed_tokens: nn.Embedding):
        super().__init__()
        self.embed_tokens = embed_tokens
        # Only the first block owns the relative position bias table; the others reuse its bias.
        self.block = nn.ModuleList(T5Block(config, has_relative_attention_bias=i == 0)
                                   for i in range(config.num_layers))
        self.final_layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        x = self.embed_tokens(input_ids)  # (B, L) -> (B, L, d_model)
        bias = self.block[0].layer[0].SelfAttention.position_bias(input_ids.shape[1])  # (1, heads, L, L)
        if attention_mask is not None:
            # Masked keys get the most negative float: exp() of it is 0 next to any real key.
            # (B, L) -> (B, 1, 1, L), broadcast with the position bias to (B, heads, L, L)
            bias = bias + (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for block in self.block:
            x = block(x, bias)  # (B, L, d_model)
        return self.final_layer_norm(x)


class T5Encoder(nn.Module):
    """T5 v1.1's encoder: token ids (B, L) -> last hidden state (B, L, d_model); SD3's T5 context."""

    def __init__(self, config: T5Config | None = None):
        super().__init__()
        self.config = config or t5_xxl()
        self.shared = nn.Embedding(self.config.vocab_size, self.config.d_model)
        self.encoder = T5Stack(self.config, self.shared)  # `encoder.embed_tokens` is `shared`
        name_attention_layers(self)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """`attention_mask` (B, L) of 1 (attend) / 0 (ignore); SD3's pipeline gives none, so padding is attended."""
        # (B, L) int64 -> (B, L, d_model)
        return self.encoder(input_ids, attention_mask)

    def to_dtype(self, dtype: torch.dtype) -> T5Encoder:
        """Cast the weights to `dtype`, keeping the feed-forward outputs `wo` in fp32 when `dtype` is fp16."""
        for name, param in self.named_parameters():
            keep = dtype == torch.float16 and name.endswith(KEEP_IN_FP32)
            param.data = param.data.to(torch.float32 if keep else dtype)
        return self

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # One table under two names: a file may hold `shared.weight`, `encoder.embed_tokens.weight` or both.
        shared, embed = prefix + "shared.weight", prefix + "encoder.embed_tokens.weight"
        if shared in state_dict or embed in state_dict:
            table = state_dict.get(shared, state_dict.get(embed))
            state_dict.setdefault(shared, table)
            state_dict.setdefault(embed, table)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
