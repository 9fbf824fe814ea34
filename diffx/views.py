"""Views of diffusion: the pictures and animations that show what happens at every step.

Each view turns recorded data (a `Trace`, generations, an input image) into PIL images, or into lists
of equal-size frames for a GIF; `save_animation` and `write_trace_views` write them through the atomic
writers of `diffx.render.io`. The `diffx` command line is a thin layer over these functions.

Step numbers here are the ones shown in captions: 1 = the first step, N = the last ("step 3/25").
Panels show latents with the fast linear preview (`latent_to_rgb_fast`, Rombach et al. 2022's VAE is
close to linear in colour) or, with `preview="vae"`, real VAE decodes of the predicted x̂0.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.table import Table
from torch import Tensor

from diffx.errors import InvalidArgumentError, OutputPathError, check_choice
from diffx.models.tokenizer import CONTEXT_LENGTH, END_TOKEN, START_TOKEN, TokenizedPrompt
from diffx.pipeline import (
    Generation,
    GenerationSettings,
    decode_latents,
    encode_image,
    generate,
    image_to_tensor,
    schedule_for,
)
from diffx.render import (
    caption_bar,
    latent_to_rgb_fast,
    load_image,
    load_mask,
    make_grid,
    normalize_maps,
    overlay,
    plot_schedules,
    save_gif,
    save_mp4,
    save_png,
    tensor_to_image,
    to_pil,
    upscale,
    visualize_noise,
)
from diffx.render.colormap import NORMALIZE_SCALES
from diffx.render.image import PictureLike
from diffx.samplers import StepRecord, sample
from diffx.schedules import BETA_SCHEDULES, NoiseSchedule, q_sample
from diffx.trace import Trace, TraceOptions

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion
    from diffx.weights import ModelSource

PREVIEWS = ("fast", "vae")
ATTENTION_SCALES = NORMALIZE_SCALES
ANIMATION_SUFFIXES = (".gif", ".mp4")
PANEL_RANGE = (128, 256)  # default panel width: the image width, clamped to this range
ATTENTION_ALPHA = 0.6  # heatmap opacity over the x̂0 preview
GRID_STEPS = 8  # grids over steps show this many steps by default
WORDS_PER_ROW = 6  # attention tiles per frame row (more words wrap to further rows)
NOISE_FRAMES = 40  # frames of the x_0 → x_T animation
DECODE_BATCH = 8  # VAE decodes per batch
TRACE_RECORD_X0 = TraceOptions(record=("latents", "x0"))  # what the x_t / x̂0 views need

Progress = Callable[[StepRecord], None]


# ---------------------------------------------------------------------------------------------------
# Pictures of one step


def panel_size(width: int, height: int, panel: int | None = None) -> tuple[int, int]:
    """Display (width, height) of one panel: `panel` pixels wide (default: the image width clamped to
    PANEL_RANGE), with the image's aspect ratio."""
    side = panel or max(PANEL_RANGE[0], min(PANEL_RANGE[1], width))
    return side, max(1, round(side * height / width))


def fit_panel(picture: PictureLike, size: tuple[int, int]) -> np.ndarray:
    """Resize for display: nearest when enlarging (a latent pixel stays a visible square), else bilinear."""
    return upscale(picture, size, "nearest" if size[0] >= to_pil(picture).width else "bilinear")


def latent_preview(latent: Tensor, rgb_factors: Sequence[Sequence[float]] | None = None) -> np.ndarray:
    """Fast RGB preview (h, w, 3) of one scaled latent (C, h, w), without the VAE.

    `rgb_factors`: C rows of (R, G, B) weights, optionally followed by a bias row (the layout
    `fit_latent_rgb_factors` solves for), as a model ships them in `trace.meta["latent_rgb_factors"]`;
    None = SD1.5's factors.
    """
    if rgb_factors is None:
        return latent_to_rgb_fast(latent)
    table = torch.tensor(rgb_factors, dtype=torch.float32)  # (C, 3) or (C + 1, 3)
    if table.shape[0] == latent.shape[0] + 1:
        return latent_to_rgb_fast(latent, table[:-1], table[-1])
    return latent_to_rgb_fast(latent, table)


def _require(trace: Trace, *keys: str) -> None:
    missing = [key for key in keys if key not in trace.tensors]
    if missing:
        raise InvalidArgumentError(
            f"the trace has no {', '.join(missing)}; record it (TraceOptions(record=...) or `diffx trace`)")


def _indices(count: int, steps: Sequence[int] | None) -> list[int]:
    """Step numbers (1..count) → 0-based indices; None → GRID_STEPS steps spread from the first to the last."""
    if steps is None:
        if count <= GRID_STEPS:
            return list(range(count))
        return sorted({round(i * (count - 1) / (GRID_STEPS - 1)) for i in range(GRID_STEPS)})
    for step in steps:
        if not 1 <= step <= count:
            raise InvalidArgumentError(f"step {step} is out of range: the trace has {count} steps; pick 1 to {count}")
    return [step - 1 for step in steps]


def format_timestep(t: float) -> str:
    """981 for an integer timestep, 981.4 for a fractional one (Euler and Heun on a linspace grid)."""
    return f"{t:.0f}" if float(t).is_integer() else f"{t:.1f}"


def step_caption(trace: Trace, index: int) -> str:
    """"step 3/25 · t=921 · σ=5.41" for the 0-based step `index`."""
    t = float(trace.tensors["timesteps"][index])
    sigma = float(trace.tensors["sigmas"][index])
    return f"step {index + 1}/{trace.num_steps} · t={format_timestep(t)} · σ={sigma:.3g}"


def missing_decodes(trace: Trace) -> list[int]:
    """Step numbers whose x̂0 has no stored VAE decode (`preview="vae"` needs a model for those)."""
    stored = {int(s) for s in trace.tensors.get("decoded_steps", [])}
    return [index + 1 for index in range(trace.num_steps) if index not in stored]


def _device(model: StableDiffusion) -> torch.device:
    return next(model.vae.parameters()).device


def _decode(model: StableDiffusion, latents: Tensor) -> list[np.ndarray]:
    """VAE decodes of scaled latents (N, 4, h, w) in batches of DECODE_BATCH."""
    return [image for chunk in latents.float().to(_device(model)).split(DECODE_BATCH)
            for image in decode_latents(model, chunk)]


def x0_pictures(trace: Trace, indices: Sequence[int], preview: str = "fast",
                model: StableDiffusion | None = None) -> list[np.ndarray]:
    """The predicted clean image x̂0 at 0-based step `indices`: the fast latent preview (h, w, 3), or VAE
    decodes (H, W, 3), taken from the trace where it stores them and decoded with `model` otherwise."""
    check_choice("preview", preview, PREVIEWS)
    _require(trace, "x0")
    x0 = trace.tensors["x0"]
    if preview == "fast":
        return [latent_preview(x0[i], trace.meta.get("latent_rgb_factors")) for i in indices]
    stored = {}
    if "decoded_x0" in trace.tensors:
        stored = {int(s): image.numpy() for s, image in zip(trace.tensors["decoded_steps"], trace.tensors["decoded_x0"],
                                                           strict=True)}
    missing = sorted({i for i in indices if i not in stored})
    if missing and model is None:
        numbers = ", ".join(str(i + 1) for i in missing[:5]) + (", …" if len(missing) > 5 else "")
        raise InvalidArgumentError(f"the trace holds no VAE decode of x̂0 at step {numbers}; "
                                   "pass --model to decode them, or use --preview fast")
    if missing:
        stored.update(zip(missing, _decode(model, x0[missing]), strict=True))
    return [stored[i] for i in indices]


def attention_maps(trace: Trace, indices: Sequence[int], scale: str = "shared") -> np.ndarray:
    """Per-word cross-attention maps (steps, words, a, a') in [0, 1] for display.

    "shared": one range over every map returned (all words, all steps), so brightness compares across
    words and time; "word": each map stretched on its own, to see its shape even when it is faint.
    """
    check_choice("attention scale", scale, ATTENTION_SCALES)
    _require(trace, "attention")
    if not trace.words:
        raise InvalidArgumentError("the prompt has no words to show attention for; give a prompt")
    maps = torch.stack([trace.word_maps(i) for i in indices])  # (S, W, a, a')
    return normalize_maps(maps.flatten(0, 1), scale).reshape(maps.shape)


def _labelled_panels(rows: list[list[tuple[np.ndarray, str]]], size: tuple[int, int]) -> Image.Image:
    """Rows of (picture, label) panels, each resized to `size`, the label under each panel."""
    cells = [[fit_panel(picture, size) for picture, _ in row] for row in rows]
    labels = [[label for _, label in row] for row in rows]
    return make_grid(cells, cell_labels=labels, cell_size=size)


# ---------------------------------------------------------------------------------------------------
# Views of a trace


def _trace_panel(trace: Trace, panel: int | None) -> tuple[int, int]:
    height, width = trace.tensors["image"].shape[:2] if "image" in trace.tensors else trace.tensors["x0"].shape[-2:]
    return panel_size(width, height, panel)


def trace_frames(trace: Trace, preview: str = "fast", attn_scale: str = "shared",
                 model: StableDiffusion | None = None, panel: int | None = None) -> list[Image.Image]:
    """One frame per recorded step: x_t, x̂0, ε̂, ε_c − ε_u (when recorded) and one attention heatmap
    per prompt word over the x̂0 picture, with a caption "step i/N · t=… · σ=…". Frames share one size."""
    _require(trace, "latents", "x0")
    indices = list(range(trace.num_steps))
    size = _trace_panel(trace, panel)
    rgb_factors = trace.meta.get("latent_rgb_factors")
    x0 = [fit_panel(picture, size) for picture in x0_pictures(trace, indices, preview, model)]
    tensors = trace.tensors
    has_guidance = "eps_cond" in tensors and "eps_uncond" in tensors
    maps = attention_maps(trace, indices, attn_scale) if "attention" in tensors and trace.words else None
    frames = []
    for i in indices:
        main = [(latent_preview(tensors["latents"][i], rgb_factors), "x_t"), (x0[i], "x̂0")]
        if "eps" in tensors:
            main.append((visualize_noise(tensors["eps"][i]), "ε̂"))
        if has_guidance:
            main.append((visualize_noise(tensors["eps_cond"][i].float() - tensors["eps_uncond"][i].float()),
                         "ε_c − ε_u"))
        rows = [main]
        if maps is not None:
            tiles = [(overlay(x0[i], maps[i, w], ATTENTION_ALPHA), word) for w, word in enumerate(trace.words)]
            per_row = max(len(main), min(len(tiles), WORDS_PER_ROW))
            rows += [tiles[start:start + per_row] for start in range(0, len(tiles), per_row)]
        frames.append(caption_bar(_labelled_panels(rows, size), step_caption(trace, i)))
    return frames


def _prompt_title(trace: Trace) -> str:
    prompt = trace.meta.get("prompt", "")
    return f"“{prompt}”" if prompt else "unconditional (empty prompt)"


def _step_grid(trace: Trace, indices: list[int], rows: list[tuple[str, list[np.ndarray]]], title: str,
               size: tuple[int, int]) -> Image.Image:
    """Rows of pictures over steps, one column per step, labelled with its timestep."""
    timesteps = trace.tensors["timesteps"]
    return make_grid([[fit_panel(p, size) for p in pictures] for _, pictures in rows],
                     row_labels=[label for label, _ in rows],
                     col_labels=[f"t={format_timestep(float(timesteps[i]))}" for i in indices],
                     title=title, cell_size=size)


def attention_grid(trace: Trace, steps: Sequence[int] | None = None, attn_scale: str = "shared",
                   preview: str = "fast", model: StableDiffusion | None = None,
                   panel: int | None = None) -> Image.Image:
    """Word × timestep grid: each word's cross-attention heatmap (rows) at the chosen steps (columns,
    default GRID_STEPS spread over the run), over the x̂0 picture of that step; the prompt as title."""
    indices = _indices(trace.num_steps, steps)
    maps = attention_maps(trace, indices, attn_scale)  # (S, W, a, a')
    size = _trace_panel(trace, panel)
    x0 = [fit_panel(picture, size) for picture in x0_pictures(trace, indices, preview, model)]
    rows = [(word, [overlay(x0[s], maps[s, w], ATTENTION_ALPHA) for s in range(len(indices))])
            for w, word in enumerate(trace.words)]
    return _step_grid(trace, indices, rows, f"{_prompt_title(trace)}: cross-attention per word", size)


def denoise_frames(trace: Trace, preview: str = "fast", model: StableDiffusion | None = None,
                   panel: int | None = None) -> list[Image.Image]:
    """One frame per step with x_t and x̂0 side by side and the step caption."""
    _require(trace, "latents")
    indices = list(range(trace.num_steps))
    size = _trace_panel(trace, panel)
    x0 = x0_pictures(trace, indices, preview, model)
    rgb_factors = trace.meta.get("latent_rgb_factors")
    return [caption_bar(_labelled_panels([[(latent_preview(trace.tensors["latents"][i], rgb_factors), "x_t"),
                                           (x0[i], "x̂0")]], size), step_caption(trace, i))
            for i in indices]


def denoise_grid(trace: Trace, steps: Sequence[int] | None = None, preview: str = "fast",
                 model: StableDiffusion | None = None, panel: int | None = None) -> Image.Image:
    """Two rows over the chosen steps: the model input x_t and the predicted x̂0."""
    _require(trace, "latents")
    indices = _indices(trace.num_steps, steps)
    rgb_factors = trace.meta.get("latent_rgb_factors")
    rows = [("x_t", [latent_preview(trace.tensors["latents"][i], rgb_factors) for i in indices]),
            ("x̂0", x0_pictures(trace, indices, preview, model))]
    return _step_grid(trace, indices, rows, f"{_prompt_title(trace)}: denoising", _trace_panel(trace, panel))


# ---------------------------------------------------------------------------------------------------
# The forward process on a user image


@dataclass
class NoiseViews:
    """What `noise_views` draws."""

    grid: Image.Image  # rows: schedules (latent space: preview and decode rows), columns: timesteps
    frames: list[Image.Image]  # x_0 → x_T, one column per schedule
    schedule_plot: Image.Image  # ᾱ_t, √ᾱ_t, √(1 − ᾱ_t), log-SNR; the sampler's timesteps marked


def sampler_timesteps(sampler: str, schedule: NoiseSchedule, steps: int, spacing: str = "leading",
                      steps_offset: int = 1, karras: bool = False) -> list[float]:
    """The timesteps at which `sampler` calls the model (Heun: twice per step), found by running it
    on a 1-pixel latent with an ε-model that predicts zeros."""
    visited: list[float] = []
    sample(sampler, lambda x, t: torch.zeros_like(x), torch.zeros(1, 1, 1, 1), schedule, steps, spacing=spacing,
           steps_offset=steps_offset, karras=karras, generator=torch.Generator().manual_seed(0),
           callback=lambda record: visited.append(record.timestep))
    return visited


def noise_views(image: PictureLike, schedules: Sequence[str] = BETA_SCHEDULES,
                timesteps: Sequence[int] = (0, 100, 250, 500, 750, 999), latent_space: bool = False,
                model: StableDiffusion | None = None, seed: int = 0, sampler: str | None = None,
                steps: int | None = None, spacing: str | None = None, karras: bool = False,
                num_frames: int = NOISE_FRAMES, panel: int | None = None) -> NoiseViews:
    """The forward process x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (DDPM eq. 4) applied to `image`.

    One ε (drawn from `seed`) serves every schedule and timestep, so the pictures differ only by the
    schedule. In latent space (needs `model`) the image is VAE-encoded, noised as a latent, and shown both
    with the fast preview and VAE-decoded. With a model, its own training schedule is used for the
    schedule of the same name. `sampler` (+ `steps`, `spacing`, `karras`, default: the model's or SD1.5's)
    marks the timesteps that sampler visits on the schedule plot.
    """
    if not schedules:
        raise InvalidArgumentError("no schedules given; choose from: " + ", ".join(BETA_SCHEDULES))
    for name in schedules:
        check_choice("schedule", name, BETA_SCHEDULES)
    num_train_timesteps = model.config.scheduler.num_train_timesteps if model else 1000
    for t in timesteps:
        if not 0 <= t < num_train_timesteps:
            raise InvalidArgumentError(f"timestep {t} is out of range; pick 0 to {num_train_timesteps - 1}")
    if latent_space and model is None:
        raise InvalidArgumentError("noising in latent space needs a model's VAE; pass a model (--model)")
    tables = {name: schedule_for(model, name) if model else NoiseSchedule.create(name, num_train_timesteps)
              for name in schedules}
    generator = torch.Generator().manual_seed(seed)
    if latent_space:
        factor = model.config.vae.downsample_factor
        width, height = to_pil(image).size
        if width % factor or height % factor:
            raise InvalidArgumentError(f"the image is {width}x{height}; latent space needs sides that are "
                                       f"multiples of {factor}, e.g. --size {width // factor * factor or factor}")
        x0 = encode_image(model, image, generator)  # (1, 4, h, w) scaled latent
    else:
        x0 = image_to_tensor(image)  # (1, 3, H, W) in [-1, 1]
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)

    def pictures(schedule: NoiseSchedule, ts: Sequence[int]) -> list[list[np.ndarray]]:
        """x_t for each t, as rows: [pixels] or [latent preview, VAE decode]."""
        t = torch.tensor(list(ts), dtype=torch.long)
        x_t = q_sample(schedule, x0.expand(len(ts), -1, -1, -1), t, noise.expand(len(ts), -1, -1, -1))
        if not latent_space:
            return [[tensor_to_image(x.clamp(-1, 1)) for x in x_t]]
        rgb_factors = getattr(model.config.vae, "latent_rgb_factors", None)
        return [[latent_preview(z, rgb_factors) for z in x_t], _decode(model, x_t)]

    kinds = ["latent preview", "VAE decode"] if latent_space else [""]
    size = panel_size(*to_pil(image).size, panel)
    cells, row_labels = [], []
    for name, schedule in tables.items():
        for kind, row in zip(kinds, pictures(schedule, timesteps), strict=True):
            cells.append([fit_panel(p, size) for p in row])
            row_labels.append(f"{name} · {kind}" if kind else name)
    space = " in latent space" if latent_space else ""
    grid = make_grid(cells, row_labels=row_labels, col_labels=[f"t={t}" for t in timesteps], cell_size=size,
                     title=f"forward process x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε{space}")

    frame_ts = sorted({round(float(t)) for t in np.linspace(0, num_train_timesteps - 1, max(2, num_frames))})
    columns = [pictures(schedule, frame_ts) for schedule in tables.values()]  # [schedule][kind][frame]
    frames = []
    for f, t in enumerate(frame_ts):
        frame = make_grid([[fit_panel(columns[s][k][f], size) for s in range(len(columns))] for k in range(len(kinds))],
                          row_labels=kinds if latent_space else None, col_labels=list(tables), cell_size=size)
        frames.append(caption_bar(frame, f"t={t}"))

    marked, plot_title = None, None
    if sampler is not None:
        config = model.config if model else None
        steps = steps or (config.default_steps if config else 50)
        spacing = spacing or (config.scheduler.timestep_spacing if config else "leading")
        offset = config.scheduler.steps_offset if config else 1
        marked = [round(t) for t in sampler_timesteps(sampler, tables[schedules[0]], steps, spacing, offset, karras)]
        plot_title = f"timesteps {sampler} visits in {steps} steps ({spacing} spacing{', Karras σ' if karras else ''})"
    plot = plot_schedules({name: s.alphas_cumprod for name, s in tables.items()}, marked, plot_title)
    return NoiseViews(grid=grid, frames=frames, schedule_plot=plot)


# ---------------------------------------------------------------------------------------------------
# Sweeps and comparisons


@dataclass
class CfgSweep:
    """What `cfg_sweep` makes: the grid, one traced generation per guidance weight, side-by-side frames."""

    grid: Image.Image
    generations: list[Generation]
    frames: list[Image.Image]


def format_guidance(w: float) -> str:
    return f"w = {w:g}"


def cfg_sweep(model: StableDiffusion, settings: GenerationSettings, scales: Sequence[float],
              rows_steps: Sequence[int] | None = None, preview: str = "fast", progress: Progress | None = None,
              panel: int | None = None, record: TraceOptions = TRACE_RECORD_X0) -> CfgSweep:
    """Classifier-free guidance ε̂ = ε_u + w (ε_c − ε_u) (Ho & Salimans 2022, eq. 6) at several w.

    Same seed, sampler and steps for every column; the grid's first row is the results, then one row
    of x̂0 per step number in `rows_steps`. The frames show x̂0 of every w side by side at each step,
    then the results. `record`: what each column's trace keeps (at least latents and x0; everything
    for an HTML report).
    """
    if not scales:
        raise InvalidArgumentError("no guidance scales given; pass e.g. 1,3,7.5")
    per_scale = [replace(settings, guidance=float(w)) for w in scales]
    for scale_settings in per_scale:  # check everything before the first (slow) generation
        resolved = scale_settings.resolved(model)
    evaluations = sampler_timesteps(resolved.sampler, schedule_for(model, resolved.schedule), resolved.steps,
                                    resolved.spacing, model.config.scheduler.steps_offset, resolved.karras)
    row_indices = _indices(len(evaluations), rows_steps) if rows_steps else []
    generations = [generate(model, s, trace=record, progress=progress) for s in per_scale]
    traces = [g.traces[0] for g in generations]
    first = traces[0]
    size = _trace_panel(first, panel)
    col_labels = [format_guidance(w) for w in scales]
    results = [fit_panel(g.images[0], size) for g in generations]
    all_steps = list(range(first.num_steps))
    x0 = [[fit_panel(p, size) for p in x0_pictures(trace, all_steps, preview, model)] for trace in traces]

    rows, row_labels = [results], ["result"]
    for i in row_indices:
        rows.append([pictures[i] for pictures in x0])
        t = format_timestep(float(first.tensors["timesteps"][i]))
        row_labels.append(f"x̂0, step {i + 1}/{first.num_steps}, t={t}")
    resolved = generations[0].settings[0]
    title = f"{_prompt_title(first)} · {resolved.sampler}, {resolved.steps} steps, seed {resolved.seed}"
    grid = make_grid(rows, row_labels=row_labels, col_labels=col_labels, title=title, cell_size=size)

    frames = [caption_bar(make_grid([[pictures[i] for pictures in x0]], col_labels=col_labels, cell_size=size),
                          f"x̂0, {step_caption(first, i)}") for i in all_steps]
    frames.append(caption_bar(make_grid([results], col_labels=col_labels, cell_size=size), "result"))
    return CfgSweep(grid=grid, generations=generations, frames=frames)


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise InvalidArgumentError(f"karras takes true/false values, got {text!r}")
    return value in ("true", "1", "yes", "on")


# Settings a comparison can vary, and how to read their values from text.
COMPARE_AXES: dict[str, Callable[[str], object]] = {
    "sampler": str, "steps": int, "schedule": str, "guidance": float, "seed": int, "karras": _parse_bool,
    "spacing": str,
}


def parse_axis(text: str) -> tuple[str, list]:
    """"sampler=ddim,euler" → ("sampler", ["ddim", "euler"]), each value converted to the setting's type."""
    name, _, values = text.partition("=")
    name = name.strip()
    check_choice("comparison axis", name, tuple(COMPARE_AXES))
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not items:
        raise InvalidArgumentError(f"axis {name!r} has no values; write it as {name}=A,B,C")
    try:
        return name, [COMPARE_AXES[name](item) for item in items]
    except ValueError:
        raise InvalidArgumentError(f"axis {name!r} has a value that is not a {COMPARE_AXES[name].__name__}: "
                                   f"{values!r}") from None


@dataclass
class Comparison:
    """What `compare` makes: the grid and the generations, rows × columns (y values × x values)."""

    grid: Image.Image
    generations: list[list[Generation]]


def compare(model: StableDiffusion, settings: GenerationSettings,
            x: tuple[str, Sequence] = ("sampler", ["ddim", "euler", "dpmpp_2m"]),
            y: tuple[str, Sequence] | None = ("steps", [5, 10, 25]), progress: Progress | None = None,
            panel: int | None = None) -> Comparison:
    """One image per combination of two settings (any of COMPARE_AXES), everything else fixed.

    Columns follow `x` = (setting, values), rows `y` (None = one row). Each cell is labelled with the
    number of model evaluations and the time it took.
    """
    x_name, x_values = x
    y_name, y_values = y if y is not None else (None, [None])
    check_choice("comparison axis", x_name, tuple(COMPARE_AXES))
    if y_name is not None:
        check_choice("comparison axis", y_name, tuple(COMPARE_AXES))
        if y_name == x_name:
            raise InvalidArgumentError(f"both axes vary {x_name}; choose two different settings")
    if not x_values or not y_values:
        raise InvalidArgumentError("each comparison axis needs at least one value")
    # Check every combination before the first (slow) generation.
    combos = [[replace(settings, **{x_name: xv, **({y_name: yv} if y_name else {})}) for xv in x_values]
              for yv in y_values]
    for row in combos:
        for cell in row:
            cell.resolved(model)

    evaluations = [0]

    def count(record: StepRecord) -> None:
        evaluations[0] += 1
        if progress is not None:
            progress(record)

    generations, cell_labels = [], []
    for row in combos:
        generations.append([])
        cell_labels.append([])
        for cell in row:
            evaluations[0] = 0
            start = time.perf_counter()
            generations[-1].append(generate(model, cell, progress=count))
            cell_labels[-1].append(f"{evaluations[0]} evals · {time.perf_counter() - start:.1f} s")
    height, width = generations[0][0].images[0].shape[:2]
    size = panel_size(width, height, panel)
    grid = make_grid([[fit_panel(g.images[0], size) for g in row] for row in generations],
                     row_labels=[str(v) for v in y_values] if y_name else None,
                     col_labels=[str(v) for v in x_values], cell_labels=cell_labels,
                     title=f"“{settings.prompt}”" if settings.prompt else "unconditional (empty prompt)",
                     x_axis_title=x_name, y_axis_title=y_name, cell_size=size)
    return Comparison(grid=grid, generations=generations)


# ---------------------------------------------------------------------------------------------------
# Inputs


def strength_for_timestep(t: int, num_train_timesteps: int = 1000) -> float:
    """The image-to-image strength that starts denoising near timestep `t` (SDEdit, Meng et al. 2022):
    strength s runs the last ⌊s·N⌋ of N steps, whose first timestep is about s·T."""
    if not 0 <= t < num_train_timesteps:
        raise InvalidArgumentError(f"timestep {t} is out of range; pick 0 to {num_train_timesteps - 1}")
    return (t + 1) / num_train_timesteps


def load_init_image(image_path: str | os.PathLike, size: tuple[int, int],
                    mask_path: str | os.PathLike | None = None) -> tuple[Image.Image, Tensor | None]:
    """An input image resized to `size` = (width, height), and its inpainting mask (1 = repaint).

    The mask must have the image file's own size (it was drawn on that picture); both are then
    resized together, the mask with nearest neighbours so it stays 0/1.
    """
    original = load_image(image_path)
    mask = None
    if mask_path is not None:
        mask = load_mask(mask_path, original.size)  # (H, W)
        mask = F.interpolate(mask[None, None], size=(size[1], size[0]), mode="nearest")[0, 0]
    image = original if original.size == tuple(size) else original.resize(tuple(size), Image.Resampling.LANCZOS)
    return image, mask


# ---------------------------------------------------------------------------------------------------
# Tables


def _span(positions: list[int]) -> str:
    return str(positions[0]) if len(positions) == 1 else f"{positions[0]}–{positions[-1]}"


def tokens_table(tokenized: TokenizedPrompt) -> Table:
    """How CLIP reads a prompt: each word → its BPE tokens → their ids → their positions in the 77-token
    window, with the start, end and padding tokens, and what the 77-token cap cut off."""
    table = Table(title=f"{tokenized.num_tokens} of {CONTEXT_LENGTH} tokens used",
                  caption=f"cut by the {CONTEXT_LENGTH}-token limit: {tokenized.truncated_text!r}"
                  if tokenized.truncated_tokens else None, caption_style="yellow")
    for column in ("word", "BPE tokens", "ids", "positions"):
        table.add_column(column)
    last = tokenized.num_tokens - 1
    table.add_row("(start)", START_TOKEN, str(tokenized.ids[0]), "0", style="dim")
    for index, word in enumerate(tokenized.words):
        positions = tokenized.word_positions(index)
        if positions:
            table.add_row(word, " ".join(tokenized.tokens[p] for p in positions),
                          " ".join(str(tokenized.ids[p]) for p in positions), _span(positions))
    table.add_row("(end)", END_TOKEN, str(tokenized.ids[last]), str(last), style="dim")
    if last < CONTEXT_LENGTH - 1:
        table.add_row("(padding)", f"{END_TOKEN} × {CONTEXT_LENGTH - 1 - last}", str(tokenized.ids[-1]),
                      _span([last + 1, CONTEXT_LENGTH - 1]), style="dim")
    if tokenized.truncated_tokens:
        table.add_row("(cut)", " ".join(tokenized.truncated_tokens), "", "", style="yellow")
    return table


def models_table(sources: Sequence[ModelSource]) -> Table:
    """The models found on disk (`diffx.weights.find_models()`), the default one first."""
    table = Table(title="models", caption=None if sources else
                  "no model found; pass --model PATH, set DIFFX_MODEL or put a checkpoint in data/")
    table.add_column("")
    table.add_column("path", overflow="fold")  # a path is only useful whole
    table.add_column("format")
    table.add_column("description")
    for number, source in enumerate(sources):
        table.add_row("default" if number == 0 else "", str(source.path), source.format, source.description)
    return table


# ---------------------------------------------------------------------------------------------------
# Files


def companion_path(path: str | os.PathLike, name: str) -> Path:
    """A file next to `path` named after it: companion_path("out.gif", "attention") = out_attention.png."""
    path = Path(path)
    return path.with_name(f"{path.stem}_{name}.png")


def animation_format(path: str | os.PathLike) -> str:
    """The animation format of a file name: ".gif" or ".mp4" (anything else is an error)."""
    return check_choice("animation format", Path(path).suffix.lower(), ANIMATION_SUFFIXES)


def check_outputs(paths: Sequence[str | os.PathLike | None], force: bool = False,
                  animation: str | os.PathLike | None = None) -> None:
    """Fail before any work if an output (`paths` and `animation`) exists (without `force`), is a folder,
    or its folder is not writable, or if `animation` is not a .gif/.mp4. `None`s (outputs not asked for)
    are skipped."""
    if animation is not None:
        animation_format(animation)
    for path in (Path(p) for p in [animation, *paths] if p is not None):
        if path.is_dir():
            raise OutputPathError(f"output path {path} is a folder; give a file name")
        if path.exists() and not force:
            raise OutputPathError(f"output file {path} already exists; pass --force to overwrite it")
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent  # the nearest folder that exists: missing ones are created on write
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise OutputPathError(f"cannot write to folder {folder}; choose a writable output path")


def save_animation(frames: Sequence[PictureLike], path: str | os.PathLike, frame_ms: int = 100,
                   force: bool = False) -> Path:
    """Write frames as a GIF or an MP4 (by the file suffix), `frame_ms` milliseconds per frame."""
    if frame_ms <= 0:
        raise InvalidArgumentError(f"frame duration must be positive, got {frame_ms} ms")
    if animation_format(path) == ".mp4":
        return save_mp4(frames, path, fps=max(1, round(1000 / frame_ms)), force=force)
    return save_gif(frames, path, duration_ms=frame_ms, force=force)


def write_trace_views(trace: Trace, animation: str | os.PathLike, image: str | os.PathLike,
                      preview: str = "fast", attn_scale: str = "shared", model: StableDiffusion | None = None,
                      frame_ms: int = 100, force: bool = False, panel: int | None = None) -> list[Path]:
    """Write the trace's frames as an animation, the final image, and (when the prompt has words) the
    word × timestep attention grid as `<image>_attention.png`. Returns the paths written."""
    attention = "attention" in trace.tensors and bool(trace.words)
    grid_path = companion_path(image, "attention") if attention else None
    check_outputs([image, grid_path], force, animation)
    _require(trace, "image")
    frames = trace_frames(trace, preview, attn_scale, model, panel)
    grid = attention_grid(trace, attn_scale=attn_scale, preview=preview, model=model, panel=panel) if attention \
        else None
    written = [save_animation(frames, animation, frame_ms, force),
               save_png(trace.tensors["image"].numpy(), image, force)]
    if grid is not None:
        written.append(save_png(grid, grid_path, force))
    return written
