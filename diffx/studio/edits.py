"""The studio's edits: from a finished run, change a word and run prompt-to-prompt (Hertz et al. 2022) —
the source, the edit without injection and the edit with the source's attention injected, side by side,
as `diffx edit` draws them (`diffx.experiments.prompt_to_prompt`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from diffx.errors import InvalidArgumentError, elide
from diffx.experiments.prompt_to_prompt import Edit, check_edit_prompt, check_fraction, prompt_to_prompt
from diffx.experiments.prompt_to_prompt_views import edit_title
from diffx.pipeline.settings import ResolvedSettings
from diffx.report.columns import data_uri
from diffx.sampling.samplers import StepRecord
from diffx.studio.engine import MAX_PROMPT_CHARS
from diffx.studio.runs import Emit

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

RUNS = ("source", "plain", "injected")  # the three runs of an edit, in the order they are made


@dataclass(frozen=True)
class EditRequest:
    """A checked edit of a finished run's `settings`: the new prompt, τ (cross-attention), τ_self and re-weights."""

    settings: ResolvedSettings
    target: str
    tau: float
    self_tau: float
    reweight: dict[str, float]


def _fraction(body: dict, name: str, default: float) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be a number from 0 to 1, got {elide(str(value), 30)}")
    return check_fraction(name, float(value))


def parse_edit(settings: ResolvedSettings, body: dict) -> EditRequest:
    """A page's edit request on a run with `settings`, every value checked before anything runs."""
    target = body.get("to")
    if not isinstance(target, str) or not target.strip():
        raise InvalidArgumentError("to must be the edited prompt, e.g. the same prompt with one word changed")
    if len(target) > MAX_PROMPT_CHARS:
        raise InvalidArgumentError(f"the edited prompt has {len(target)} characters; keep it under {MAX_PROMPT_CHARS}")
    check_edit_prompt(target)  # its word weights, as `diffx edit --to` checks them: before the run is queued
    reweight = body.get("reweight") or {}
    if not isinstance(reweight, dict) or not all(
            isinstance(word, str) and isinstance(factor, (int, float)) and not isinstance(factor, bool)
            and math.isfinite(factor) for word, factor in reweight.items()):
        raise InvalidArgumentError("reweight must map words of the edited prompt to finite factors, "
                                   "e.g. {\"red\": 2}")
    return EditRequest(settings, target, _fraction(body, "tau", 0.6), _fraction(body, "self_tau", 0.0),
                       {word: float(factor) for word, factor in reweight.items()})


def edit_work(model: StableDiffusion, request: EditRequest) -> Callable[[Emit, Callable[[], None]], Edit]:
    """The studio run of an edit: "progress" after each of the 3 × N sampler steps, then "edit" with the three
    final pictures (VAE decodes, as `diffx edit` shows them) and the title `diffx edit` gives them."""

    def work(emit: Emit, check: Callable[[], None]) -> Edit:
        count = {"done": 0}
        total = 3 * request.settings.steps

        def progress(_record: StepRecord) -> None:
            check()
            count["done"] += 1
            run = RUNS[min(2, (count["done"] - 1) * 3 // total)]
            emit("progress", {"done": count["done"], "total": total, "run": run})

        edit = prompt_to_prompt(model, request.settings, request.target, tau=request.tau,
                                self_tau=request.self_tau, reweight=request.reweight, progress=progress)
        title, subtitle = edit_title(edit)
        pictures = {name: data_uri(getattr(edit, name).images[0]) for name in RUNS}
        emit("edit", {"title": title, "subtitle": subtitle, "pictures": pictures, "to": request.target,
                      "tau": request.tau, "self_tau": request.self_tau})
        return edit

    return work
