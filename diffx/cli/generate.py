"""The commands that run (or re-render) one generation: `denoise`, `trace`, `render`.

Each parses its options, calls the library (`diffx.pipeline`, `diffx.trace`, `diffx.views`) and prints
what it wrote. The heavy modules are imported inside the commands, so `diffx --help` answers at once.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from diffx.cli.core import print_written
from diffx.cli.options import (
    AttnScaleOpt,
    ForceOpt,
    FrameMsOpt,
    GifOpt,
    GuidanceOpt,
    HtmlOpt,
    InitImageChoice,
    ModelChoice,
    OutOpt,
    PreviewOpt,
    PromptOpt,
    SamplingChoice,
    check_frame_ms,
    check_view_options,
    option_groups,
)
from diffx.cli.progress import StepProgress
from diffx.files import check_outputs, companion_path, named_file, picture_format

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion
    from diffx.pipeline.settings import GenerationSettings
    from diffx.trace.tracer import TracedGeneration, TraceOptions


def run_generation(model: "StableDiffusion", settings: "GenerationSettings", init: InitImageChoice,
                   record: "TraceOptions", preview: str | None = None) -> "TracedGeneration":
    """Text → image, or image → image / inpainting when --image is given, traced, with a progress bar. When the
    views will show x̂0 VAE-decoded (`preview` resolves to "vae"), the trace keeps a decode of every step's x̂0,
    so a saved trace is drawn again (`render`, `report`, `attention --trace`) the same way without a model."""
    from dataclasses import replace

    from diffx.trace.tracer import generate_traced
    from diffx.views.steps import resolve_preview

    decode_every = 1 if preview is not None and resolve_preview(preview, model=model) == "vae" else 0
    settings = replace(settings, strength=init.strength, timestep=init.t)
    with StepProgress() as progress:
        return generate_traced(model, settings, init_image=init.image, mask=init.mask, options=record,
                               decode_every=decode_every, progress=progress)


def animation_and_image(gif: Path | None, out: Path | None, stem: Path) -> tuple[Path, Path]:
    """The animation and picture paths of `trace` (and of `render` when no output is named): each defaults to
    the other's name (out.gif ↔ out.png), both to `stem` with .gif/.png."""
    for path in (gif, out):
        if path is not None:
            named_file(path)
    gif = gif or (out.with_suffix(".gif") if out else stem.with_suffix(".gif"))
    return gif, out or gif.with_suffix(".png")


@option_groups
def denoise(
    prompt: PromptOpt = "",
    init: InitImageChoice = InitImageChoice(),
    out: OutOpt = None,
    gif: GifOpt = None,
    sampling: SamplingChoice = SamplingChoice(),
    guidance: GuidanceOpt = None,
    model: ModelChoice = ModelChoice(),
    preview: PreviewOpt = "auto",
    frame_ms: FrameMsOpt = 100,
    force: ForceOpt = False,
) -> None:
    """Generate an image and show x_t and x̂0 at every step.

    Starts from pure noise (with or without --prompt), or from --image noised to --t or --strength
    (SDEdit; with --mask: inpainting). Writes the result (--out, default denoise.png), x_t and x̂0 over
    the steps (<out>_steps.png) and with --gif an animation of both.

    Example: diffx denoise --prompt "a red circle" --steps 25 --out denoise.png --gif denoise.gif
    """
    from diffx.render import save_animation, save_png
    from diffx.views import steps as views

    check_view_options(preview)
    out = out or Path("denoise.png")
    grid_path = companion_path(out, "steps")
    check_frame_ms(frame_ms)
    check_outputs([grid_path], force, gif, picture=out)
    settings = sampling.settings(prompt, guidance)
    loaded = model.load()
    generation = run_generation(loaded, settings, init, views.TRACE_RECORD_STEPS)
    trace = generation.traces[0]
    grid = views.denoise_grid(trace, preview=preview, model=loaded)
    frames = views.denoise_frames(trace, preview, loaded) if gif is not None else None
    save_png(generation.images[0], out, force)
    save_png(grid, grid_path, force)
    if frames is not None:
        save_animation(frames, gif, frame_ms, force)
    print_written([out, grid_path, gif])


@option_groups
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
    preview: PreviewOpt = "auto",
    attn_scale: AttnScaleOpt = "word",
    frame_ms: FrameMsOpt = 100,
    force: ForceOpt = False,
) -> None:
    """Generate with the tracer on: every step's latents, noise and attention per word.

    Writes an animation of x_t, x̂0, ε̂, ε_c − ε_u and one cross-attention map per prompt word at every
    step (--gif, default trace.gif), the result (--out, default: the GIF's name as .png) and the word ×
    timestep attention grid (<out>_attention.png). Takes --image/--t/--strength/--mask like `denoise`.

    Example: diffx trace --prompt "a red circle" --gif out.gif
    """
    from diffx.trace.record import save_trace as write_trace
    from diffx.trace.tracer import TraceOptions
    from diffx.views import steps as views

    check_view_options(preview, attn_scale)
    gif, out = animation_and_image(gif, out, Path("trace"))
    check_frame_ms(frame_ms)
    check_outputs([companion_path(out, "attention"), save_trace, html], force, gif, picture=out)
    settings = sampling.settings(prompt, guidance)
    loaded = model.load()
    generation = run_generation(loaded, settings, init, TraceOptions(), preview)
    recorded = generation.traces[0]
    written = views.write_trace_views(recorded, gif, out, preview, attn_scale, loaded, frame_ms, force)
    if save_trace is not None:
        written.append(write_trace(recorded, save_trace, force))
    if html is not None:
        from diffx.report.page import write_report

        written.append(write_report(recorded, html, force, model=loaded, preview=preview))
    print_written(written)


@option_groups
def render(
    trace_file: Annotated[Path, typer.Argument(help="A trace file from `diffx trace --save-trace`.",
                                               show_default=False)],
    gif: GifOpt = None,
    out: OutOpt = None,
    preview: PreviewOpt = "auto",
    attn_scale: AttnScaleOpt = "word",
    convergence: Annotated[Path | None, typer.Option(
        help="Write the trace's convergence chart (PNG): how far x̂0 still moves from the last x̂0, and "
             "the step length, against model evaluations (log scale).", show_default=False)] = None,
    model: ModelChoice = ModelChoice(),
    frame_ms: FrameMsOpt = 100,
    force: ForceOpt = False,
) -> None:
    """Re-render the views of a saved trace, without running the model.

    Writes what the output options name, nothing else: --gif the animation, --out the final image with its
    word × timestep attention grid (<out>_attention.png), --convergence the convergence chart. With none of
    them it writes what `diffx trace` writes, named after the trace file (TRACE.gif, TRACE.png,
    TRACE_attention.png). A model is loaded only for --preview vae when the trace holds no VAE decodes of
    x̂0 (--preview auto then shows the latent preview, and says so on every panel).

    Example: diffx render out.safetensors --gif again.gif --attn-scale word
    """
    from diffx.experiments.trajectories import trace_convergence_chart
    from diffx.render import save_png
    from diffx.trace.record import load_trace
    from diffx.views import steps as views

    check_view_options(preview, attn_scale)
    if all(path is None for path in (gif, out, convergence)):
        gif, out = animation_and_image(gif, out, trace_file)
    check_frame_ms(frame_ms)
    check_outputs([None if out is None else companion_path(out, "attention"), convergence], force, gif, picture=out)
    if convergence is not None:
        picture_format(convergence)
    model.check_given()  # before the trace is read: a model is loaded only for some traces
    recorded = load_trace(trace_file)
    chart = trace_convergence_chart(recorded) if convergence is not None else None
    drawn = gif is not None or out is not None
    loaded = model.load_to_decode(preview, [recorded]) if drawn else None
    written = views.write_trace_views(recorded, gif, out, preview, attn_scale, loaded, frame_ms, force)
    if chart is not None:
        written.append(save_png(chart, convergence, force))
    print_written(written)
