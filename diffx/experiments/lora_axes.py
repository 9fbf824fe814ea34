"""The LoRA axes of a comparison (`diffx compare --x lora=0,0.5,1`, `--x lora-blocks=all,in,mid,out`): columns that
differ by the scale s of the model's LoRAs, or by the U-Net blocks they are kept to.

Neither reloads the model: a LoRA is a forward hook per layer (`weights.lora_apply.AppliedLora`) that reads its
`scale` and `unet_blocks` at every forward, so a column sets them before it runs and the comparison puts them back
after. `lora-blocks` keeps the update in the U-Net's input blocks (the way down), its middle block or its output
blocks (the way up); the text encoders' LoRA layers stay applied in every column.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from diffx.errors import InvalidArgumentError, check_choice, check_finite
from diffx.weights.lora import check_scale
from diffx.weights.lora_apply import UNET_BLOCKS, AppliedLora

BLOCK_CAPTIONS = {"all": "LoRA in every block", "in": "LoRA in U-Net input blocks only",
                  "mid": "LoRA in U-Net middle block only", "out": "LoRA in U-Net output blocks only"}


def _scale(text: str) -> float:
    """A scale s for every LoRA: a number within ±4."""
    value = check_finite("lora", float(text))
    check_scale(f"lora={text}", value)
    return value


def _blocks(text: str) -> str:
    return check_choice("lora-blocks value", text.lower(), UNET_BLOCKS)


# Axis name → how its values are read, and what each value is in words (diffx.experiments.sweeps.COMPARE_AXES takes
# these in).
LORA_AXES = {"lora": _scale, "lora-blocks": _blocks}
LORA_AXIS_TYPES = {_scale: "number", _blocks: "name"}
LORA_EXAMPLES = {"lora": "0,0.5,1", "lora-blocks": "all,in,mid,out"}
AXIS_TITLES = {"lora": "lora (the scale s of every --lora)",
               "lora-blocks": "lora-blocks (the U-Net blocks the LoRA is kept to; text encoders: always applied)"}


def lora_caption(name: str, value: object) -> str:
    """A column's label: "LoRA ×0.5", "LoRA in U-Net input blocks only"."""
    return f"LoRA ×{value:g}" if name == "lora" else BLOCK_CAPTIONS[value]


def check_lora_axes(names: Sequence[str | None], has_lora: bool, network: str = "U-Net") -> None:
    """A LoRA axis among `names` needs a LoRA on the model, and `lora-blocks` one on a U-Net (`network`: the
    denoiser the LoRAs adapt, `AppliedLora.network`): refused in one line otherwise."""
    for name in names:
        if name in LORA_AXES and not has_lora:
            raise InvalidArgumentError(f"the {name} axis varies the model's LoRA, and none is applied; give one with "
                                       f"--lora FILE (e.g. --lora style.safetensors --x {name}="
                                       f"{LORA_EXAMPLES[name]})")
        if name == "lora-blocks" and network != "U-Net":
            raise InvalidArgumentError("the lora-blocks axis keeps a LoRA to a U-Net's input, middle or output "
                                       "blocks; this model's denoiser is an MMDiT (SD3), which has none: vary "
                                       "--x lora=0,0.5,1 instead")


@contextmanager
def lora_state(loras: Sequence[AppliedLora], cell: dict[str, object]) -> Iterator[None]:
    """Within this block every LoRA in `loras` runs as `cell` says (`lora`: its scale; `lora-blocks`: the U-Net
    blocks it is kept to); after it, as it was."""
    before = [(lora.scale, lora.unet_blocks) for lora in loras]
    try:
        for lora in loras:
            lora.scale = float(cell.get("lora", lora.scale))
            lora.unet_blocks = str(cell.get("lora-blocks", lora.unet_blocks))
        yield
    finally:
        for lora, (scale, blocks) in zip(loras, before, strict=True):
            lora.scale, lora.unet_blocks = scale, blocks
