"""The one attention implementation used by the text encoder, the U-Net and the VAE.

Scaled dot-product attention (Vaswani et al. 2017, eq. 1):  Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V,
computed per head. Unless an editor acts, the numbers come from `torch.nn.functional.scaled_dot_product_attention`.
An *observer* (the tracer) can ask to see the attention probabilities of chosen layers; they are then
computed a second time, explicitly, and handed over — so watching never changes the output.

An *editor* (prompt-to-prompt, `diffx.editing`) may change them: for the layers it edits, the
probabilities are computed explicitly, handed to the editor, and what it returns is multiplied by V
(Hertz et al. 2022, sec. 3.1: the edit replaces M in M V). Without an editor nothing else runs.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

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


class AttentionEditor(Protocol):
    """Replaces the attention probabilities of the layers it edits (see `edit_attention`)."""

    def edits(self, layer: AttentionLayer, num_queries: int) -> bool:
        """Whether to edit `layer` now; `num_queries` (its N_query) tells its resolution."""

    def edit(self, layer: AttentionLayer, probs: Tensor) -> Tensor:
        """`probs`: (B, heads, N_query, N_key) fp32, rows summing to 1 -> the probabilities to use instead."""


_editor: contextvars.ContextVar[AttentionEditor | None] = contextvars.ContextVar(
    "diffx_attention_editor", default=None
)


@contextlib.contextmanager
def _bound(variable: contextvars.ContextVar, value: Any) -> Iterator[Any]:
    """Set a context variable for the length of a `with` block (restored even when the block raises)."""
    token = variable.set(value)
    try:
        yield value
    finally:
        variable.reset(token)


def edit_attention(editor: AttentionEditor) -> contextlib.AbstractContextManager[AttentionEditor]:
    """Within this block, every `AttentionLayer` that `editor.edits` multiplies V by `editor.edit`'s output."""
    return _bound(_editor, editor)


def observe_attention(observer: AttentionObserver) -> contextlib.AbstractContextManager[AttentionObserver]:
    """Within this block, every `AttentionLayer` that `observer.wants` reports its probabilities."""
    return _bound(_observer, observer)


class AttentionLayer(nn.Module):
    """Base for modules that call `attend`: gives each a name and a kind ("self", "cross", or "joint": MMDiT's
    attention over image and text tokens together, image first)."""

    kind: str = "self"
    layer_name: str = ""
    # Compute in fp32 whatever the weights' dtype (SD2-768: in fp16 its attention scores overflow).
    upcast: bool = False

    def attend(self, q: Tensor, k: Tensor, v: Tensor, heads: int, causal: bool = False, *,
               bias: Tensor | None = None, scale: float | None = None) -> Tensor:
        """Multi-head attention over (B, N, C) tensors -> (B, N_query, C), in the inputs' dtype.

        `bias` (B or 1, heads, N_query, N_key) is added to the scores before the softmax (T5's relative position
        bias, a padding mask as large negatives); `scale` replaces 1/sqrt(head_dim) (T5 uses 1: Raffel et al. 2020
        fold it into the initialisation of Q). Without them the numbers are exactly SDPA's defaults.
        """
        batch, n_query, channels = q.shape
        dtype = q.dtype
        if self.upcast:
            q, k, v = q.float(), k.float(), v.float()
        head_dim = channels // heads
        # (B, N, C) -> (B, heads, N, head_dim)
        q, k, v = (x.reshape(batch, -1, heads, head_dim).transpose(1, 2) for x in (q, k, v))
        editor = _editor.get()
        probs = None
        if editor is not None and editor.edits(self, n_query):
            # (B, heads, N_query, N_key) @ (B, heads, N_key, head_dim) -> (B, heads, N_query, head_dim)
            probs = editor.edit(self, attention_probs(q, k, causal, bias=bias, scale=scale))
            out = probs.to(v.dtype) @ v
        else:
            # Only given arguments are passed, so that every caller without them runs SDPA's defaults unchanged.
            extra: dict[str, Any] = {}
            if bias is not None:
                extra["attn_mask"] = bias.to(q.dtype)  # SDPA adds a float mask to the scores
            if scale is not None:
                extra["scale"] = scale
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, **extra)
        observer = _observer.get()
        wanted = observer.wants(self) if observer is not None else False
        if wanted:
            rows = wanted if isinstance(wanted, slice) else slice(None)
            # An observer sees the probabilities that were used: the edited ones where an editor acted.
            row_bias = None if bias is None else _rows(bias, rows)
            observer.observe(self, probs[rows] if probs is not None
                             else attention_probs(q[rows], k[rows], causal, bias=row_bias, scale=scale))
        return out.transpose(1, 2).reshape(batch, n_query, channels).to(dtype)


def attention_probs(q: Tensor, k: Tensor, causal: bool = False, *, bias: Tensor | None = None,
                    scale: float | None = None) -> Tensor:
    """softmax(scale Q K^T + bias) for (B, heads, N, d) inputs -> (B, heads, N_query, N_key), in fp32.

    `scale` defaults to 1/sqrt(d); `bias` is (B or 1, heads, N_query, N_key), as `AttentionLayer.attend` takes it.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.float() * scale) @ k.float().transpose(-1, -2)  # scale the smaller operand
    if bias is not None:
        scores = scores + bias.float()
    if causal:
        n_query, n_key = scores.shape[-2:]
        mask = torch.ones(n_query, n_key, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return scores.softmax(dim=-1)


def _rows(bias: Tensor, rows: slice) -> Tensor:
    """The batch rows of a bias that has one row per batch element; a bias shared by the batch (1, ...) as it is."""
    return bias if bias.shape[0] == 1 else bias[rows]


def name_attention_layers(model: nn.Module, prefix: str = "") -> None:
    """Give every AttentionLayer inside `model` its module path, so observers can tell them apart."""
    for name, module in model.named_modules():
        if isinstance(module, AttentionLayer):
            module.layer_name = f"{prefix}{name}"


def attention_kinds(modules: Iterable[nn.Module]) -> set[str]:
    """The kinds ("self", "cross", "joint") of the attention layers inside `modules`: what an observer or editor
    of the model's attention can find there."""
    return {layer.kind for module in modules for layer in module.modules() if isinstance(layer, AttentionLayer)}
