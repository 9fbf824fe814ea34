"""Inspect a LoRA file: what it says about itself, which layers it adapts, and how strongly it changes each U-Net
block and text-encoder layer (`inspect_lora` → `LoraReport`; `diffx lora` prints it and draws the strengths).

The strength of one layer's update is the Frobenius norm of what the layer adds to its weights,

    ‖ΔW‖_F = |s| · (alpha / r) · ‖B A‖_F          A = down (r, in), B = up (out, r)

for a convolution with A flattened to (r, in·kh·kw) and B to (out, r): the kernel ΔW = B A reshaped to
(out, in, kh, kw), as the loader applies it (`diffx.weights.lora`); a LoHa's and a LoKr's the same way from their
own ΔW (`diffx.weights.lora_layers`: each kind's `norm()`). A block's strength is the root of the sum of
its layers' squares: the norm of all its updates together. The order is the one the blocks run in — the input
blocks (down), the middle block, the output blocks (up) — and the text encoders' layers from first to last.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from diffx.errors import CheckpointError
from diffx.models.any_model import AnyConfig, AnyModel, build_model
from diffx.models.configs import sd15, sd21_base, sdxl_base, shapes_world_2
from diffx.models.sd3 import StableDiffusion3, sd3_medium_model, sd35_large_model, sd35_medium_model
from diffx.models.stable_diffusion import StableDiffusion
from diffx.weights.load import config_family, read_state_dict
from diffx.weights.lora import Lora, LoraSpec, read_lora
from diffx.weights.lora_blocks import (
    CORE_GROUPS,
    block_key,
    layer_part,
    network_slots,
    text_encoder_name,
    text_slots,
)
from diffx.weights.lora_layers import AdapterLayer
from diffx.weights.lora_metadata import header_metadata, key_format, training_facts, trigger_words

# The layouts a LoRA is matched against when no model is given, in this order (SD2.x 768-v and 512-base share one;
# shapes-world-2: the embedded model's; SD3's three sizes differ in their MMDiT).
LORA_FAMILIES: tuple[Callable[[], AnyConfig], ...] = (sd15, sd21_base, sdxl_base, shapes_world_2, sd3_medium_model,
                                                      sd35_medium_model, sd35_large_model)


@dataclass(frozen=True)
class LayerUpdate:
    """One adapted layer: its module (component.path; [q]/[k]/[v] for a third of OpenCLIP's stacked projection),
    its kind, the block it sits in, rank r, alpha and ‖ΔW‖_F at the report's scale."""

    name: str
    part: str
    block: str
    rank: int
    alpha: float
    norm: float


@dataclass(frozen=True)
class BlockUpdate:
    """A U-Net block or a text-encoder layer: its label, its group (input blocks, text encoder 2, …), the root of
    the sum of its layers' ‖ΔW‖_F², and how many of its layers the LoRA adapts (0: untouched, norm 0)."""

    label: str
    group: str
    norm: float
    layers: int


@dataclass(frozen=True)
class LoraReport:
    """What `inspect_lora` finds in a LoRA file (`to_dict`: the same as JSON-ready values)."""

    path: Path
    scale: float
    model: str  # the configuration the file was matched against (its name)
    family: str  # SD1.x, SD2.x, SDXL or SD3
    network: str  # the denoiser: U-Net or MMDiT
    recognised: bool  # True: the family was recognised from the file's layers (no model given)
    format: str
    network_module: str | None
    ranks: tuple[int, ...]
    alphas: tuple[float, ...]
    training: dict[str, str]
    trigger_words: tuple[tuple[str, int], ...]
    parts: dict[str, int]  # kind of layer → how many the file adapts
    layers: tuple[LayerUpdate, ...]
    network_blocks: tuple[BlockUpdate, ...]  # every block of the denoiser, in the order they run
    text_layers: tuple[BlockUpdate, ...]  # every layer of each text encoder the file adapts, first to last

    @property
    def total_norm(self) -> float:
        """‖ΔW‖_F of every adapted layer together."""
        return sum(layer.norm ** 2 for layer in self.layers) ** 0.5

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "path": str(self.path), "total_norm": self.total_norm,
                "trigger_words": [{"tag": tag, "count": count} for tag, count in self.trigger_words]}


def _blocks(slots: list[tuple[str, str]], updates: list[LayerUpdate], keep: Callable[[str, str], bool]
            ) -> tuple[BlockUpdate, ...]:
    """A `BlockUpdate` per slot that `keep(group, label)` or any update falls in, in the slots' order."""
    squares: dict[tuple[str, str], list[float]] = {}
    groups = {label: group for group, label in slots}
    for update in updates:
        if update.block in groups:  # a U-Net layer's among the text encoders' slots, or the other way round: not here
            squares.setdefault((groups[update.block], update.block), []).append(update.norm ** 2)
    return tuple(BlockUpdate(label, group, sum(squares.get((group, label), [])) ** 0.5,
                             len(squares.get((group, label), [])))
                 for group, label in slots if (group, label) in squares or keep(group, label))


def _layer_name(layer: AdapterLayer) -> str:
    target = layer.target
    if target.rows is None:
        return f"{target.component}.{target.module_path}"
    start, stop = target.rows
    return f"{target.component}.{target.module_path}[{'qkv'[start // (stop - start)]}]"


def _match(path: Path, tensors: dict[str, Tensor], configs: Sequence[AnyConfig]) -> tuple[AnyModel, Lora]:
    """The first configuration (built without weights) whose layers the file's keys and shapes fit, and the file
    read against it; one `CheckpointError` when none does, with the first one's reason."""
    reasons = []
    for config in configs:
        skeleton = build_model(config, weights=False)
        try:
            return skeleton, read_lora(path, skeleton, tensors)
        except CheckpointError as error:
            reasons.append(str(error).removeprefix(f"{path.name}: "))
    tried = ", ".join(f"{config.name} ({config_family(config)})" for config in configs)
    raise CheckpointError(f"{path.name}: its layers fit none of {tried}; pass --model to match it against another "
                          f"model. First: {reasons[0]}")


def inspect_lora(path: str | Path, model: AnyModel | Sequence[AnyConfig] | None = None,
                 scale: float = 1.0) -> LoraReport:
    """Read the LoRA file at `path` and measure it at scale s (`LoraSpec.check`'s rules: finite, within ±4).

    `model`: a model to match it against (built without weights is enough: only names and shapes are read), or
    configurations tried in turn, the first whose layers the file fits taken; None: SD1.x, SD2.x, SDXL's and
    the embedded model's (`LORA_FAMILIES`). A file that fits none is refused in one line (`CheckpointError`)."""
    spec = LoraSpec(Path(path), scale)
    spec.check()
    tensors = read_state_dict(spec.path)
    given = isinstance(model, StableDiffusion | StableDiffusion3)
    if given:
        matched, lora = model, read_lora(spec.path, model, tensors)
    else:
        matched, lora = _match(spec.path, tensors, list(model) if model is not None else
                               [family() for family in LORA_FAMILIES])
    metadata = header_metadata(spec.path)
    updates, parts = [], {}
    for layer in lora.layers:
        part = layer_part(layer, layer.target.module(matched))
        parts[part] = parts.get(part, 0) + 1
        updates.append(LayerUpdate(_layer_name(layer), part, block_key(layer)[1], layer.rank,
                                   layer.factor * layer.rank, abs(spec.scale) * layer.norm()))
    touched = {text_encoder_name(layer) for layer in lora.layers if layer.target.component == "text_encoder"}
    return LoraReport(
        path=spec.path, scale=spec.scale, model=matched.config.name, family=config_family(matched.config),
        network=matched.network_name, recognised=not given, format=key_format(tensors.keys()),
        network_module=metadata.get("ss_network_module") or ("PEFT LoRA" if "lora_adapter_metadata" in metadata
                                                               else None),
        ranks=tuple(sorted({update.rank for update in updates})),
        alphas=tuple(sorted({update.alpha for update in updates})),
        training=training_facts(metadata), trigger_words=tuple(trigger_words(metadata)),
        parts=dict(sorted(parts.items())), layers=tuple(updates),
        network_blocks=_blocks(network_slots(matched), updates, lambda group, label: group in CORE_GROUPS),
        text_layers=_blocks(text_slots(matched), updates,
                            lambda group, label: group in touched and not label.endswith(" other")))
