"""The one attention implementation used by the text encoder, the U-Net and the VAE.

Scaled dot-product attention (Vaswani et al. 2017, eq. 1):  Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V,
computed per head. The numbers always come from `torch.nn.functional.scaled_dot_product_attention`.
An *observer* (the tracer) can ask to see the attention probabilities of chosen layers; they are then
computed a second time, explicitly, and handed over — so watching never changes the output.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AttentionObserver(Protocol):
    """Receives attention probabilities from the layers it wants (see `observe_attention`)."""

    def wants(self, layer: AttentionLayer) -> bool | slice:
        """False to skip `layer`; True for its whole batch, or a slice of the batch rows to compute."""

    def observe(self, layer: AttentionLayer, probs: Tensor) -> None:
        """`probs`: (B', heads, N_query, N_key) for the wanted batch rows; each query's row sums to 1."""


_observer: contextvars.ContextVar[AttentionObserver | None] = contextvars.ContextVar(
    "diffx_attention_observer", default=None
)


@contextlib.contextmanager
def observe_attention(observer: AttentionObserver) -> Iterator[AttentionObserver]:
    """Within this block, every `AttentionLayer` that `observer.wants` reports its probabilities."""
    token = _observer.set(observer)
    try:
        yield observer
    finally:
        _observer.reset(token)


class AttentionLayer(nn.Module):
    """Base for modules that call `attend`: gives each a name and a kind ("self", "cross")."""

    kind: str = "self"
    layer_name: str = ""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, heads: int, causal: bool = False) -> Tensor:
        """Multi-head attention over (B, N, C) tensors -> (B, N_query, C)."""
        batch, n_query, channels = q.shape
        head_dim = channels // heads
        # (B, N, C) -> (B, heads, N, head_dim)
        q, k, v = (x.reshape(batch, -1, heads, head_dim).transpose(1, 2) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        observer = _observer.get()
        wanted = observer.wants(self) if observer is not None else False
        if wanted:
            rows = wanted if isinstance(wanted, slice) else slice(None)
            observer.observe(self, attention_probs(q[rows], k[rows], causal))
        return out.transpose(1, 2).reshape(batch, n_query, channels)


def attention_probs(q: Tensor, k: Tensor, causal: bool = False) -> Tensor:
    """softmax(Q K^T / sqrt(d)) for (B, heads, N, d) inputs -> (B, heads, N_query, N_key), in fp32."""
    scores = (q.float() * q.shape[-1] ** -0.5) @ k.float().transpose(-1, -2)  # scale the smaller operand
    if causal:
        n_query, n_key = scores.shape[-2:]
        mask = torch.ones(n_query, n_key, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return scores.softmax(dim=-1)


def name_attention_layers(model: nn.Module, prefix: str = "") -> None:
    """Give every AttentionLayer inside `model` its module path, so observers can tell them apart."""
    for name, module in model.named_modules():
        if isinstance(module, AttentionLayer):
            module.layer_name = f"{prefix}{name}"
