"""The `diffx` command line. Each command parses its options, calls the documented Python API
(`diffx.views`, `diffx.pipeline`, `diffx.weights`) and prints with rich.

Results go to stdout; progress, warnings and errors to stderr. A user error (`DiffxError`) prints one
line `error: …` and exits with code 2; `--debug` shows the traceback instead. torch, matplotlib and the
models are imported inside the commands, so `diffx --help` answers at once.
"""

import functools
import inspect
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from diffx.errors import DiffxError, InvalidArgumentError, check_choice

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion
    from diffx.pipeline import Generation, GenerationSettings
    from diffx.samplers import StepRecord
    from diffx.trace import TraceOptions

OUT = Console(highlight=False)  # results
ERR = Console(stderr=True, highlight=False)  # progress, warnings, errors
NOISE_MAX_SIDE = 256  # `diffx noise` shrinks larger pictures to this (pixel space, no --size)

app = typer.Typer(
    name="diffx",
    help="Stable Diffusion from scratch, traced step by step: noise, denoising, guidance and attention as "
         "GIFs and grids.",
    epilog='Example: diffx trace --prompt "a red circle" --gif out.gif',
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# ---------------------------------------------------------------------------------------------------
# Options shared by the commands: one definition each, the same meaning everywhere.

ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", show_default=False,
    help="A .ckpt/.safetensors file, a diffusers or diffx folder, or 'embedded'. "
         "Default: $DIFFX_MODEL, else the embedded model.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOpt = Annotated[str, typer.Option(help="auto (fp16 on a GPU, fp32 on the CPU), fp32, fp16 or bf16.")]
PromptOpt = Annotated[str, typer.Option("--prompt", "-p", help="What to draw; empty = unconditional.")]
NegativeOpt = Annotated[str, typer.Option(help="What to steer away from (the unconditional half of CFG).")]
SamplerOpt = Annotated[str | None, typer.Option(
    help="ddpm, ddim, euler, euler_a, heun or dpmpp_2m. Default: the model's.", show_default=False)]
ScheduleOpt = Annotated[str | None, typer.Option(
    help="β schedule: linear, scaled_linear or cosine. Default: the model's training schedule.",
    show_default=False)]
SpacingOpt = Annotated[str | None, typer.Option(
    help="Timestep spacing: leading, trailing or linspace. Default: the model's.", show_default=False)]
KarrasOpt = Annotated[bool, typer.Option("--karras", help="Karras σ steps (euler, euler_a, heun, dpmpp_2m).")]
StepsOpt = Annotated[int | None, typer.Option(help="Sampling steps. Default: the model's.", show_default=False)]
GuidanceOpt = Annotated[float | None, typer.Option(
    help="Classifier-free guidance weight w (1 = none). Default: the model's.", show_default=False)]
SeedOpt = Annotated[int, typer.Option(help="Random seed.")]
SizeOpt = Annotated[str | None, typer.Option(
    help="Image size: 512 or WIDTHxHEIGHT. Default: the model's.", show_default=False)]
ImageOpt = Annotated[Path | None, typer.Option(
    help="Start from this picture, resized to --size (image-to-image, SDEdit).", show_default=False)]
TimestepOpt = Annotated[int | None, typer.Option(
    "--t", help="With --image: the timestep to noise it to, 0-999 (instead of --strength).", show_default=False)]
StrengthOpt = Annotated[float | None, typer.Option(
    help="With --image: how much of the schedule to run, 0-1. Default: 0.8.", show_default=False)]
MaskOpt = Annotated[Path | None, typer.Option(
    help="With --image: inpainting mask, white = repaint, the size of the image file.", show_default=False)]
OutOpt = Annotated[Path | None, typer.Option(
    "--out", "-o", help="Main output picture (PNG); companion files are named after it.", show_default=False)]
GifOpt = Annotated[Path | None, typer.Option(help="Animation file (.gif, or .mp4 with imageio-ffmpeg).",
                                                show_default=False)]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing output files.")]
FrameMsOpt = Annotated[int, typer.Option(help="Milliseconds per animation frame.")]
PreviewOpt = Annotated[str, typer.Option(help="x̂0 pictures: fast (linear latent preview) or vae (VAE decode).")]
AttnScaleOpt = Annotated[str, typer.Option(
    help="Attention heatmaps: shared (one range, comparable) or word (each map stretched).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the traceback of errors.")]
HtmlOpt = Annotated[Path | None, typer.Option(
    help="Also write an interactive, self-contained HTML report (slider, panels, clickable words).",
    show_default=False)]


@dataclass(frozen=True)
class ModelChoice:
    """--model, --device, --dtype: which weights, on which device, in which precision."""

    model: ModelOpt = None
    device: DeviceOpt = "auto"
    dtype: DtypeOpt = "auto"

    def load(self) -> "StableDiffusion":
        """`--model` (default: $DIFFX_MODEL, else the embedded model) on `--device` in `--dtype`."""
        from diffx.weights import load_model, resolve_device, resolve_dtype, resolve_model_source

        source = resolve_model_source(self.model)
        target = resolve_device(self.device)
        precision = resolve_dtype(self.dtype, target)
        with ERR.status(f"loading {source.path}"):
            return load_model(source, device=target, dtype=precision)


@dataclass(frozen=True)
class SamplingChoice:
    """How to sample, everything but the prompt and the guidance weight (cfg-sweep sweeps that one)."""

    negative_prompt: NegativeOpt = ""
    sampler: SamplerOpt = None
    schedule: ScheduleOpt = None
    spacing: SpacingOpt = None
    karras: KarrasOpt = False
    steps: StepsOpt = None
    seed: SeedOpt = 0
    size: SizeOpt = None

    def settings(self, prompt: str, guidance: float | None = None) -> "GenerationSettings":
        from diffx.pipeline import GenerationSettings

        width, height = parse_size(self.size)
        return GenerationSettings(prompt=prompt, negative_prompt=self.negative_prompt, width=width, height=height,
                                  steps=self.steps, guidance=guidance, sampler=self.sampler, schedule=self.schedule,
                                  spacing=self.spacing, karras=self.karras, seed=self.seed)


@dataclass(frozen=True)
class InitImageChoice:
    """--image with --t or --strength (SDEdit), and --mask (inpainting)."""

    image: ImageOpt = None
    t: TimestepOpt = None
    strength: StrengthOpt = None
    mask: MaskOpt = None


OPTION_GROUPS = (ModelChoice, SamplingChoice, InitImageChoice)


# ---------------------------------------------------------------------------------------------------
# Plumbing: errors, warnings, progress, model loading, option parsing


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """diffx's own warnings (e.g. a truncated prompt) as one yellow line; others as Python prints them."""
    if category.__module__.startswith("diffx"):
        ERR.print(f"[yellow]warning: {escape(str(message))}[/]", soft_wrap=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def command(function: Callable) -> Callable:
    """Register `function` as a subcommand; the "Example:" of its docstring goes last in its --help.

    A parameter annotated with an option group (`ModelChoice`, `SamplingChoice`, `InitImageChoice`)
    becomes that group's options on the command line and arrives as one group object. A `DiffxError`
    becomes `error: <message>` on stderr and exit code 2 (with --debug it propagates with its traceback).
    """
    signature = inspect.signature(function)
    groups = {name: param.annotation for name, param in signature.parameters.items()
              if param.annotation in OPTION_GROUPS}
    parameters = []
    for name, param in signature.parameters.items():
        if name in groups:
            parameters += [inspect.Parameter(field.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                             default=field.default, annotation=field.type)
                           for field in fields(groups[name])]
        else:
            parameters.append(param)

    @functools.wraps(function)
    def run(**options):
        for name, group in groups.items():
            options[name] = group(**{field.name: options.pop(field.name) for field in fields(group)})
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                return function(**options)
            except DiffxError as error:
                if options.get("debug"):
                    raise
                ERR.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
                raise typer.Exit(2) from None

    run.__signature__ = signature.replace(parameters=parameters)
    run.__annotations__ = {param.name: param.annotation for param in parameters}
    description, _, example = function.__doc__.partition("Example:")
    return app.command(help=description.strip(), epilog=f"Example: {example.strip()}")(run)


class RateColumn(ProgressColumn):
    """Model evaluations per second."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} it/s" if task.speed else "- it/s", style="progress.data.speed")


class StepProgress:
    """A rich progress bar on stderr fed by the pipeline's per-step callback: one bar per run (a run
    starts when a step record with index 0 arrives), showing step i/N, the timestep, it/s and ETA."""

    def __init__(self, runs: int = 1):
        self.runs, self.run, self.task = runs, 0, None
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("t={task.fields[t]}"), RateColumn(), TimeRemainingColumn(), console=ERR)

    def __enter__(self) -> "StepProgress":
        self.bar.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.bar.stop()

    def __call__(self, record: "StepRecord") -> None:
        if record.index == 0:
            self.run += 1
            label = f"run {self.run}/{self.runs}" if self.runs > 1 else "denoising"
            self.task = self.bar.add_task(label, total=record.num_steps, t="")
        self.bar.update(self.task, completed=record.index + 1, t=f"{record.timestep:g}")


def parse_size(text: str | None) -> tuple[int | None, int | None]:
    """--size "512" or "512x768" (width x height) → (width, height); None → (None, None)."""
    if text is None:
        return None, None
    width, _, height = text.lower().partition("x")
    try:
        return int(width), int(height or width)
    except ValueError:
        raise InvalidArgumentError(f"--size {text!r} is not a size; write 512 or WIDTHxHEIGHT like 512x768") from None


def parse_list(text: str, kind: type, option: str) -> list:
    """"1,3,7.5" → [1.0, 3.0, 7.5] (each value converted with `kind`)."""
    try:
        values = [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise InvalidArgumentError(f"{option} {text!r}: expected {kind.__name__}s separated by commas") from None
    if not values:
        raise InvalidArgumentError(f"{option} is empty; give values separated by commas")
    return values


def run_generation(model: "StableDiffusion", settings: "GenerationSettings", init: InitImageChoice,
                   record: "TraceOptions", decode_every: int = 0) -> "Generation":
    """Text → image, or image → image / inpainting when --image is given, traced, with a progress bar."""
    from diffx.pipeline import generate
    from diffx.views import load_init_image, strength_for_timestep

    image, mask, timestep, strength = init.image, init.mask, init.t, init.strength
    if image is None and (timestep is not None or strength is not None or mask is not None):
        raise InvalidArgumentError("--t, --strength and --mask apply to an input picture; pass --image too")
    if timestep is not None and strength is not None:
        raise InvalidArgumentError("--t and --strength both set how far to noise the image; give one of them")
    init_image = init_mask = None
    if image is not None:
        if timestep is not None:
            settings.strength = strength_for_timestep(timestep, model.config.scheduler.num_train_timesteps)
        elif strength is not None:
            settings.strength = strength
        resolved = settings.resolved(model)
        init_image, init_mask = load_init_image(image, (resolved.width, resolved.height), mask)
    with StepProgress() as progress:
        return generate(model, settings, init_image=init_image, mask=init_mask, trace=record,
                        decode_every=decode_every, progress=progress)


def check_view_options(preview: str, attn_scale: str = "shared") -> None:
    """Check --preview and --attn-scale before any slow work."""
    from diffx.views import ATTENTION_SCALES, PREVIEWS

    check_choice("preview", preview, PREVIEWS)
    check_choice("attention scale", attn_scale, ATTENTION_SCALES)


def animation_and_image(gif: Path | None, out: Path | None, stem: Path) -> tuple[Path, Path]:
    """The animation and picture paths of `trace`/`render`: each defaults to the other's name
    (out.gif ↔ out.png), both to `stem` with .gif/.png."""
    gif = gif or (out.with_suffix(".gif") if out else stem.with_suffix(".gif"))
    return gif, out or gif.with_suffix(".png")


def print_written(paths: list[Path | None]) -> None:
    for path in paths:
        if path is not None:
            OUT.print(f"wrote {path}", soft_wrap=True)


# ---------------------------------------------------------------------------------------------------
# Commands


@command
def noise(
    image: Annotated[Path, typer.Argument(help="The picture to noise (PNG, JPEG, …).", show_default=False)],
    out: OutOpt = None,
    gif: GifOpt = None,
    schedules: Annotated[str, typer.Option(help="β schedules, comma-separated (grid rows).")] = (
        "linear,scaled_linear,cosine"),
    timesteps: Annotated[str, typer.Option(help="Timesteps, comma-separated (grid columns).")] = (
        "0,100,250,500,750,999"),
    latent: Annotated[bool, typer.Option("--latent", help="Noise the VAE latent (needs a model), not the pixels.")
                      ] = False,
    sampler: Annotated[str | None, typer.Option(
        help="Mark the timesteps this sampler visits on the schedule plot.", show_default=False)] = None,
    steps: StepsOpt = None,
    spacing: SpacingOpt = None,
    karras: KarrasOpt = False,
    seed: SeedOpt = 0,
    size: Annotated[str | None, typer.Option(
        help=f"Resize the picture: 512 or WIDTHxHEIGHT. Default: the model's size with --latent, else the "
             f"picture's own, shrunk to fit {NOISE_MAX_SIDE} px.", show_default=False)] = None,
    model: ModelChoice = ModelChoice(),
    frame_ms: FrameMsOpt = 100,
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Noise a picture with the forward process q(x_t | x_0), for several β schedules.

    Writes x_t at the chosen timesteps, one row per schedule (--out, default noise.png), the schedule
    curves with the timesteps a --sampler visits marked (<out>_schedules.png), and with --gif an
    animation from x_0 to x_T.

    Example: diffx noise photo.png --out noise.png --gif noise.gif --sampler ddim --steps 25
    """
    from diffx import views
    from diffx.render import load_image, save_png

    out = out or Path("noise.png")
    plot_path = views.companion_path(out, "schedules")
    views.check_outputs([out, plot_path], force, gif)
    schedule_names = [name.strip() for name in schedules.split(",") if name.strip()]
    loaded = model.load() if latent or model.model else None
    width, height = parse_size(size)
    if width is None and latent:
        width = height = loaded.config.image_size
    picture = load_image(image, None if width is None else (width, height))
    if width is None:
        picture.thumbnail((NOISE_MAX_SIDE, NOISE_MAX_SIDE))
    result = views.noise_views(picture, schedule_names, parse_list(timesteps, int, "--timesteps"), latent_space=latent,
                               model=loaded, seed=seed, sampler=sampler, steps=steps, spacing=spacing, karras=karras)
    save_png(result.grid, out, force)
    save_png(result.schedule_plot, plot_path, force)
    if gif is not None:
        views.save_animation(result.frames, gif, frame_ms, force)
    print_written([out, plot_path, gif])


@command
def denoise(
    prompt: PromptOpt = "",
    init: InitImageChoice = InitImageChoice(),
    out: OutOpt = None,
    gif: GifOpt = None,
    sampling: SamplingChoice = SamplingChoice(),
    guidance: GuidanceOpt = None,
    model: ModelChoice = ModelChoice(),
    preview: PreviewOpt = "fast",
    frame_ms: FrameMsOpt = 100,
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Generate an image and show x_t and x̂0 at every step.

    Starts from pure noise (with or without --prompt), or from --image noised to --t or --strength
    (SDEdit; with --mask: inpainting). Writes the result (--out, default denoise.png), x_t and x̂0 over
    the steps (<out>_steps.png) and with --gif an animation of both.

    Example: diffx denoise --prompt "a red circle" --steps 25 --out denoise.png --gif denoise.gif
    """
    from diffx import views
    from diffx.render import save_png

    check_view_options(preview)
    out = out or Path("denoise.png")
    grid_path = views.companion_path(out, "steps")
    views.check_outputs([out, grid_path], force, gif)
    loaded = model.load()
    generation = run_generation(loaded, sampling.settings(prompt, guidance), init, views.TRACE_RECORD_X0)
    trace = generation.traces[0]
    grid = views.denoise_grid(trace, preview=preview, model=loaded)
    frames = views.denoise_frames(trace, preview, loaded) if gif is not None else None
    save_png(generation.images[0], out, force)
    save_png(grid, grid_path, force)
    if frames is not None:
        views.save_animation(frames, gif, frame_ms, force)
    print_written([out, grid_path, gif])


@command
def trace(
    prompt: PromptOpt = "",
    gif: GifOpt = None,
    out: OutOpt = None,
    save_trace: Annotated[Path | None, typer.Option(
        help="Also save the trace (safetensors) for `diffx render`.", show_default=False)] = None,
    html: HtmlOpt = None,
    init: InitImageChoice = InitImageChoice(),
    sampling: SamplingChoice = SamplingChoice(),
    guidance: GuidanceOpt = None,
    model: ModelChoice = ModelChoice(),
    preview: PreviewOpt = "fast",
    attn_scale: AttnScaleOpt = "shared",
    frame_ms: FrameMsOpt = 100,
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Generate with the tracer on: every step's latents, noise and attention per word.

    Writes an animation of x_t, x̂0, ε̂, ε_c − ε_u and one cross-attention map per prompt word at every
    step (--gif, default trace.gif), the result (--out, default: the GIF's name as .png) and the word ×
    timestep attention grid (<out>_attention.png). Takes --image/--t/--strength/--mask like `denoise`.

    Example: diffx trace --prompt "a red circle" --gif out.gif
    """
    from diffx import views
    from diffx.trace import TraceOptions
    from diffx.trace import save_trace as write_trace

    check_view_options(preview, attn_scale)
    gif, out = animation_and_image(gif, out, Path("trace"))
    views.check_outputs([out, views.companion_path(out, "attention"), save_trace, html], force, gif)
    loaded = model.load()
    # With --preview vae the trace keeps a VAE decode of every x̂0, so `diffx render` needs no model later.
    generation = run_generation(loaded, sampling.settings(prompt, guidance), init, TraceOptions(),
                                decode_every=1 if preview == "vae" else 0)
    recorded = generation.traces[0]
    written = views.write_trace_views(recorded, gif, out, preview, attn_scale, loaded, frame_ms, force)
    if save_trace is not None:
        written.append(write_trace(recorded, save_trace, force))
    if html is not None:
        from diffx.report import write_report

        written.append(write_report(recorded, html, force, model=loaded))
    print_written(written)


@command
def render(
    trace_file: Annotated[Path, typer.Argument(help="A trace file from `diffx trace --save-trace`.",
                                               show_default=False)],
    gif: GifOpt = None,
    out: OutOpt = None,
    preview: PreviewOpt = "fast",
    attn_scale: AttnScaleOpt = "shared",
    model: ModelChoice = ModelChoice(),
    frame_ms: FrameMsOpt = 100,
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Re-render the views of a saved trace, without running the model.

    Writes the same files as `diffx trace` (default: named after the trace file). A model is loaded
    only for --preview vae when the trace holds no VAE decodes of x̂0.

    Example: diffx render out.safetensors --gif again.gif --attn-scale word
    """
    from diffx import views
    from diffx.trace import load_trace

    check_view_options(preview, attn_scale)
    gif, out = animation_and_image(gif, out, trace_file)
    recorded = load_trace(trace_file)
    loaded = model.load() if preview == "vae" and views.missing_decodes(recorded) else None
    print_written(views.write_trace_views(recorded, gif, out, preview, attn_scale, loaded, frame_ms, force))


@command
def cfg_sweep(
    prompt: PromptOpt = "",
    scales: Annotated[str, typer.Option(help="Guidance weights w, comma-separated.")] = "1,3,5,7.5,10,15",
    rows_steps: Annotated[str | None, typer.Option(
        help="Add rows of x̂0 at these step numbers, e.g. 5,10,20.", show_default=False)] = None,
    out: OutOpt = None,
    gif: GifOpt = None,
    html: HtmlOpt = None,
    sampling: SamplingChoice = SamplingChoice(),
    model: ModelChoice = ModelChoice(),
    preview: PreviewOpt = "fast",
    frame_ms: FrameMsOpt = 100,
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Sweep the classifier-free guidance weight w in ε̂ = ε_u + w (ε_c − ε_u).

    Same seed and sampler for every w: one column per w (--out, default cfg_sweep.png), optional rows
    of x̂0 at --rows-steps, and with --gif the columns side by side at every step.

    Example: diffx cfg-sweep --prompt "a red circle" --scales 1,3,5,7.5,10,15 --gif cfg.gif
    """
    from diffx import views
    from diffx.render import save_png
    from diffx.trace import TraceOptions

    check_view_options(preview)
    out = out or Path("cfg_sweep.png")
    views.check_outputs([out, html], force, gif)
    weights = parse_list(scales, float, "--scales")
    chosen_steps = parse_list(rows_steps, int, "--rows-steps") if rows_steps else None
    loaded = model.load()
    settings = sampling.settings(prompt)
    with StepProgress(runs=len(weights)) as progress:
        record = TraceOptions() if html is not None else views.TRACE_RECORD_X0
        sweep = views.cfg_sweep(loaded, settings, weights, chosen_steps, preview, progress, record=record)
    save_png(sweep.grid, out, force)
    if gif is not None:
        views.save_animation(sweep.frames, gif, frame_ms, force)
    if html is not None:
        from diffx.report import write_report

        write_report([g.traces[0] for g in sweep.generations], html, force, model=loaded)
    print_written([out, gif, html])


@command
def compare(
    x: Annotated[str, typer.Option(
        "--x", help="Columns: SETTING=V1,V2,… with SETTING one of sampler, steps, schedule, guidance, seed, "
                    "karras, spacing.")] = "sampler=ddim,euler,dpmpp_2m",
    y: Annotated[str | None, typer.Option("--y", help="Rows, written like --x.", show_default=False)] = None,
    prompt: PromptOpt = "",
    out: OutOpt = None,
    sampling: SamplingChoice = SamplingChoice(),
    guidance: GuidanceOpt = None,
    model: ModelChoice = ModelChoice(),
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compare settings: one image per combination of two of them, everything else fixed.

    Writes a labelled grid (--out, default compare.png) with the model evaluations and the time of
    each cell.

    Example: diffx compare --prompt "a red circle" --x sampler=ddim,euler,dpmpp_2m --y steps=5,10,25
    """
    from diffx import views
    from diffx.render import save_png

    out = out or Path("compare.png")
    views.check_outputs([out], force)
    x_axis = views.parse_axis(x)
    y_axis = views.parse_axis(y) if y else None
    loaded = model.load()
    settings = sampling.settings(prompt, guidance)
    with StepProgress(runs=len(x_axis[1]) * (len(y_axis[1]) if y_axis else 1)) as progress:
        comparison = views.compare(loaded, settings, x_axis, y_axis, progress)
    save_png(comparison.grid, out, force)
    print_written([out])


@command
def tokens(
    prompt: Annotated[str, typer.Argument(help="The prompt to tokenize.", show_default=False)],
    debug: DebugOpt = False,
) -> None:
    """Show how CLIP's tokenizer reads a prompt.

    Each word → its BPE tokens → their ids → their positions in the 77-token window, with the start,
    end and padding tokens and what the limit cuts off.

    Example: diffx tokens "a red circle left of a blue square"
    """
    from diffx.models.tokenizer import ClipTokenizer
    from diffx.views import tokens_table

    OUT.print(tokens_table(ClipTokenizer.default().encode(prompt)))


@command
def models(debug: DebugOpt = False) -> None:
    """List the models diffx can use without the network; the first is the default.

    Example: diffx models
    """
    from diffx.views import models_table
    from diffx.weights import find_models

    OUT.print(models_table(find_models()))


# ---------------------------------------------------------------------------------------------------
# Training: `diffx train` (the embedded model's training loop, diffx.embedded.train) is registered here.


@command
def train(
    out_dir: Annotated[Path, typer.Option(help="Training folder: checkpoints, loss curves, sample grids.")] = Path(
        "runs/shapes-world"),
    export: Annotated[Path | None, typer.Option(
        help="When done, write the model here as a diffx model folder (e.g. data/shapes-world).",
        show_default=False)] = None,
    vae_steps: Annotated[int, typer.Option(help="VAE training steps.")] = 1100,
    unet_steps: Annotated[int, typer.Option(help="Text encoder + U-Net training steps.")] = 5000,
    batch: Annotated[int, typer.Option(help="U-Net batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="U-Net peak learning rate (AdamW, warm-up then cosine).")] = 5e-4,
    pool_size: Annotated[int, typer.Option(help="Scenes rendered once and reused (captions re-drawn).")] = 30000,
    seed: SeedOpt = 0,
    threads: Annotated[int, typer.Option(help="CPU threads (0 = torch's default).")] = 0,
    device: DeviceOpt = "auto",
    attention_loss: Annotated[float, typer.Option(
        help="Weight of the attention-grounding loss (object words attend inside their objects); 0 = off.")] = 0.0,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints, loss curves and sample grids.")
                                ] = 100,
    init_from: Annotated[str | None, typer.Option(
        help="Continue from a model folder (e.g. data/shapes-world): its VAE is kept, the U-Net trains on.",
        show_default=False)] = None,
    debug: DebugOpt = False,
) -> None:
    """Train the shapes-world model (DDPM Algorithm 1): the VAE, then the text encoder and the U-Net.

    Resumes from whatever --out-dir holds; writes loss curves and sample grids there at every
    checkpoint. With --export, the EMA weights become a model folder that --model accepts.

    Example: diffx train --vae-steps 200 --unet-steps 500 --out-dir runs/quick --export runs/quick/model
    """
    from diffx.embedded.train import TrainConfig, export_model, preview_grid
    from diffx.embedded.train import train as run_training
    from diffx.weights import resolve_device

    if min(vae_steps, unet_steps, batch, pool_size, checkpoint_every) < 1:
        raise InvalidArgumentError(
            "--vae-steps, --unet-steps, --batch, --pool-size and --checkpoint-every must be at least 1")
    if lr <= 0 or attention_loss < 0:
        raise InvalidArgumentError(f"--lr must be positive and --attention-loss not negative, got {lr} and "
                                   f"{attention_loss}")
    resolve_device(device)  # an unavailable device fails here, before the pool is rendered
    config = TrainConfig(out_dir=str(out_dir), vae_steps=vae_steps, unet_steps=unet_steps, unet_batch=batch,
                         unet_lr=lr, pool_size=pool_size, seed=seed, threads=threads, device=device,
                         checkpoint_every=checkpoint_every, attention_loss=attention_loss, init_from=init_from)
    _, summary = run_training(config, preview_grid)
    OUT.print(summary)
    if export is not None:
        export_model(out_dir, export)
        print_written([export])


@command
def report(
    trace_files: Annotated[list[Path], typer.Argument(help="Trace files (several: columns side by side).",
                                                      show_default=False)],
    html: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("report.html"),
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write an interactive HTML page for saved traces: a step slider, x_t / x̂0 / ε̂ / guidance panels,
    clickable words with their attention maps, and the schedule with the current step marked.

    Example: diffx report out.safetensors --html out.html
    """
    from diffx.report import write_report
    from diffx.trace import load_trace

    written = write_report([load_trace(path) for path in trace_files], html, force)
    OUT.print(f"wrote {written}")
