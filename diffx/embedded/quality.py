"""How good is a shapes-world model? Prompt adherence judged by the rule-based judge, and a pointing game.

Adherence: generate one picture per evaluation prompt (seed `seed + i` for prompt i) and let
`judge.adherence` rate each attribute the prompts name (colour, shape, size, position, background,
count, all).

Pointing game (Zhang et al. 2016, "Top-down neural attention by excitation backprop", used for
DAAM maps by Tang et al. 2023): for a two-object prompt, each object's shape word has a DAAM
cross-attention map, averaged over all sampling steps; it scores a hit when the map's maximum,
upsampled to the picture, lies inside that object's bounding box (dilated by `BOX_DILATION`) in the
generated picture. The object is found by the judge's analysis of the picture, matching colour and
shape; an object the model did not draw cannot be pointed at, so it counts as no trial.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffx.embedded.checkpoints import UNET_CHECKPOINT, model_from_checkpoints
from diffx.embedded.judge import DetectedObject, adherence
from diffx.embedded.shapes import object_word_indices, parse_prompt
from diffx.embedded.worlds import WORLDS, World
from diffx.errors import InvalidArgumentError
from diffx.pipeline.generation import generate
from diffx.pipeline.settings import GenerationSettings
from diffx.trace.record import Trace
from diffx.trace.tracer import TraceOptions, generate_traced
from diffx.weights.load import load_model

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

# The targets of the embedded model (fractions of the prompts that name the attribute / of pointing trials).
TARGETS: dict[str, float] = {"colour": 0.95, "shape": 0.85, "position": 0.85, "pointing": 0.80}
# Guidance must matter: the "all" rate at guidance 1 (no guidance) is at least this much below the default's.
GUIDANCE_GAP = 0.10
# Bounding boxes grow by this fraction of the image side on every edge before the pointing test: half a cell
# of the 16x16 attention grid (2 px at 64 px), as far as a peak at the edge cell's centre can stray.
BOX_DILATION = 2 / 64
ATTENTION_ONLY = TraceOptions(record=("attention",))


def pointed_objects(world: World, prompt: str, image: np.ndarray, words: Sequence[str]) -> list[tuple[Any, int, int]]:
    """The trials of a two-object prompt in any world: (drawn object, colour word index, shape word index) for
    each object the picture shows as named (the world's judge finds it, matching colour and shape) whose
    words the prompt's tokens hold (`shapes.object_word_indices`). Other prompts: no trials."""
    wanted = list(world.prompt_objects(prompt))
    if len(wanted) != 2:
        return []
    found = world.analyse(image).objects
    trials = []
    for want, indices in zip(wanted, object_word_indices(list(words), wanted), strict=True):
        drawn = next((obj for obj in found if obj.colour == want.colour and obj.shape == want.shape), None)
        if drawn is not None and indices is not None:
            trials.append((drawn, *indices))
    return trials


def word_heatmap(trace: Trace, word_index: int) -> Tensor:
    """A word's DAAM map (a, a'), the mean of its per-step maps over every step of the trace."""
    return torch.stack([trace.word_maps(step)[word_index] for step in range(trace.num_steps)]).mean(0)


def points_at(heatmap: Tensor, obj: DetectedObject, height: int, width: int) -> bool:
    """Does the maximum of `heatmap` (a, a'), bilinearly upsampled to (height, width), lie in `obj`'s box?"""
    upsampled = F.interpolate(heatmap[None, None].float(), size=(height, width), mode="bilinear",
                              align_corners=False)[0, 0]  # (H, W)
    row, col = divmod(int(upsampled.argmax()), width)
    x, y = (col + 0.5) / width, (row + 0.5) / height  # the pixel centre, as a fraction of the image
    reach = obj.radius + BOX_DILATION
    return abs(x - obj.centre[0]) <= reach and abs(y - obj.centre[1]) <= reach


def pointing_trials(prompt: str, image: np.ndarray, trace: Trace) -> list[bool]:
    """One hit/miss per object of a two-object prompt that the picture shows (see the module docstring)."""
    height, width = image.shape[:2]
    return [points_at(word_heatmap(trace, shape_at), drawn, height, width)
            for drawn, _, shape_at in pointed_objects(WORLDS["shapes"], prompt, image, trace.words)]


def evaluate(model: StableDiffusion, prompts: Sequence[str], guidance: float | None = None, seed: int = 0,
             progress: Callable[[int], None] | None = None) -> dict:
    """Adherence rates and the pointing game for `prompts` at the model's default sampler and steps.

    `guidance`: None = the model's default. Prompt i uses seed `seed + i`. `progress` is called with the
    number of prompts done. Returns a JSON-ready dict: "rates" (`judge.adherence`), "pointing" (hit rate,
    None without trials), "pointing_trials", and the settings and timing.
    """
    if not prompts:
        raise InvalidArgumentError("no prompts to evaluate; pass e.g. shapes.make_eval_prompts(200)")
    images, hits = [], []
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        two_objects = len(parse_prompt(prompt).objects) == 2
        settings = GenerationSettings(prompt=prompt, guidance=guidance, seed=seed + i)
        if two_objects:
            result = generate_traced(model, settings, options=ATTENTION_ONLY)
            hits += pointing_trials(prompt, result.images[0], result.traces[0])
        else:
            result = generate(model, settings)
        images.append(result.images[0])
        if progress is not None:
            progress(i + 1)
    seconds = time.perf_counter() - start
    settings = result.settings[0]
    return {
        "model": model.config.name, "n": len(prompts), "seed": seed,
        "sampler": settings.sampler, "steps": settings.steps, "guidance": settings.guidance,
        "rates": adherence(list(prompts), images),
        "pointing": sum(hits) / len(hits) if hits else None, "pointing_trials": len(hits),
        "seconds_per_image": seconds / len(prompts),
    }


def meets_targets(default: dict, unguided: dict) -> dict[str, bool]:
    """Which targets `evaluate`'s results reach: `default` at the default guidance, `unguided` at guidance 1."""
    reached = {name: default["rates"].get(name, 0.0) >= target for name, target in TARGETS.items()
               if name != "pointing"}
    reached["pointing"] = default["pointing"] is not None and default["pointing"] >= TARGETS["pointing"]
    reached["guidance gap"] = default["rates"]["all"] - unguided["rates"]["all"] >= GUIDANCE_GAP
    return reached


def format_rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def summary_rows(default: dict, unguided: dict) -> list[tuple[str, str, str, str]]:
    """(attribute, rate at the default guidance, rate at guidance 1, target ✓/✗) for `evaluate`'s results,
    with the pointing game and the guidance gap in "all" last: the table of the benchmark and the model card."""
    reached = meets_targets(default, unguided)
    rows = []
    for key in [*default["rates"], "pointing"]:
        ours = default["pointing"] if key == "pointing" else default["rates"][key]
        theirs = unguided["pointing"] if key == "pointing" else unguided["rates"].get(key)
        target = f"≥ {TARGETS[key]:.2f} {'✓' if reached[key] else '✗'}" if key in TARGETS else ""
        rows.append((key, format_rate(ours), format_rate(theirs), target))
    gap = default["rates"]["all"] - unguided["rates"]["all"]
    rows.append(("all: default − guidance 1", f"{gap:+.3f}", "",
                 f"≥ {GUIDANCE_GAP:.2f} {'✓' if reached['guidance gap'] else '✗'}"))
    return rows


def last_line(default: dict) -> str:
    """The benchmark's last line: `color=… shape=… position=… pointing=…` at the default guidance."""
    last = {"color": default["rates"].get("colour"), "shape": default["rates"].get("shape"),
            "position": default["rates"].get("position"), "pointing": default["pointing"]}
    return " ".join(f"{key}={float('nan') if value is None else value:.3f}" for key, value in last.items())


def load_for_evaluation(path: str | Path) -> StableDiffusion:
    """A model folder (`load_model`), or a training folder as it stands (`checkpoints.model_from_checkpoints`)."""
    path = Path(path)
    if (path / UNET_CHECKPOINT).is_file():
        return model_from_checkpoints(path)[0]
    return load_model(path)
