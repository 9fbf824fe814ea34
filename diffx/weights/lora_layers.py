"""What one adapted layer adds: the update ΔW in the three forms adapter files hold it, applied to x unmerged.

    LoRA, LoCon   ΔW = (alpha / r) · B A                  Hu et al. 2021, eq. 3: B (out, r), A (r, in)
    LoHa          ΔW = (alpha / r) · (B1 A1) ⊙ (B2 A2)    FedPara (Hyeon-Woo et al. 2022), as LyCORIS trains it
    LoKr          ΔW = (alpha / r) · W1 ⊗ W2              Kronecker product (Yeh et al. 2024, LyCORIS)

A LoHa is a LoRA of rank r1 · r2 in disguise: the Hadamard product of two rank-r sums is the rank-r1·r2 sum
Σ_ij (b1_i ⊙ b2_j)(a1_i ⊙ a2_j)ᵀ (the face-splitting product), so `diffx.weights.lycoris` rewrites it as a
`LoraLayer` when that pair is smaller than ΔW, and as a `DenseLayer` otherwise. A Kronecker product is never built:
(W1 ⊗ W2) x = vec(W2 X W1ᵀ) with X the input folded to (in1, in2), two small products (`KroneckerLayer`).

Each kind gives `update(x, conv)` (ΔW x without the factor alpha / r; for a convolution layer `conv`, ΔW as its
kernel with its stride, padding and dilation), `delta()` (ΔW itself, in float32, for merging and checks) and
`norm()` (‖(alpha / r) · ΔW‖_F, for the inspector).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffx.weights.lora_names import LoraTarget


@dataclass(frozen=True)
class LayerShape:
    """The shape of the layer an update is for: in and out features, kernel (1, 1 for a Linear) and whether it is
    a convolution; for OpenCLIP's stacked projection the third of its rows the target owns."""

    features_in: int
    features_out: int
    kernel: tuple[int, int]
    convolution: bool

    @classmethod
    def of(cls, module: nn.Module, target: LoraTarget) -> LayerShape:
        if isinstance(module, nn.Conv2d):
            return cls(module.in_channels, module.out_channels, tuple(module.kernel_size), True)
        if target.rows is not None:  # a third of a stacked q/k/v projection: x (in) -> its rows of 3 · width
            start, stop = target.rows  # OpenCLIP's StackedProjection is as wide in as each third out
            return cls(module.in_features if isinstance(module, nn.Linear) else stop - start, stop - start, (1, 1),
                       False)
        return cls(module.in_features, module.out_features, (1, 1), False)

    @property
    def fan_in(self) -> int:
        return self.features_in * self.kernel[0] * self.kernel[1]

    def __str__(self) -> str:
        kernel = "" if self.kernel == (1, 1) else f" with kernel {self.kernel}"
        return f"a layer {self.features_in} -> {self.features_out}{kernel}"


def _conv(x: Tensor, kernel: Tensor, conv: nn.Conv2d) -> Tensor:
    """x convolved with `kernel` as the layer `conv` convolves it (stride, padding, dilation; no bias)."""
    return F.conv2d(x, kernel, None, conv.stride, conv.padding, conv.dilation)


@dataclass(frozen=True)
class LoraLayer:
    """A low-rank update B A: `down` A (r, in[, kh, kw]), `up` B (out, r[, 1, 1]) as the file holds them (4-D for
    a convolution), `factor` alpha / r. `kind`: "LoRA" (LoRA and LoCon), or "LoHa" for a LoHa rewritten as a
    pair of rank r1 · r2; `file_rank`: the file's rank r when it is not A's rows (a LoHa's)."""

    target: LoraTarget
    down: Tensor
    up: Tensor
    factor: float
    kind: str = "LoRA"
    file_rank: int | None = None

    @property
    def rank(self) -> int:
        """The rank r the file's alpha is divided by."""
        return self.file_rank or self.down.shape[0]

    def update(self, x: Tensor, conv: nn.Conv2d | None) -> Tensor:
        """B (A x): (..., in) -> (..., r) -> (..., out); for a convolution A is the layer's kernel, B 1x1."""
        down, up = self.down.to(x), self.up.to(x)  # the activations' dtype and device (bf16 on the CPU fast path)
        if conv is not None:  # (B, in, H, W) -> (B, r, H', W') -> (B, out, H', W')
            return F.conv2d(_conv(x, down, conv), up)
        return F.linear(F.linear(x, down), up)

    def delta(self) -> Tensor:
        """ΔW = B A, shaped as the layer's weight."""
        down, up = self.down.detach().float(), self.up.detach().float()
        return (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])

    def norm(self) -> float:
        """‖(alpha/r) · B A‖_F without building B A.

        ‖B A‖_F² = trace((B A)ᵀ B A) = trace(Aᵀ (Bᵀ B) A) = trace((Bᵀ B)(A Aᵀ)) by the trace's cyclic property, and
        Bᵀ B, A Aᵀ are r×r: O(r² (in + out)) work instead of the O(out · in · r) of ΔW itself (a 5120 x 1280 layer
        at rank 16: 1.6 M multiplications, not 105 M, and no 52 MB float64 matrix). As both are symmetric, the
        trace of their product is the sum of their elementwise product. That sum mixes signs, so it is taken in
        float64: its rounding stays far below the norm (the tests find 1e-15 relative to ΔW built explicitly)."""
        down, up = self.down.detach().flatten(1).double(), self.up.detach().flatten(1).double()  # (r, in·k²), (out, r)
        squared = float(((up.T @ up) * (down @ down.T)).sum())
        return abs(self.factor) * max(squared, 0.0) ** 0.5


@dataclass(frozen=True)
class KroneckerLayer:
    """A LoKr update W1 ⊗ W2: `w1` (out1, in1), `w2` (out2, in2[, kh, kw]) with out1 · out2 = out and
    in1 · in2 = in; `factor` alpha / r (1 when neither factor is low-rank, as LyCORIS trains it)."""

    target: LoraTarget
    w1: Tensor
    w2: Tensor
    factor: float
    rank: int
    kind: str = "LoKr"

    def update(self, x: Tensor, conv: nn.Conv2d | None) -> Tensor:
        """(W1 ⊗ W2) x: row (i1, i2) of ΔW is w1[i1, j1] · w2[i2, j2] over input (j1, j2), so fold x's input to
        (in1, in2), apply W2 over in2 and W1 over in1. A convolution's kernel is w1[i1, j1] · w2[i2, j2, :, :]:
        mix the in1 groups by W1, then convolve each of the out1 groups with W2."""
        w1, w2 = self.w1.to(x), self.w2.to(x)
        out1, in1 = w1.shape
        if conv is not None:
            batch, _, height, width = x.shape
            groups = x.reshape(batch, in1, -1, height, width)  # (B, in, H, W) -> (B, in1, in2, H, W)
            mixed = torch.einsum("ij,bjchw->bichw", w1, groups)  # -> (B, out1, in2, H, W)
            y = _conv(mixed.flatten(0, 1), w2, conv)  # (B·out1, in2, H, W) -> (B·out1, out2, H', W')
            return y.reshape(batch, -1, *y.shape[2:])  # -> (B, out1·out2, H', W')
        folded = x.unflatten(-1, (in1, -1))  # (..., in) -> (..., in1, in2)
        y = torch.matmul(w1, folded @ w2.T)  # (..., in1, out2) -> (..., out1, out2)
        return y.flatten(-2)  # -> (..., out)

    def delta(self) -> Tensor:
        """ΔW = W1 ⊗ W2 (`torch.kron`; for a convolution W1 as (out1, in1, 1, 1))."""
        w1, w2 = self.w1.detach().float(), self.w2.detach().float()
        return torch.kron(w1[:, :, None, None] if w2.ndim == 4 else w1, w2)

    def norm(self) -> float:
        """‖(alpha/r) · W1 ⊗ W2‖_F = |alpha/r| · ‖W1‖_F · ‖W2‖_F: every product w1[i] · w2[j] appears once."""
        return abs(self.factor) * float(self.w1.double().norm()) * float(self.w2.double().norm())


@dataclass(frozen=True)
class DenseLayer:
    """An update held whole: `delta` ΔW shaped as the layer's weight, `factor` alpha / r; for a LoHa whose rank
    r1 · r2 pair would be larger than ΔW, or one with Tucker cores (`kind`: where it came from)."""

    target: LoraTarget
    delta_weight: Tensor
    factor: float
    rank: int
    kind: str

    def update(self, x: Tensor, conv: nn.Conv2d | None) -> Tensor:
        """ΔW x: a second pass through a layer-sized weight."""
        delta = self.delta_weight.to(x)
        return _conv(x, delta, conv) if conv is not None else F.linear(x, delta)

    def delta(self) -> Tensor:
        return self.delta_weight.detach().float()

    def norm(self) -> float:
        return abs(self.factor) * float(self.delta_weight.double().norm())


AdapterLayer = LoraLayer | KroneckerLayer | DenseLayer
