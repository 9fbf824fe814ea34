"""The model axis of a comparison (`diffx compare --x model=shapes-world-2,path/to/flow-model`): columns (or rows)
drawn by different models from the same prompt and seed; and the comparison's cells, resolved at its entrance.

The axis's values are loaded models (the command line names them as `--model` does and loads each once). Every cell
is resolved for its own model before the first one runs (`resolve_cells`): a setting the caller left None is that
model's default — a U-Net v-model keeps its DDIM, a rectified-flow model its flow Euler, each its steps, guidance and
schedule — and a setting the caller gave applies to every model, refused in one line naming the model that cannot
take it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from diffx.errors import InvalidArgumentError
from diffx.experiments.lora_axes import LORA_AXES, check_lora_axes
from diffx.pipeline.settings import GenerationSettings, ResolvedSettings, resolve_settings
from diffx.weights.lora_apply import applied_loras

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

MODEL_AXIS = "model"
MODEL_EXAMPLE = "shapes-world-2,path/to/model-folder"
MODEL_AXIS_TITLE = "model (each with its own defaults for what is not set)"
NOT_SETTINGS = (*LORA_AXES, MODEL_AXIS)  # axes that change the model, not a field of GenerationSettings
BOTH_MODELS = (f"--model and a model axis both choose the model; drop --model (the axis names every model: --x "
               f"{MODEL_AXIS}={MODEL_EXAMPLE})")
CAPTIONED = ("sampler", "steps", "guidance")  # what a model's caption says it ran with, unless an axis says it


@dataclass(frozen=True)
class Cell:
    """One cell of a comparison, resolved: the model it runs, with which settings, its LoRAs how (`lora_axes`)."""

    model: StableDiffusion
    settings: ResolvedSettings
    loras: dict[str, object]


def check_model_axis(model: StableDiffusion | None, axes: Sequence[tuple[str, Sequence] | None]) -> None:
    """Exactly one source of models: `model`, or a model axis among `axes` whose values are loaded models."""
    given = [values for name, values in filter(None, axes) if name == MODEL_AXIS]
    if given and model is not None:
        raise InvalidArgumentError(BOTH_MODELS)
    if not given and model is None:
        raise InvalidArgumentError(f"a comparison needs a model: pass one, or put the models on an axis ({MODEL_AXIS}"
                                   f"={MODEL_EXAMPLE})")
    for value in (v for values in given for v in values):
        if isinstance(value, str):
            raise InvalidArgumentError(f"the {MODEL_AXIS} axis takes loaded models, not the name {value!r}; load "
                                       "each (`diffx.load_model`) and pass the models")


def resolve_cell(model: StableDiffusion, settings: GenerationSettings | ResolvedSettings,
                 named: bool) -> ResolvedSettings:
    """`resolve_settings(model, settings)`; when `named` (the models differ between cells), a refusal starts with the
    model's name, so that the one line says which model cannot take the setting."""
    try:
        return resolve_settings(model, settings)
    except InvalidArgumentError as err:
        if not named:
            raise
        raise InvalidArgumentError(f"model {model.config.name}: {err}") from None


def resolve_cells(model: StableDiffusion | None, settings: GenerationSettings, x: tuple[str, Sequence],
                  y: tuple[str, Sequence] | None) -> list[list[Cell]]:
    """Every combination of the axes' values (rows: `y`'s, columns: `x`'s) resolved for the model it runs (its model
    axis value, else `model`), all before the first generation; a value an axis replaces is checked too, so that a
    typo does not pass unnoticed. The LoRA axes need a LoRA on every model."""
    check_model_axis(model, (x, y))
    axes = [axis for axis in (x, y) if axis is not None]
    combos = [[{x[0]: xv, **({y[0]: yv} if y else {})} for xv in x[1]] for yv in (y[1] if y else [None])]
    models = [combo.get(MODEL_AXIS, model) for row in combos for combo in row]
    loras = [lora for m in models for lora in applied_loras(m)]
    check_lora_axes([name for name, _ in axes], all(applied_loras(m) for m in models),
                    "U-Net" if all(lora.network == "U-Net" for lora in loras) else "MMDiT")
    named = any(name == MODEL_AXIS for name, _ in axes)
    cells = [[Cell(combo.get(MODEL_AXIS, model),
                   resolve_cell(combo.get(MODEL_AXIS, model),
                                replace(settings, **{k: v for k, v in combo.items() if k not in NOT_SETTINGS}), named),
                   {k: v for k, v in combo.items() if k in LORA_AXES}) for combo in row] for row in combos]
    for name, _ in axes:
        if name not in NOT_SETTINGS and getattr(settings, name) is not None:
            first = cells[0][0]
            resolve_cell(first.model, replace(first.settings, **{name: getattr(settings, name)}), named)
    return cells


def model_caption(cell: Cell, varied: Collection[str | None]) -> str:
    """A model's column (or row) label from its first cell: its configuration's name, then the sampler, steps and
    guidance it ran with ("shapes-world-2\\nddim, 25 steps, w 3"), leaving out what an axis varies (its own labels
    say it)."""
    resolved = cell.settings
    parts = {"sampler": resolved.sampler, "steps": f"{resolved.steps} steps", "guidance": f"w {resolved.guidance:g}"}
    shown = [parts[name] for name in CAPTIONED if name not in varied]
    return cell.model.config.name + ("\n" + ", ".join(shown) if shown else "")
