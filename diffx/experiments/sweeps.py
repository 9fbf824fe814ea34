"""Experiments that run the pipeline and draw what they find: the forward process on a picture, a
classifier-free guidance sweep, and a comparison grid over any two settings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from diffx.errors import InvalidArgumentError, check_choice, check_finite
from diffx.experiments.lora_axes import (
    AXIS_TITLES,
    LORA_AXES,
    LORA_AXIS_TYPES,
    LORA_EXAMPLES,
    lora_caption,
    lora_state,
)
from diffx.experiments.model_axis import MODEL_AXIS, MODEL_AXIS_TITLE, MODEL_EXAMPLE, Cell, model_caption, resolve_cells
from diffx.images import image_to_tensor, tensor_to_image
from diffx.pipeline.codec import decode_latents, encode_image
from diffx.pipeline.denoiser import grid_for, schedule_from_config
from diffx.pipeline.generation import Generation, generate
from diffx.pipeline.observers import ImageRun, Observer
from diffx.pipeline.settings import GenerationSettings, check_seed, resolve_settings
from diffx.render import caption_bar, latent_to_rgb_fast, make_grid, plot_schedules, to_pil
from diffx.render.image import PictureLike
from diffx.render.latents import noisy_picture
from diffx.sampling.flow import FLOW_SCHEDULE, flow_sample, flow_schedule
from diffx.sampling.grids import GridSpec, sampling_grid
from diffx.sampling.samplers import StepCallback
from diffx.sampling.schedules import BETA_SCHEDULES, NoiseSchedule, q_sample
from diffx.trace.tracer import TraceOptions, generate_traced
from diffx.views.steps import (
    X0_LABELS,
    fit_panel,
    format_timestep,
    panel_size,
    prompt_title,
    resolve_preview,
    step_caption,
    step_indices,
    trace_panel_size,
    x0_pictures,
)
from diffx.weights.lora_apply import applied_loras

if TYPE_CHECKING:
    from diffx.models.configs import ModelConfig
    from diffx.models.sd3 import SD3Config
    from diffx.models.stable_diffusion import StableDiffusion


NOISE_FRAMES = 20  # frames of the x_0 → x_T animation
NOISE_SCHEDULES = (*BETA_SCHEDULES, FLOW_SCHEDULE)  # what `noise_views` draws: the β schedules and the flow path
LATENT_MIXTURE_LABEL = "latent preview, scaled to fit"  # √ᾱ x_0 + √(1−ᾱ) ε in preview colours (`noisy_picture`)


TRACE_RECORD_X0 = TraceOptions(record=("latents", "x0"))  # what the x̂0-only views need (cfg-sweep, edit)


@dataclass
class NoiseViews:
    """What `noise_views` draws."""

    grid: Image.Image  # rows: schedules (latent space: preview and decode rows), columns: timesteps
    frames: list[Image.Image]  # x_0 → x_T, one column per schedule
    schedule_plot: Image.Image  # ᾱ_t, √ᾱ_t, √(1 − ᾱ_t), log-SNR; the sampler's timesteps marked
    visits: list[int] | None = None  # the timesteps the sampler calls the model at, marked on the plot


def default_noise_schedules(config: ModelConfig | SD3Config | None) -> tuple[str, ...]:
    """The rows `diffx noise` draws when none are named: the β schedules, or a flow model's path beside SD's."""
    if config is not None and config.scheduler.beta_schedule == FLOW_SCHEDULE:
        return (FLOW_SCHEDULE, "scaled_linear")
    return BETA_SCHEDULES


def noise_views(image: PictureLike, schedules: Sequence[str] = BETA_SCHEDULES,
                timesteps: Sequence[int] = (0, 100, 250, 500, 750, 999), latent_space: bool = False,
                model: StableDiffusion | None = None, seed: int = 0, sampler: str | None = None,
                steps: int | None = None, spacing: str | None = None, karras: bool = False,
                num_frames: int = NOISE_FRAMES, panel: int | None = None,
                config: ModelConfig | None = None) -> NoiseViews:
    """The forward process x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (DDPM eq. 4) applied to `image`.

    One ε (drawn from `seed`) serves every schedule and timestep, so the pictures differ only by the
    schedule. In latent space (needs `model`) the image is VAE-encoded, noised as a latent, and shown both
    VAE-decoded and as the mixture √ᾱ x_0 + √(1 − ᾱ) ε in the fast preview's colours, scaled to fit
    (`render.latents.noisy_picture`, as the trace's x_t). With a model — or only its `config`
    (`weights.load.read_config`: no weights needed in pixel space) — its own training schedule is used for the
    schedule of the same name, and the others are rescaled to zero terminal SNR if its is. `sampler` (+ `steps`,
    `spacing`, `karras`, default: the model's scheduler's, else SD1.5's: 50 steps, leading) marks the timesteps
    that sampler visits on the schedule plot, whose title names the spacing and whose scheduler it is.
    """
    if not schedules:
        raise InvalidArgumentError("no schedules given; choose from: " + ", ".join(NOISE_SCHEDULES))
    for name in schedules:
        check_choice("schedule", name, NOISE_SCHEDULES)
    config = model.config if model is not None else config
    num_train_timesteps = config.scheduler.num_train_timesteps if config else 1000
    for t in timesteps:
        if not 0 <= t < num_train_timesteps:
            raise InvalidArgumentError(f"timestep {t} is out of range; pick 0 to {num_train_timesteps - 1}")
    if latent_space and model is None:
        raise InvalidArgumentError("noising in latent space needs a model's VAE; pass a model (--model)")
    tables = {name: schedule_from_config(config.scheduler, name) if config else
              flow_schedule() if name == FLOW_SCHEDULE else NoiseSchedule.create(name) for name in schedules}
    marked, plot_title = _visited(config, tables[schedules[0]], sampler, steps, spacing, karras)  # checked first
    generator = torch.Generator().manual_seed(check_seed(seed))
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
    if latent_space:
        # The preview of x_t itself would multiply its unit noise by the preview's steep factors and clip; x_t is
        # drawn instead as the mixture it is, of x_0's preview and ε (the trace's x_t view, `noisy_picture`).
        x0_preview = image_to_tensor(latent_to_rgb_fast(x0[0], **model.config.vae.latent_preview()))[0]  # (3, h, w)

    def pictures(schedule: NoiseSchedule, ts: Sequence[int]) -> list[list[np.ndarray]]:
        """x_t for each t, as rows: [pixels] or [latent preview, VAE decode]."""
        t = torch.tensor(list(ts), dtype=torch.long)
        if schedule.beta_schedule == FLOW_SCHEDULE:  # rectified flow's straight line (SD3), not the VP mixture
            x_t = flow_sample(x0.expand(len(ts), -1, -1, -1), t, noise.expand(len(ts), -1, -1, -1),
                              num_train_timesteps)
        else:
            x_t = q_sample(schedule, x0.expand(len(ts), -1, -1, -1), t, noise.expand(len(ts), -1, -1, -1))
        if not latent_space:
            return [[tensor_to_image(x.clamp(-1, 1)) for x in x_t]]
        return [[noisy_picture(x0_preview, noise[0], float(schedule.alphas_cumprod[step])) for step in ts],
                decode_latents(model, x_t)]

    kinds = [LATENT_MIXTURE_LABEL, "VAE decode"] if latent_space else [""]
    smooth = [False, True] if latent_space else [True]  # latent grids keep their squares, pictures do not
    size = panel_size(*to_pil(image).size, panel)
    clean = [fit_panel(image, size, smooth=True)] * len(kinds)  # x_0 itself, before any noise
    cells, row_labels = [], []
    for name, schedule in tables.items():
        for kind, row, is_picture, x_0 in zip(kinds, pictures(schedule, timesteps), smooth, clean, strict=True):
            cells.append([x_0] + [fit_panel(p, size, smooth=is_picture) for p in row])
            label = "flow: x_t = (1−s) x_0 + s ε, s = (t+1)/T" if name == FLOW_SCHEDULE else name
            row_labels.append(f"{label} · {kind}" if kind else label)
    space = " in latent space" if latent_space else ""
    scheduler = _scheduler_phrase(config)
    # t counts noising steps from 0: x_t at t = 0 is already one step of noise (ᾱ_0 < 1), so x_0 comes first.
    grid = make_grid(cells, row_labels=row_labels, col_labels=["x_0 (the picture)"] + [f"t={t}" for t in timesteps],
                     cell_size=size, title=f"forward process{space} · β schedules: x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε · "
                                           f"{scheduler}")

    frame_ts = sorted({round(float(t)) for t in np.linspace(0, num_train_timesteps - 1, max(2, num_frames))})
    columns = [pictures(schedule, frame_ts) for schedule in tables.values()]  # [schedule][kind][frame]
    frames = []
    for f, t in enumerate(frame_ts):
        frame = make_grid([[fit_panel(columns[s][k][f], size, smooth=smooth[k]) for s in range(len(columns))]
                           for k in range(len(kinds))],
                          row_labels=kinds if latent_space else None, col_labels=list(tables), cell_size=size)
        frames.append(caption_bar(frame, f"t={t}"))

    plot = plot_schedules({name: s.alphas_cumprod for name, s in tables.items()}, marked, plot_title)
    return NoiseViews(grid=grid, frames=frames, schedule_plot=plot, visits=marked)


def _scheduler_phrase(config: ModelConfig | None) -> str:
    """Whose scheduler the noise views follow, in words: the model's (and whether its β end at zero SNR) or SD's."""
    if config is None:
        return "SD's scheduler (no model given)"
    rescaled = ", every β schedule rescaled to zero terminal SNR" if config.scheduler.rescale_betas_zero_snr else ""
    return f"{config.name}'s scheduler{rescaled}"


def _visited(config: ModelConfig | None, schedule: NoiseSchedule, sampler: str | None, steps: int | None,
             spacing: str | None, karras: bool) -> tuple[list[int] | None, str]:
    """The timesteps `sampler` visits on `schedule` and the plot's title saying so and whose scheduler it is
    (without a sampler: None and the scheduler alone). Names in any case, as `resolve_settings` reads them."""
    scheduler = _scheduler_phrase(config)
    if sampler is None:
        return None, scheduler
    sampler = sampler.lower()
    steps = steps if steps is not None else (config.default_steps if config else 50)
    spacing = (spacing if spacing is not None else config.scheduler.timestep_spacing if config else "leading").lower()
    offset = config.scheduler.steps_offset if config else 1
    visits = sampling_grid(GridSpec(sampler, steps, spacing, karras), schedule, steps_offset=offset)
    marked = [round(t) for t in visits.model_timesteps()]
    return marked, (f"timesteps {sampler} visits in {steps} steps: t = {marked[0]} … {marked[-1]} ({spacing} "
                    f"spacing{', Karras σ' if karras else ''})\n{scheduler}")


@dataclass
class CfgSweep:
    """What `cfg_sweep` makes: the grid, one traced generation per guidance weight, side-by-side frames."""

    grid: Image.Image
    generations: list[Generation]
    frames: list[Image.Image]


def format_guidance(w: float) -> str:
    return f"w = {w:g}"


def cfg_sweep(model: StableDiffusion, settings: GenerationSettings, scales: Sequence[float],
              rows_steps: Sequence[int] | None = None, preview: str = "auto", progress: StepCallback | None = None,
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
    per_scale = [resolve_settings(model, s) for s in per_scale]  # everything checked before the first generation
    evaluations = grid_for(model, per_scale[0]).model_timesteps()
    row_indices = step_indices(len(evaluations), rows_steps) if rows_steps else []
    generations = [generate_traced(model, s, options=record, progress=progress) for s in per_scale]
    traces = [g.traces[0] for g in generations]
    first = traces[0]
    size = trace_panel_size(first, panel)
    col_labels = [format_guidance(w) for w in scales]
    results = [fit_panel(g.images[0], size, smooth=True) for g in generations]
    all_steps = list(range(first.num_steps))
    preview = resolve_preview(preview, first, model)
    x0 = [[fit_panel(p, size, smooth=preview != "fast") for p in x0_pictures(trace, all_steps, preview, model)]
          for trace in traces]

    rows, row_labels = [results], ["result"]
    for i in row_indices:
        rows.append([pictures[i] for pictures in x0])
        t = format_timestep(float(first.tensors["timesteps"][i]))
        row_labels.append(f"{X0_LABELS[preview]}, step {i + 1}/{first.num_steps}, t={t}")
    resolved = generations[0].settings[0]
    title = f"{prompt_title(first)} · {resolved.sampler}, {resolved.steps} steps, seed {resolved.seed}"
    grid = make_grid(rows, row_labels=row_labels, col_labels=col_labels, title=title, cell_size=size)

    frames = [caption_bar(make_grid([[pictures[i] for pictures in x0]], col_labels=col_labels, cell_size=size),
                          f"{X0_LABELS[preview]}, {step_caption(first, i)}") for i in all_steps]
    frames.append(caption_bar(make_grid([results], col_labels=col_labels, cell_size=size), "result"))
    return CfgSweep(grid=grid, generations=generations, frames=frames)


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise InvalidArgumentError(f"karras takes true/false values, got {text!r}")
    return value in ("true", "1", "yes", "on")


# Settings a comparison can vary, and how to read their values from text; then the model's LoRAs (`lora_axes`) and
# the model itself (`model_axis`: names as --model takes them, which the command line loads).
COMPARE_AXES: dict[str, Callable[[str], object]] = {
    "sampler": str, "steps": int, "schedule": str, "guidance": float, "seed": int, "karras": _parse_bool,
    "spacing": str, **LORA_AXES, MODEL_AXIS: str,
}
AXIS_TYPES = {str: "name", int: "whole number", float: "number", _parse_bool: "true/false value", **LORA_AXIS_TYPES}


_AXIS_EXAMPLES = {"sampler": "ddim,euler", "steps": "5,10,25", "schedule": "linear,cosine", "guidance": "1,7.5",
                  "seed": "0,1,2", "karras": "false,true", "spacing": "leading,trailing", **LORA_EXAMPLES,
                  MODEL_AXIS: MODEL_EXAMPLE}


def parse_axis(text: str) -> tuple[str, list]:
    """"sampler=ddim,euler" → ("sampler", ["ddim", "euler"]), each value converted to the setting's type."""
    name, _, values = text.partition("=")
    name = name.strip()
    check_choice("comparison axis", name, tuple(COMPARE_AXES))
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not items:
        raise InvalidArgumentError(f"axis {name!r} has no values; write it as {name}=A,B,C")
    kind = COMPARE_AXES[name]
    parsed = []
    for item in items:
        try:
            value = kind(item)
        except InvalidArgumentError:  # a reader's own check (a LoRA scale beyond ±4): its message says more
            raise
        except ValueError:
            raise InvalidArgumentError(f"{name} takes a {AXIS_TYPES[kind]} per value, got {item!r}; "
                                       f"write it as {name}={_AXIS_EXAMPLES[name]}") from None
        if kind is float:
            check_finite(name, value)
        parsed.append(value)
    return name, parsed


@dataclass
class Comparison:
    """What `compare` makes: the grid and the generations, rows × columns (y values × x values), and what each
    cell cost: the denoiser's calls and the U-Net evaluations they ran (two per call under guidance)."""

    grid: Image.Image
    generations: list[list[Generation]]
    model_calls: list[list[int]]
    unet_evaluations: list[list[int]]


class EvaluationCounter:
    """Counts, over one generation, the denoiser's calls and the network evaluations they run: the CFG denoiser runs
    the network on [uncond; cond] — two evaluations, one batch — when guidance w ≠ 1, and on cond alone at w = 1
    (Ho & Salimans 2022, eq. 6). Its guidance hook hears which branches ran (ε_u is None when only one did).
    `network`: what the label calls the network ("U-Net", "MMDiT")."""

    def __init__(self, network: str = "U-Net") -> None:
        self.calls = 0
        self.unet = 0
        self.network = network

    def observer(self, run: ImageRun | None = None) -> Observer:
        return Observer(on_guidance=self.heard)

    def heard(self, eps_uncond: torch.Tensor | None, eps_cond: torch.Tensor) -> None:
        self.calls += 1
        self.unet += 1 if eps_uncond is None else 2

    def label(self) -> str:
        """"50 U-Net evaluations" (an SD3 model's: "MMDiT") and, under guidance, a second line "= 25 model calls
        × 2"."""
        doubled = f"\n= {self.calls} model calls × 2" if self.unet != self.calls else ""
        return f"{self.unet} {self.network} evaluations{doubled}"


def compare(model: StableDiffusion | None, settings: GenerationSettings,
            x: tuple[str, Sequence] = ("sampler", ["ddim", "euler", "dpmpp_2m"]),
            y: tuple[str, Sequence] | None = ("steps", [5, 10, 25]), progress: StepCallback | None = None,
            panel: int | None = None) -> Comparison:
    """One image per combination of two settings (any of COMPARE_AXES), everything else fixed.

    Columns follow `x` = (setting, values), rows `y` (None = one row). Each cell is labelled with its
    number of U-Net evaluations, counted as they run (`EvaluationCounter`: Heun calls the model twice per step,
    guidance runs the U-Net twice per call), the cost that compares across machines; wall times mostly measure load.
    The `lora` and `lora-blocks` axes vary the model's LoRAs (`lora_axes`: no reload; put back after). The `model`
    axis's values are loaded models (`model_axis`; `model` is None then): each cell is resolved for its own model,
    whose defaults fill what `settings` leaves None.
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
    cells = resolve_cells(model, settings, x, y)  # every cell checked before the first (slow) generation

    generations, counters = [], []
    for row in cells:
        generations.append([])
        counters.append([])
        for cell in row:
            counter = EvaluationCounter(cell.model.network_name)
            with lora_state(applied_loras(cell.model), cell.loras):
                generations[-1].append(generate(cell.model, cell.settings, observe=counter.observer,
                                                progress=progress))
            counters[-1].append(counter)
    height, width = generations[0][0].images[0].shape[:2]
    size = panel_size(width, height, panel)
    guided = any(counter.unet != counter.calls for row in counters for counter in row)
    prompt = f"“{settings.prompt}”" if settings.prompt else "unconditional (empty prompt)"
    networks = " or ".join(sorted({cell.model.network_name for row in cells for cell in row}, reverse=True))
    note = f" · guidance runs the {networks} twice per model call: with the prompt and without" if guided else ""
    if "lora-blocks" in (x_name, y_name):
        note += " · lora-blocks: the text encoders' LoRA layers stay applied in every cell"
    if MODEL_AXIS in (x_name, y_name) and "seed" not in (x_name, y_name):
        note += f" · seed {settings.seed} in every cell"

    def labels(name: str, values: Sequence, firsts: Sequence[Cell]) -> list[str]:
        """Each value in words; a model as its name and what it ran with (`firsts`: the cells of its first run)."""
        if name == MODEL_AXIS:
            return [model_caption(cell, (x_name, y_name)) for cell in firsts]
        return [lora_caption(name, v) if name in LORA_AXES else str(v) for v in values]

    titles = {**AXIS_TITLES, MODEL_AXIS: MODEL_AXIS_TITLE}
    grid = make_grid([[fit_panel(g.images[0], size, smooth=True) for g in row] for row in generations],
                     row_labels=labels(y_name, y_values, [row[0] for row in cells]) if y_name else None,
                     col_labels=labels(x_name, x_values, cells[0]),
                     cell_labels=[[counter.label() for counter in row] for row in counters],
                     title=prompt + note, x_axis_title=titles.get(x_name, x_name),
                     y_axis_title=titles.get(y_name, y_name), cell_size=size)
    return Comparison(grid=grid, generations=generations,
                      model_calls=[[counter.calls for counter in row] for row in counters],
                      unet_evaluations=[[counter.unet for counter in row] for row in counters])
