"""LyCORIS's LoHa and LoKr layers read from their tensors and checked against the layer they adapt.

Key names (after the layer's name, which is kohya's: `lora_unet_…`, `lora_te_…`), as LyCORIS writes them and
ComfyUI, A1111 and PEFT read them:

    LoHa  hada_w1_a (out, r)  hada_w1_b (r, in·kh·kw)  hada_w2_a, hada_w2_b the same;  alpha
          with Tucker cores (convolutions): hada_t1, hada_t2 (r, r, kh, kw), hada_w*_a (r, out), hada_w*_b (r, in)
          ΔW = (alpha / r) · (W1a W1b) ⊙ (W2a W2b), r = hada_w1_b's rows
    LoKr  lokr_w1 (out1, in1) or lokr_w1_a (out1, r) · lokr_w1_b (r, in1);
          lokr_w2 (out2, in2[, kh, kw]) or lokr_w2_a (out2, r) · lokr_w2_b (r, in2·kh·kw)
          or, with a Tucker core, lokr_t2 (r, r, kh, kw), lokr_w2_a (r, out2), lokr_w2_b (r, in2);  alpha
          ΔW = (alpha / r) · W1 ⊗ W2, r = the rows of lokr_w1_b, else of lokr_w2_b; with both factors full there
          is no rank and the update is taken at factor 1, as LyCORIS trains it (alpha = dim) and ComfyUI reads it

A Tucker-core factor is rebuilt as W[p, q, k, l] = Σ_ij t[i, j, k, l] · a[i, p] · b[j, q] (LyCORIS's
`make_weight_cp`). The updates themselves are `diffx.weights.lora_layers`'s layers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffx.weights.lora_layers import AdapterLayer, DenseLayer, KroneckerLayer, LayerShape, LoraLayer
from diffx.weights.lora_names import LoraTarget

LOHA_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR_FACTORS = (("lokr_w1", "lokr_w1_a", "lokr_w1_b"), ("lokr_w2", "lokr_w2_a", "lokr_w2_b"))


class LayerProblem(ValueError):
    """What does not fit in one layer's tensors (`diffx.weights.lora.read_lora` names the file and refuses it)."""


def _tucker(core: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """W[p, q, k, l] = Σ_ij core[i, j, k, l] · a[i, p] · b[j, q]:
    (r, r, kh, kw), (r, out), (r, in) -> (out, in, kh, kw)."""
    return torch.einsum("ijkl,ip,jq->pqkl", core, a, b)


def _shape_error(name: str, kind: str, parts: dict[str, Tensor], shape: LayerShape) -> str:
    shapes = ", ".join(f"{part} {tuple(t.shape)}" for part, t in sorted(parts.items()) if part != "alpha")
    return f"{name}: its {kind} tensors ({shapes}) do not fit {shape}"


def _factor(parts: dict[str, Tensor], rank: int | None) -> float:
    """alpha / r, or 1 when the file holds no alpha or the update has no rank."""
    return float(parts["alpha"]) / rank if "alpha" in parts and rank else 1.0


def loha_layer(name: str, target: LoraTarget, parts: dict[str, Tensor], shape: LayerShape) -> AdapterLayer:
    """A LoHa's layer: a rank r1·r2 `LoraLayer` when that pair is smaller
    than ΔW, else ΔW whole (`DenseLayer`); with Tucker cores always ΔW. Raises `LayerProblem`."""
    features_in, features_out, kernel = shape.features_in, shape.features_out, shape.kernel
    missing = [part for part in LOHA_PARTS if part not in parts]
    if missing:
        raise LayerProblem(f"{name} is a LoHa without {', '.join(missing)}")
    w1a, w1b, w2a, w2b = (parts[part].float() for part in LOHA_PARTS)
    if "hada_t1" in parts or "hada_t2" in parts:
        if not {"hada_t1", "hada_t2"} <= parts.keys():
            raise LayerProblem(f"{name} is a LoHa with one Tucker core; it needs hada_t1 and hada_t2")
        t1, t2 = parts["hada_t1"].float(), parts["hada_t2"].float()
        fits = all(t.ndim == 4 and t.shape[2:] == kernel and a.ndim == b.ndim == 2 and t.shape[:2] == (a.shape[0],
                   b.shape[0]) and a.shape[1] == features_out and b.shape[1] == features_in
                   for t, a, b in ((t1, w1a, w1b), (t2, w2a, w2b)))
        if not fits:
            raise LayerProblem(_shape_error(name, "LoHa", parts, shape))
        delta = _tucker(t1, w1a, w1b) * _tucker(t2, w2a, w2b)  # (out, in, kh, kw), elementwise
        return DenseLayer(target, delta, _factor(parts, w1b.shape[0]), w1b.shape[0], "LoHa")
    fan_in = shape.fan_in
    w1b, w2b = w1b.flatten(1), w2b.flatten(1)  # a 4-D (r, in, kh, kw) copy of a convolution's is the same
    r1, r2 = w1b.shape[0], w2b.shape[0]
    if not (w1a.ndim == w2a.ndim == 2 and w1a.shape == (features_out, r1) and w2a.shape == (features_out, r2)
            and w1b.shape[1] == w2b.shape[1] == fan_in):
        raise LayerProblem(_shape_error(name, "LoHa", parts, shape))
    factor = _factor(parts, r1)
    # (B1 A1) ⊙ (B2 A2) = Σ_ij (b1_i ⊙ b2_j)(a1_i ⊙ a2_j)ᵀ: rank r1·r2, with rows i·r2 + j
    down = (w1b[:, None, :] * w2b[None, :, :]).reshape(r1 * r2, fan_in)  # (r1·r2, in·kh·kw)
    up = (w1a[:, :, None] * w2a[:, None, :]).reshape(features_out, r1 * r2)  # (out, r1·r2)
    if r1 * r2 * (fan_in + features_out) >= fan_in * features_out:
        delta = (up @ down).reshape(features_out, features_in, *kernel) if shape.convolution else up @ down
        return DenseLayer(target, delta, factor, r1, "LoHa")
    if shape.convolution:  # A: the layer's kernel, B: 1x1
        down, up = down.reshape(r1 * r2, features_in, *kernel), up[:, :, None, None]
    return LoraLayer(target, down, up, factor, "LoHa", r1)


def _lokr_factor(name: str, parts: dict[str, Tensor], which: int) -> tuple[Tensor, int | None]:
    """W1 or W2 (`which` 0 or 1) whole, and the rank of its low-rank form (None when the file holds it full)."""
    full, a_name, b_name = LOKR_FACTORS[which]
    if full in parts:
        return parts[full].float(), None
    if a_name not in parts or b_name not in parts:
        raise LayerProblem(f"{name} is a LoKr without {full} or the pair {a_name}, {b_name}")
    a, b = parts[a_name].float(), parts[b_name].float()
    if which == 1 and "lokr_t2" in parts:
        core = parts["lokr_t2"].float()
        if core.ndim != 4 or a.ndim != 2 or b.ndim != 2 or core.shape[:2] != (a.shape[0], b.shape[0]):
            raise LayerProblem(f"{name}: lokr_t2 {tuple(core.shape)}, {a_name} {tuple(a.shape)} and {b_name} "
                               f"{tuple(b.shape)} do not make one Tucker factor")
        return _tucker(core, a, b), b.shape[0]
    if a.ndim != 2 or b.ndim < 2 or a.shape[1] != b.shape[0]:
        raise LayerProblem(f"{name}: {a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)} do not multiply")
    return a @ b.flatten(1), b.shape[0]


def lokr_layer(name: str, target: LoraTarget, parts: dict[str, Tensor], shape: LayerShape) -> KroneckerLayer:
    """A LoKr's layer, W1 and W2 whole (both small: their sizes multiply to ΔW's); raises `LayerProblem`."""
    features_in, features_out, kernel = shape.features_in, shape.features_out, shape.kernel
    w1, rank1 = _lokr_factor(name, parts, 0)
    w2, rank2 = _lokr_factor(name, parts, 1)
    if w1.ndim != 2 or w1.shape[0] == 0 or w1.shape[1] == 0 or features_out % w1.shape[0] \
            or features_in % w1.shape[1]:
        raise LayerProblem(_shape_error(name, "LoKr", parts, shape))
    out2, in2 = features_out // w1.shape[0], features_in // w1.shape[1]
    if w2.numel() != out2 * in2 * kernel[0] * kernel[1]:
        raise LayerProblem(_shape_error(name, "LoKr", parts, shape))
    w2 = w2.reshape(out2, in2, *kernel) if shape.convolution else w2.reshape(out2, in2)
    rank = rank1 or rank2
    return KroneckerLayer(target, w1, w2, _factor(parts, rank), rank or 0)
