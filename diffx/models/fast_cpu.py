"""The CPU fast path: bf16 weights and activations in the channels-last memory format.

A CPU with native bf16 arithmetic (AVX512-BF16 or AMX on x86, `diffx.devices.cpu_bf16_native`) multiplies
bf16 matrices 4x faster than fp32 ones, at half the memory traffic. Three things decide whether the
convolutions get that speed:

- **dtype**: weights and activations in bf16 (8 exponent bits as fp32, so no overflow; 8 mantissa bits, so
  about 3 significant digits per value). oneDNN accumulates every dot product in fp32, and GroupNorm and
  LayerNorm compute their statistics in fp32, so the error does not grow with the width of a layer.
- **memory format**: oneDNN's fast convolution kernels want the channels innermost, NHWC ("channels
  last"). A tensor in PyTorch's default NCHW layout is reordered into NHWC before every convolution and back
  after it; in bf16 that reordering costs as much as the arithmetic (in fp32 less, but still 16-25% of the
  embedded U-Net's time, so `StableDiffusion.to` stores them channels-last on the CPU in every dtype).
  With 4-D weights stored channels-last, every convolution's output is channels-last too, and the
  elementwise ops, GroupNorm, nearest upsampling, concatenation and the (B, C, H, W) <-> (B, H*W, C)
  reshapes of the transformers keep it: a channels-last map *is* (B, H*W, C) in memory, so flattening it
  into tokens costs nothing.
- **prepacked weights**: oneDNN computes a convolution in a blocked weight layout of its own. Handed a plain
  tensor, it reorders the weight into that layout on every call. At SD's low-resolution levels (1280 channels
  at 8x8 or 4x4, 14.7 M weights per 3x3 convolution, a few thousand output values) that reorder costs as much
  as the arithmetic: measured here, a 1280-channel 3x3 convolution on a (2, 1280, 4, 4) map takes 3.7 ms
  plain and 1.6 ms on a weight reordered once (`PackedConv2d`; 1.5x at 8x8, 1.3x at 16x16, none at 32x32).
  The price is a second copy of the convolution weights, made at the first forward: 589 M of SD1.5's 860 M
  U-Net weights are convolution weights, 1.2 GB more in bf16 (the fast-path model still takes less memory
  than the fp32 one).

Nothing else changes: the same modules run, so observers and editors see the same layers; the attention
probabilities an observer asks for are computed in fp32 (`attention.attention_probs`), and callers turn
outputs to fp32 (`pipeline.make_denoiser`'s ε̂, `decode_latents`' pictures) before recording them.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from weakref import WeakKeyDictionary

import torch
from torch import Tensor, nn

FAST_DTYPE = torch.bfloat16

# conv -> (key, oneDNN weight): outside the modules, so deepcopy, pickling and state dicts never see the
# opaque oneDNN tensors (they have no storage to copy), and a dropped module drops its packed weight.
_PACKED: WeakKeyDictionary[nn.Conv2d, tuple[tuple, Tensor]] = WeakKeyDictionary()


class PackedConv2d(nn.Conv2d):
    """`nn.Conv2d` that, in bf16 inference on the CPU, runs on a weight reordered once into oneDNN's layout.

    The packed weight is made for the first input shape seen and made again whenever the shape or the
    weight changes (a new tensor, or an in-place write such as `load_state_dict`, which bumps its version).
    Training, other dtypes, other devices and CPUs whose oneDNN has no bf16 kernels (an AVX2-only x86 refuses
    to reorder a bf16 weight: `onednn_bf16_kernels`) take `nn.Conv2d`'s own path, so the result is the same
    convolution either way (a test checks it equals `F.conv2d` exactly).
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self._packable(x):
            return super().forward(x)
        # oneDNN's fused convolution; "none": no activation fused after it
        return torch.ops.mkldnn._convolution_pointwise(x, self._packed_weight(x), self.bias, self.padding,
                                                       self.stride, self.dilation, self.groups, "none", [], "")

    def _packable(self, x: Tensor) -> bool:
        weight = self.weight
        return (x.device.type == "cpu" and x.dtype == FAST_DTYPE and weight.dtype == FAST_DTYPE
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and not (torch.is_grad_enabled() and weight.requires_grad) and onednn_bf16_kernels())

    def _packed_weight(self, x: Tensor) -> Tensor:
        key = (tuple(x.shape), self.weight.data_ptr(), self.weight._version)
        cached = _PACKED.get(self)
        if cached is None or cached[0] != key:
            dense = self.weight.detach().to_mkldnn()
            packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                dense, list(self.padding), list(self.stride), list(self.dilation), self.groups, list(x.shape))
            cached = _PACKED[self] = (key, packed)
        return cached[1]


@cache
def onednn_bf16_kernels() -> bool:
    """Whether oneDNN has bf16 convolution kernels on this CPU (x86: AVX512-BW/VL/DQ or AVX-NE-CONVERT).

    Not the same question as `devices.cpu_bf16_native` (native bf16 *arithmetic*, which `--dtype auto` asks):
    a user may still ask for `--dtype bf16` on a CPU without it, and PyTorch then runs bf16 convolutions on
    its own (slower, emulated) kernels, which every CPU has.
    """
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def use_channels_last(modules: Iterable[nn.Module], enabled: bool = True, keep_mapped: bool = False) -> None:
    """Store every 4-D parameter of `modules` channels-last (or back to contiguous NCHW), in place.

    Only the strides change: values, names and shapes stay, so state dicts and checkpoints are unaffected.
    `keep_mapped`: leave a weight that is a view of a memory-mapped file (`weights.safetensors_map`, loaded at
    the file's dtype) where it is, as copying it would hold the model in memory twice (SD1.5: 589 M convolution
    weights); in fp32 the layout gains the embedded model 16-25% and SD1.5 nothing measurable.
    """
    memory_format = torch.channels_last if enabled else torch.contiguous_format
    for module in modules:
        for parameter in module.parameters():
            if parameter.dim() == 4 and not (keep_mapped and is_mapped(parameter)):
                parameter.data = parameter.data.contiguous(memory_format=memory_format)


def is_mapped(tensor: Tensor) -> bool:
    """Whether `tensor` is a view of memory torch did not allocate (a file map): its storage cannot resize."""
    return not tensor.untyped_storage().resizable()


def use_packed_convolutions(modules: Iterable[nn.Module]) -> None:
    """Turn every `nn.Conv2d` inside `modules` into a `PackedConv2d`, in place (the class only: parameters,
    names and hooks stay)."""
    for module in modules:
        for layer in module.modules():
            if type(layer) is nn.Conv2d:
                layer.__class__ = PackedConv2d


def to_fast_path(module: nn.Module) -> nn.Module:
    """Cast `module` to bf16, lay its convolution weights out channels-last and let its convolutions use
    prepacked weights, in place; returns it."""
    module.to(dtype=FAST_DTYPE)
    use_channels_last([module])
    use_packed_convolutions([module])
    return module
