"""The CPU fast path: bf16 weights and activations in the channels-last memory format.

A CPU with native bf16 arithmetic (AVX512-BF16 or AMX on x86, `diffx.devices.cpu_bf16_native`) multiplies
bf16 matrices 4x faster than fp32 ones, at half the memory traffic. Two things decide whether the
convolutions get that speed:

- **dtype**: weights and activations in bf16 (8 exponent bits as fp32, so no overflow; 8 mantissa bits, so
  about 3 significant digits per value). oneDNN accumulates every dot product in fp32, and GroupNorm and
  LayerNorm compute their statistics in fp32, so the error does not grow with the width of a layer.
- **memory format**: oneDNN's fast convolution kernels want the channels innermost, NHWC ("channels
  last"). A tensor in PyTorch's default NCHW layout is reordered into NHWC before every convolution and back
  after it; in bf16 that reordering costs as much as the arithmetic. With 4-D weights stored channels-last,
  every convolution's output is channels-last too, and the elementwise ops, GroupNorm, nearest upsampling,
  concatenation and the (B, C, H, W) <-> (B, H*W, C) reshapes of the transformers keep it: a channels-last
  map *is* (B, H*W, C) in memory, so flattening it into tokens costs nothing.

Nothing else changes: the same modules run, so observers and editors see the same layers; the attention
probabilities an observer asks for are computed in fp32 (`attention.attention_probs`), and callers turn
outputs to fp32 (`pipeline.make_denoiser`'s ε̂, `decode_latents`' pictures) before recording them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

FAST_DTYPE = torch.bfloat16


def use_channels_last(modules: Iterable[nn.Module], enabled: bool = True) -> None:
    """Store every 4-D parameter of `modules` channels-last (or back to contiguous NCHW), in place.

    Only the strides change: values, names and shapes stay, so state dicts and checkpoints are unaffected.
    """
    memory_format = torch.channels_last if enabled else torch.contiguous_format
    for module in modules:
        for parameter in module.parameters():
            if parameter.dim() == 4:
                parameter.data = parameter.data.contiguous(memory_format=memory_format)


def to_fast_path(module: nn.Module) -> nn.Module:
    """Cast `module` to bf16 and lay its convolution weights out channels-last, in place; returns it."""
    module.to(dtype=FAST_DTYPE)
    use_channels_last([module])
    return module


def is_fast_path(module: nn.Module) -> bool:
    """Whether `module` runs the fast path: bf16 weights, its 4-D ones channels-last."""
    parameters = list(module.parameters())
    convolutions = [p for p in parameters if p.dim() == 4]
    return bool(parameters) and parameters[0].dtype == FAST_DTYPE and all(
        p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
