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
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from diffx.errors import CheckpointError
from diffx.models.configs import ModelConfig, sd15, sd21_base, sdxl_base, shapes_world_2
from diffx.models.stable_diffusion import StableDiffusion, build_without_weights
from diffx.weights.load import config_family, read_state_dict
from diffx.weights.lora import Lora, LoraSpec, read_lora
from diffx.weights.lora_layers import AdapterLayer
from diffx.weights.lora_metadata import header_metadata, key_format, training_facts, trigger_words

# The layouts a LoRA is matched against when no model is given, in this order (SD2.x 768-v and 512-base share one;
# shapes-world-2: the embedded model's).
LORA_FAMILIES: tuple[Callable[[], ModelConfig], ...] = (sd15, sd21_base, sdxl_base, shapes_world_2)
UNET_GROUPS = {"in": "U-Net input blocks (down)", "mid": "U-Net middle block", "out": "U-Net output blocks (up)",
               "other": "U-Net embeddings, final convolution"}
TEXT_LAYER = re.compile(r"(?:layers|resblocks)\.(\d+)\.")


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
    family: str  # SD1.x, SD2.x or SDXL
    recognised: bool  # True: the family was recognised from the file's layers (no model given)
    format: str
    network_module: str | None
    ranks: tuple[int, ...]
    alphas: tuple[float, ...]
    training: dict[str, str]
    trigger_words: tuple[tuple[str, int], ...]
    parts: dict[str, int]  # kind of layer → how many the file adapts
    layers: tuple[LayerUpdate, ...]
    unet_blocks: tuple[BlockUpdate, ...]  # every input, middle and output block, in the order they run
    text_layers: tuple[BlockUpdate, ...]  # every layer of each text encoder the file adapts, first to last

    @property
    def total_norm(self) -> float:
        """‖ΔW‖_F of every adapted layer together."""
        return sum(layer.norm ** 2 for layer in self.layers) ** 0.5

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "path": str(self.path), "total_norm": self.total_norm,
                "trigger_words": [{"tag": tag, "count": count} for tag, count in self.trigger_words]}


def _part(layer: AdapterLayer, module: nn.Module) -> str:
    """The kind of layer: U-Net attention, feed-forward, transformer projection, convolution or other; a text
    encoder's attention, MLP or other."""
    path = layer.target.module_path
    if layer.target.component == "text_encoder":
        encoder = _text_encoder_name(layer)
        kind = "attention" if ".self_attn." in path or ".attn." in path else "MLP" if ".mlp." in path else "other"
        return f"{encoder} {kind}"
    if ".attn1." in path or ".attn2." in path:
        return "U-Net attention (" + ("self" if ".attn1." in path else "cross") + ")"
    if ".ff." in path:
        return "U-Net feed-forward"
    if path.endswith((".proj_in", ".proj_out")):
        return "U-Net transformer proj_in / proj_out"
    return "U-Net convolution" if isinstance(module, nn.Conv2d) else "U-Net other linear (embeddings)"


def _text_encoder_name(layer: AdapterLayer) -> str:
    """"text encoder", or SDXL's "text encoder 1" (CLIP-L, `embedders.0.`) / "text encoder 2" (bigG)."""
    path = layer.target.module_path
    return f"text encoder {int(path.split('.')[1]) + 1}" if path.startswith("embedders.") else "text encoder"


def _block_key(layer: AdapterLayer) -> tuple[str, str]:
    """(group, label) of the U-Net block or text-encoder layer a layer sits in."""
    path = layer.target.module_path
    if layer.target.component == "text_encoder":
        encoder = _text_encoder_name(layer)
        found = TEXT_LAYER.search(path)
        return encoder, f"{_short(encoder)} layer {found.group(1)}" if found else f"{_short(encoder)} other"
    section = layer.target.unet_section
    head = path.split(".")
    return UNET_GROUPS[section], _unet_label(head[0], int(head[1]) if section in ("in", "out") else None)


def _short(encoder: str) -> str:
    return encoder.replace("text encoder", "TE").replace(" ", "")


def _unet_label(name: str, index: int | None) -> str:
    labels = {"input_blocks": "input block", "output_blocks": "output block", "middle_block": "middle block",
              "time_embed": "time embedding", "label_emb": "SDXL y embedding", "out": "final convolution"}
    return labels.get(name, name) + ("" if index is None else f" {index}")


def _unet_slots(model: StableDiffusion) -> list[tuple[str, str]]:
    """(group, label) of every U-Net block in the order they run, embeddings first and the final convolution last."""
    unet = model.unet
    slots = [(UNET_GROUPS["other"], _unet_label("time_embed", None))]
    if hasattr(unet, "label_emb"):
        slots.append((UNET_GROUPS["other"], _unet_label("label_emb", None)))
    slots += [(UNET_GROUPS["in"], _unet_label("input_blocks", i)) for i in range(len(unet.input_blocks))]
    slots.append((UNET_GROUPS["mid"], _unet_label("middle_block", None)))
    slots += [(UNET_GROUPS["out"], _unet_label("output_blocks", i)) for i in range(len(unet.output_blocks))]
    return [*slots, (UNET_GROUPS["other"], _unet_label("out", None))]


def _text_slots(model: StableDiffusion) -> list[tuple[str, str]]:
    """(group, label) of every text-encoder layer, first to last, each encoder's other layers after them."""
    config = model.config
    encoders = [("text encoder", config.text_encoder)] if config.text_encoder_2 is None else \
        [("text encoder 1", config.text_encoder), ("text encoder 2", config.text_encoder_2)]
    slots = []
    for name, encoder in encoders:
        slots += [(name, f"{_short(name)} layer {i}") for i in range(encoder.num_hidden_layers)]
        slots.append((name, f"{_short(name)} other"))
    return slots


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


def _match(path: Path, tensors: dict[str, Tensor], configs: Sequence[ModelConfig]) -> tuple[StableDiffusion, Lora]:
    """The first configuration (built without weights) whose layers the file's keys and shapes fit, and the file
    read against it; one `CheckpointError` when none does, with the first one's reason."""
    reasons = []
    for config in configs:
        skeleton = build_without_weights(config)
        try:
            return skeleton, read_lora(path, skeleton, tensors)
        except CheckpointError as error:
            reasons.append(str(error).removeprefix(f"{path.name}: "))
    tried = ", ".join(f"{config.name} ({config_family(config)})" for config in configs)
    raise CheckpointError(f"{path.name}: its layers fit none of {tried}; pass --model to match it against another "
                          f"model. First: {reasons[0]}")


def inspect_lora(path: str | Path, model: StableDiffusion | Sequence[ModelConfig] | None = None,
                 scale: float = 1.0) -> LoraReport:
    """Read the LoRA file at `path` and measure it at scale s (`LoraSpec.check`'s rules: finite, within ±4).

    `model`: a model to match it against (built without weights is enough: only names and shapes are read), or
    configurations tried in turn, the first whose layers the file fits taken; None: SD1.x, SD2.x, SDXL's and
    the embedded model's (`LORA_FAMILIES`). A file that fits none is refused in one line (`CheckpointError`)."""
    spec = LoraSpec(Path(path), scale)
    spec.check()
    tensors = read_state_dict(spec.path)
    if isinstance(model, StableDiffusion):
        matched, lora = model, read_lora(spec.path, model, tensors)
    else:
        matched, lora = _match(spec.path, tensors, list(model) if model is not None else
                               [family() for family in LORA_FAMILIES])
    metadata = header_metadata(spec.path)
    updates, parts = [], {}
    for layer in lora.layers:
        part = _part(layer, layer.target.module(matched))
        parts[part] = parts.get(part, 0) + 1
        updates.append(LayerUpdate(_layer_name(layer), part, _block_key(layer)[1], layer.rank,
                                   layer.factor * layer.rank, abs(spec.scale) * layer.norm()))
    core = set(UNET_GROUPS.values()) - {UNET_GROUPS["other"]}
    touched = {_text_encoder_name(layer) for layer in lora.layers if layer.target.component == "text_encoder"}
    return LoraReport(
        path=spec.path, scale=spec.scale, model=matched.config.name, family=config_family(matched.config),
        recognised=not isinstance(model, StableDiffusion), format=key_format(tensors.keys()),
        network_module=metadata.get("ss_network_module") or ("PEFT LoRA" if "lora_adapter_metadata" in metadata
                                                               else None),
        ranks=tuple(sorted({update.rank for update in updates})),
        alphas=tuple(sorted({update.alpha for update in updates})),
        training=training_facts(metadata), trigger_words=tuple(trigger_words(metadata)),
        parts=dict(sorted(parts.items())), layers=tuple(updates),
        unet_blocks=_blocks(_unet_slots(matched), updates, lambda group, label: group in core),
        text_layers=_blocks(_text_slots(matched), updates,
                            lambda group, label: group in touched and not label.endswith(" other")))
