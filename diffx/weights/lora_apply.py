"""Apply LoRAs on the fly: a forward hook per adapted layer adds s · (alpha / r) · B(A(x)) to the layer's output.

    y = W x + Σ_i s_i · (alpha_i / r_i) · B_i A_i x          (Hu et al. 2021, eq. 3; one term per LoRA)

(a LoHa's or LoKr's ΔW x in its own form: `diffx.weights.lora_layers`).

Nothing is merged into W: the weights stay the checkpoint's (a trace's model identity, `save_model` and a second
LoRA see them unchanged), a scale change is one attribute (`AppliedLora.scale`), and `remove()` takes the LoRA
off. The price is two thin matrix products (or a convolution and a 1x1 one) per adapted layer per forward, small
beside the layer's own at ranks of 4-128. Several LoRAs stack: each adds its own hook.

For OpenCLIP's stacked input projection (SD2.x, SDXL's bigG) a LoRA trained on transformers' q_proj, k_proj or
v_proj adds to its third of the output rows (`StackedProjection`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from diffx.models.any_model import AnyModel, build_model
from diffx.models.configs import ModelConfig
from diffx.weights.discovery import ModelSource, resolve_model_source
from diffx.weights.load import load_model, read_config
from diffx.weights.lora import Lora, LoraSpec, lora_summary, read_lora
from diffx.weights.lora_layers import AdapterLayer

UNET_BLOCKS = ("all", "in", "mid", "out")  # `AppliedLora.unet_blocks`: the U-Net sections a LoRA may be kept to


@dataclass
class AppliedLora:
    """A LoRA attached to a model's layers; `scale` (s) and `unet_blocks` are read at every forward, so changing
    them needs no reload. `unet_blocks`: "all", or the one U-Net section whose layers keep their update — "in"
    (input blocks), "mid" (middle block), "out" (output blocks); the U-Net's other layers then add nothing, while
    the text encoders' always do."""

    path: Path
    scale: float
    handles: list[RemovableHandle] = field(default_factory=list)
    unet_blocks: str = "all"
    network: str = "U-Net"  # the denoiser it adapts: "U-Net", or "MMDiT" (SD3: no sections to keep it to)

    def remove(self) -> None:
        """Take the LoRA off every layer it adapts."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


class _LoraHook:
    """The forward hook of one adapted layer: output + s · (alpha / r) · ΔW x (`LoraLayer.update`: B(A(x)); a
    LoKr's or a dense LoHa's their own way)."""

    def __init__(self, layer: AdapterLayer, owner: AppliedLora, module: nn.Module):
        self.layer, self.owner = layer, owner
        self.convolution = module if isinstance(module, nn.Conv2d) else None
        self.section = layer.target.unet_section

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        blocks = self.owner.unet_blocks
        if self.owner.scale == 0 or self.section is not None and blocks != "all" and self.section != blocks:
            return output  # the layer's own output, untouched: equal to the model without this LoRA
        # In the activations' dtype and device (bf16 on the CPU fast path), whatever the model moved to.
        update = self.layer.update(args[0], self.convolution) * (self.owner.scale * self.layer.factor)
        if self.layer.target.rows is not None:  # W_q, W_k or W_v of a stacked projection: its rows only
            start, stop = self.layer.target.rows
            update = F.pad(update, (start, output.shape[-1] - stop))
        return output + update


def attach_lora(model: AnyModel, lora: Lora, scale: float = 1.0) -> AppliedLora:
    """Hook `lora` (read against this model, or against one of its config built without weights) onto `model`."""
    applied = AppliedLora(lora.path, scale, network=lora.network)
    for layer in lora.layers:
        module = layer.target.module(model)
        applied.handles.append(module.register_forward_hook(_LoraHook(layer, applied, module)))
    return applied


def applied_loras(model: AnyModel) -> list[AppliedLora]:
    """The LoRAs attached to `model` (by `attach_lora`, `apply_lora`, `load_model_with_loras`), found through their
    hooks: the handles whose `scale` and `unet_blocks` an experiment changes between runs."""
    owners: dict[int, AppliedLora] = {}
    for component in model.modules().values():
        for module in component.modules():
            for hook in module._forward_hooks.values():  # torch has no public list of a module's hooks
                if isinstance(hook, _LoraHook):
                    owners.setdefault(id(hook.owner), hook.owner)
    return list(owners.values())


def apply_lora(model: AnyModel, path: str | Path, scale: float = 1.0) -> AppliedLora:
    """Read the LoRA file at `path`, check it against `model` and apply it with scale s (`LoraSpec.check`'s rules:
    finite, within ±4); returns the handle whose `scale` can change and which `remove()`s it."""
    spec = LoraSpec(Path(path), scale)
    spec.check()
    return attach_lora(model, read_lora(spec.path, model), spec.scale)



def read_loras(source: ModelSource, loras: Sequence[LoraSpec], config: ModelConfig | None = None) -> list[Lora]:
    """Each LoRA file checked (`LoraSpec.check`) and read against the configuration of the model at `source`
    (`read_config`: a folder's config, a .safetensors header; `config` as `load_model` takes it) built without
    weights, so a LoRA for another family or a damaged one fails in seconds, not after a multi-gigabyte load."""
    for spec in loras:
        spec.check()
    if not loras:
        return []
    skeleton = build_model(read_config(source, config), weights=False)
    return [read_lora(spec.path, skeleton) for spec in loras]


def load_model_with_loras(source: str | Path | ModelSource | None, loras: Sequence[LoraSpec], *,
                          config: ModelConfig | None = None, note: Callable[[str], None] | None = None,
                          **options: Any) -> AnyModel:
    """`load_model(source, config=config, note=note, **options)` with `loras` applied, every file read and checked
    first (`read_loras`), before any weight is read. The model's `source` then names the LoRAs and their scales
    (a trace records it); `note(line)` hears one line per LoRA.
    """
    found = source if isinstance(source, ModelSource) else resolve_model_source(source)
    read = read_loras(found, loras, config)
    model = load_model(found, config=config, note=note, **options)
    for lora, spec in zip(read, loras, strict=True):
        attach_lora(model, lora, spec.scale)
        model.source += f" + LoRA {spec.path.name}:{spec.scale:g}"
        if note is not None:
            note(f"LoRA {lora_summary(lora, model)}, scale {spec.scale:g}")
    return model
