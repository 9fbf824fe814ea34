"""Read a LoRA file (Hu et al. 2021; or LyCORIS's LoHa, LoKr) and check it against a model before anything is
applied.

LoRA adapts a layer y = W x by a low-rank update (Hu et al. 2021, eq. 3), scaled by the file's alpha over the
rank r and by the user's scale s:

    y = W x + s · (alpha / r) · B A x          A = down (r, in), B = up (out, r)

For a convolution (LoCon, kohya's "conv" LoRA) A is a convolution with the layer's kernel, stride and padding
(r, in, kh, kw) and B a 1x1 one (out, r, 1, 1), so B A x is again a convolution of x with the kernel
ΔW = B A (diffusers' `fuse_lora`, kohya's merge).

Formats (names: `diffx.weights.lora_names`): kohya/A1111 `.safetensors` (`.lora_down.weight`, `.lora_up.weight`,
`.alpha`), diffusers/PEFT (`.lora_A.weight`, `.lora_B.weight`; alpha from the PEFT config diffusers stores in the
header, else alpha = r, as diffusers reads such files), diffusers' older `to_q_lora.down.weight` files, and
`.pt`/`.bin` files read by the code-free unpickler (`diffx.weights.safe_pickle`); LyCORIS's LoHa (`hada_*`) and
LoKr (`lokr_*`) layers under kohya's names (`diffx.weights.lycoris`; the three kinds of update:
`diffx.weights.lora_layers`). Every key must be part of an update that fits one of the model's layers; anything
else is refused in one line, never skipped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn

from diffx.errors import CheckpointError, InvalidArgumentError, check_finite, elide
from diffx.files import check_option_file
from diffx.models.any_model import AnyModel
from diffx.weights.load import read_state_dict
from diffx.weights.lora_layers import AdapterLayer, LayerShape, LoraLayer
from diffx.weights.lora_names import LoraTarget, lora_targets, split_lora_key
from diffx.weights.lycoris import LayerProblem, loha_layer, lokr_layer

LORA_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
INTEGER_ALPHA = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
SCALE_LIMIT = 4.0  # |scale| beyond this drowns the model in the update: a typo, most likely


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file and the scale s it is applied with (`--lora FILE[:scale]`)."""

    path: Path
    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))  # a str is taken too

    @classmethod
    def parse(cls, text: str, option: str = "--lora") -> LoraSpec:
        """`FILE` or `FILE:scale` (the last colon starts the scale only when a number follows, so `C:\\x` stays a
        path), checked: the file exists, its suffix is a LoRA file's, the scale is finite and in ±4. `option`: what
        the messages call the value (`diffx lora` takes it as its FILE argument)."""
        path, _, tail = text.rpartition(":")
        try:
            spec = cls(Path(path), float(tail)) if path else cls(Path(text))
        except ValueError:
            spec = cls(Path(text))
        spec.check(option)
        return spec

    def check(self, option: str = "--lora") -> None:
        """Before any work: the file is there and a LoRA file's kind; the scale finite and within ±4."""
        check_finite(f"{option} scale", self.scale)
        check_scale(f"{option} {elide(str(self.path), 80)}:{self.scale:g}", self.scale)
        check_option_file(option, self.path, LORA_SUFFIXES,
                          "optionally followed by :scale (e.g. style.safetensors:0.8)")


def check_scale(what: str, scale: float) -> None:
    """A LoRA scale s within ±4 (`what`: how the message names it); beyond, the update drowns the model."""
    if abs(scale) > SCALE_LIMIT:
        raise InvalidArgumentError(f"{what}: the scale must be within ±{SCALE_LIMIT:g} (1 = as trained, 0.5 = half)")


@dataclass(frozen=True)
class Lora:
    """A LoRA file read and checked against a model: its layers, where it came from, and the kind of denoiser it
    was read against ("U-Net", or "MMDiT" for SD3)."""

    path: Path
    layers: tuple[AdapterLayer, ...]
    network: str = "U-Net"


def _as_matrices(module: nn.Module, down: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    """A and B in the form the layer's update takes: 4-D for a convolution, 2-D otherwise. A Linear LoRA of a 1x1
    convolution is reshaped to (r, in, 1, 1) / (out, r, 1, 1); a 1x1 convolutional one of a Linear to 2-D."""
    if isinstance(module, nn.Conv2d):
        return (down[:, :, None, None] if down.ndim == 2 else down), (up[:, :, None, None] if up.ndim == 2 else up)
    flat = [t.flatten(1) if t.ndim == 4 and t.shape[2:] == (1, 1) else t for t in (down, up)]
    return flat[0], flat[1]


def _check_tensors(name: str, parts: dict[str, Tensor]) -> str | None:
    """What is wrong with one layer's tensors as numbers, or None: floating point (alpha may be an integer),
    finite, one alpha."""
    for part, tensor in parts.items():
        # kohya stores alpha = rank as an integer when no --network_alpha was given; A and B are learned floats
        if not tensor.is_floating_point() and not (part == "alpha" and tensor.dtype in INTEGER_ALPHA):
            return f"{name}.{part} is {str(tensor.dtype).removeprefix('torch.')}, not floating point"
        if not torch.isfinite(tensor).all():
            return f"{name}.{part} holds NaN or infinite values"
    if "alpha" in parts and parts["alpha"].numel() != 1:
        return f"{name}.alpha has shape {tuple(parts['alpha'].shape)}; expected one number"
    return None


def _lora_layer(name: str, module: nn.Module, target: LoraTarget, parts: dict[str, Tensor],
                alpha: float | None) -> LoraLayer:
    """A LoRA (or LoCon) layer: both halves present, ranks that agree, shapes that fit the layer; alpha: the
    file's own `.alpha` (kohya), else `alpha` (its PEFT config's), else the rank (factor 1)."""
    if "down" not in parts or "up" not in parts:
        raise LayerProblem(f"{name} has no {'down (A)' if 'down' not in parts else 'up (B)'} matrix")
    down, up = _as_matrices(module, parts["down"], parts["up"])
    shape = LayerShape.of(module, target)
    rank = down.shape[0]
    expected_down = (rank, shape.features_in, *shape.kernel) if down.ndim == 4 else (rank, shape.features_in)
    expected_up = (shape.features_out, rank, 1, 1) if up.ndim == 4 else (shape.features_out, rank)
    if rank == 0 or tuple(down.shape) != expected_down or tuple(up.shape) != expected_up:
        layer = shape if down.ndim == 4 else LayerShape(shape.features_in, shape.features_out, (1, 1), False)
        raise LayerProblem(f"{name}: down {tuple(parts['down'].shape)} and up {tuple(parts['up'].shape)} do not "
                           f"fit {layer}")
    alpha = float(parts["alpha"]) if "alpha" in parts else alpha if alpha is not None else float(rank)
    return LoraLayer(target, down.float(), up.float(), alpha / rank)


def _adapter_layer(name: str, module: nn.Module, target: LoraTarget, parts: dict[str, Tensor],
                   alpha: float | None) -> AdapterLayer:
    """One layer's update, by the kind its keys name (LoHa `hada_*`, LoKr `lokr_*`, else LoRA), checked."""
    if problem := _check_tensors(name, parts):
        raise LayerProblem(problem)
    kinds = {part.split("_")[0] for part in parts if part != "alpha"} & {"hada", "lokr"}
    if len(kinds) > 1 or kinds and parts.keys() & {"down", "up"}:
        raise LayerProblem(f"{name} mixes the keys of two kinds of adapter ({', '.join(sorted(parts))})")
    if kinds == {"hada"}:
        return loha_layer(name, target, parts, LayerShape.of(module, target))
    if kinds == {"lokr"}:
        return lokr_layer(name, target, parts, LayerShape.of(module, target))
    return _lora_layer(name, module, target, parts, alpha)


def peft_alphas(path: Path) -> dict[str, float]:
    """alpha per component (`unet`, `text_encoder`, `text_encoder_2`) from the PEFT config that diffusers'
    `save_lora_weights` stores in a .safetensors header (`lora_adapter_metadata`: `unet.lora_alpha`, ...); {} when
    there is none. A config diffx does not follow (per-layer `rank_pattern` / `alpha_pattern`, DoRA, rsLoRA's
    alpha / √r) is refused rather than read as plain LoRA."""
    if path.suffix.lower() != ".safetensors":
        return {}
    with safe_open(path, framework="pt", device="cpu") as file:
        raw = (file.metadata() or {}).get("lora_adapter_metadata")
    try:
        config = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        raise CheckpointError(f"{path.name}: its lora_adapter_metadata is not JSON; the file is damaged") from None
    alphas = {}
    for key, value in config.items():
        component, _, field_name = key.rpartition(".")
        if field_name in ("rank_pattern", "alpha_pattern", "use_dora", "use_rslora") and value:
            raise CheckpointError(f"{path.name}: its PEFT config sets {key}; diffx reads plain LoRA only")
        if field_name == "lora_alpha":
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise CheckpointError(f"{path.name}: its PEFT config's {key} is {value!r}, not a finite number")
            alphas[component] = float(value)
    return alphas


def read_lora(path: str | Path, model: AnyModel, tensors: Mapping[str, Tensor] | None = None) -> Lora:
    """The LoRA file at `path`, each of its layers matched to one of `model`'s and checked (`model` may be built
    without weights: only names and shapes are read from it). One `CheckpointError` names what does not fit: keys
    of no known layer (how many, the first few), a half pair, an integer or non-finite tensor, a rank or a shape
    that does not fit the layer. `tensors`: the file's, read already (matching one file against several models)."""
    path = Path(path)
    tensors = read_state_dict(path) if tensors is None else tensors
    targets = lora_targets(model)
    groups: dict[str, dict[str, Tensor]] = {}
    unknown = []
    for key, tensor in tensors.items():
        split = split_lora_key(key)
        if split is None or split[0] not in targets:
            unknown.append(key)
        else:
            groups.setdefault(split[0], {})[split[1]] = tensor
    if unknown:
        raise CheckpointError(
            f"{path.name}: {len(unknown)} of {len(tensors)} keys name no LoRA layer of this {model.config.name} "
            f"model ({', '.join(unknown[:3])}); is it for another family, or another kind of adapter (LoRA, "
            "LoCon, LoHa, LoKr are read; DoRA, OFT, IA3 are not)?")
    layers, config_alphas = [], peft_alphas(path)
    for name, parts in groups.items():
        target = targets[name]
        try:
            layers.append(_adapter_layer(name, target.module(model), target, parts,
                                         config_alphas.get(name.split(".")[0])))
        except LayerProblem as problem:
            raise CheckpointError(f"{path.name}: {problem}; the file is damaged or for another model") from None
    if len({layer.target for layer in layers}) != len(layers):
        raise CheckpointError(f"{path.name} holds two LoRAs for one layer (under two naming schemes); keep one")
    return Lora(path, tuple(layers), model.network_name)


def lora_summary(lora: Lora, model: AnyModel) -> str:
    """One line: how many layers (of which kind, when not plain LoRA) of which components, the ranks (for `note:`
    lines)."""
    ranks = sorted({layer.rank for layer in lora.layers if layer.rank})  # 0: a LoKr of two full factors
    parts = sorted({layer.target.component.replace("_", " ") for layer in lora.layers})
    kinds = " + ".join(sorted({layer.kind for layer in lora.layers} - {"LoRA"}))
    convs = sum(LayerShape.of(layer.target.module(model), layer.target).kernel != (1, 1) for layer in lora.layers)
    rank = "full rank" if not ranks else f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}-{ranks[-1]}"
    conv = f", {convs} of them convolutions{'' if kinds else ' (LoCon)'}" if convs else ""
    layers = f"{kinds} layers" if kinds else "layers"
    return f"{lora.path.name}: {len(lora.layers)} {layers} of the {' and '.join(parts)}{conv}, {rank}"
