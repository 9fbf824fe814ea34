"""The commands that run an experiment over many settings: `noise` (the forward process under several
β schedules), `cfg-sweep` (one image per guidance weight) and `compare` (a grid over two settings).

Each parses its options, calls `diffx.views` and prints what it wrote; the heavy modules are imported
inside the commands, so `diffx --help` answers at once.
"""

from pathlib import Path
from typing import Annotated

import typer

from diffx.cli.core import print_written
from diffx.cli.options import (
    ForceOpt,
    FrameMsOpt,
    GifOpt,
    GuidanceOpt,
    HtmlOpt,
    KarrasOpt,
    ModelChoice,
    OutOpt,
    PreviewOpt,
    PromptOpt,
    SamplingChoice,
    SeedOpt,
    SpacingOpt,
    StepsOpt,
    check_frame_ms,
    check_view_options,
    option_groups,
    parse_list,
    parse_size,
)
from diffx.cli.progress import StepProgress
from diffx.files import check_outputs, companion_path

NOISE_MAX_SIDE = 256  # `diffx noise` shrinks larger pictures to this (pixel space, no --size)


@option_groups
def noise(
    image: Annotated[Path, typer.Argument(help="The picture to noise (PNG, JPEG, …).", show_default=False)],
    out: OutOpt = None,
    gif: GifOpt = None,
    schedules: Annotated[str | None, typer.Option(
        help="Schedules, comma-separated (grid rows): linear, scaled_linear, cosine (β schedules) and flow (the "
             "straight line of rectified flow, SD3's). Default: the three β schedules; a flow model's: flow and "
             "scaled_linear.", show_default=False)] = None,
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
) -> None:
    """Noise a picture with the forward process q(x_t | x_0), for several β schedules.

    Writes x_t at the chosen timesteps, one row per schedule (--out, default noise.png), the schedule
    curves with the timesteps a --sampler visits marked (<out>_schedules.png), and with --gif an
    animation from x_0 to x_T. The schedules, spacing and steps follow the model's scheduler (its config
    alone: the weights are read only with --latent).

    Example: diffx noise photo.png --out noise.png --gif noise.gif --sampler ddim --steps 25
    """
    from diffx.experiments import sweeps as experiments
    from diffx.images import load_image
    from diffx.pipeline.settings import check_side
    from diffx.render import save_animation, save_png

    out = out or Path("noise.png")
    plot_path = companion_path(out, "schedules")
    check_frame_ms(frame_ms)
    check_outputs([plot_path], force, gif, picture=out)
    schedule_names = None if schedules is None else [name.strip() for name in schedules.split(",") if name.strip()]
    timestep_list = parse_list(timesteps, int, "--timesteps")
    width, height = parse_size(size)
    loaded = model.load() if latent else None
    config = loaded.config if loaded else model.read_config()  # pixel space needs the scheduler, not the weights
    if schedule_names is None:
        schedule_names = list(experiments.default_noise_schedules(config))
    if latent:
        width, height = (check_side(loaded, "width", width or config.image_size),
                         check_side(loaded, "height", height or config.image_size))
    picture = load_image(image, None if width is None else (width, height))
    if width is None:
        picture.thumbnail((NOISE_MAX_SIDE, NOISE_MAX_SIDE))
    result = experiments.noise_views(picture, schedule_names, timestep_list, latent_space=latent, model=loaded,
                                     seed=seed, sampler=sampler, steps=steps, spacing=spacing, karras=karras,
                                     config=config)
    save_png(result.grid, out, force)
    save_png(result.schedule_plot, plot_path, force)
    if gif is not None:
        save_animation(result.frames, gif, frame_ms, force)
    print_written([out, plot_path, gif])


@option_groups
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
    preview: PreviewOpt = "auto",
    frame_ms: FrameMsOpt = 100,
    force: ForceOpt = False,
) -> None:
    """Sweep the classifier-free guidance weight w in ε̂ = ε_u + w (ε_c − ε_u).

    Same seed and sampler for every w: one column per w (--out, default cfg_sweep.png), optional rows
    of x̂0 at --rows-steps, and with --gif the columns side by side at every step. With --html and no
    --out only the HTML report is written (and the --gif, if given).

    Example: diffx cfg-sweep --prompt "a red circle" --scales 1,3,5,7.5,10,15 --gif cfg.gif
    """
    from diffx.experiments import sweeps as experiments
    from diffx.render import save_animation, save_png
    from diffx.trace.tracer import TraceOptions

    check_view_options(preview)
    if out is None and html is None:
        out = Path("cfg_sweep.png")
    check_frame_ms(frame_ms)
    check_outputs([html], force, gif, picture=out)
    weights = parse_list(scales, float, "--scales")
    chosen_steps = parse_list(rows_steps, int, "--rows-steps") if rows_steps is not None else None
    settings = sampling.settings(prompt)
    loaded = model.load()
    with StepProgress(runs=len(weights)) as progress:
        record = TraceOptions() if html is not None else experiments.TRACE_RECORD_X0
        sweep = experiments.cfg_sweep(loaded, settings, weights, chosen_steps, preview, progress, record=record)
    if out is not None:
        save_png(sweep.grid, out, force)
    if gif is not None:
        save_animation(sweep.frames, gif, frame_ms, force)
    if html is not None:
        from diffx.report.page import write_report

        write_report([g.traces[0] for g in sweep.generations], html, force, model=loaded, preview=preview)
    print_written([out, gif, html])


@option_groups
def compare(
    x: Annotated[str, typer.Option(
        "--x", help="Columns: SETTING=V1,V2,… with SETTING one of sampler, steps, schedule, guidance, seed, "
                    "karras, spacing; with --lora also lora (its scale s, e.g. lora=0,0.5,1) and lora-blocks (the "
                    "U-Net blocks it is kept to: all, in, mid, out; the text encoders keep it); or model (models as "
                    "--model names them, each with its own defaults for what is not set: "
                    "model=shapes-world-2,FOLDER; instead of --model).")
    ] = "sampler=ddim,euler,dpmpp_2m",
    y: Annotated[str | None, typer.Option("--y", help="Rows, written like --x.", show_default=False)] = None,
    prompt: PromptOpt = "",
    out: OutOpt = None,
    sampling: SamplingChoice = SamplingChoice(),
    guidance: GuidanceOpt = None,
    model: ModelChoice = ModelChoice(),
    force: ForceOpt = False,
) -> None:
    """Compare settings: one image per combination of two of them, everything else fixed.

    Writes a labelled grid (--out, default compare.png) with the network evaluations (U-Net or MMDiT) of each
    cell, counted as they run (guidance runs the network twice per model call): the cost that compares across
    machines.
    The lora and lora-blocks axes change how the --lora files run between cells, without reloading the model. The
    model axis puts models side by side, same prompt and seed, each with its own sampler, steps, guidance and schedule
    unless given (a setting given applies to every model).

    Example: diffx compare --prompt "a red circle" --x sampler=ddim,euler,dpmpp_2m --y steps=5,10,25
    """
    from diffx.experiments import sweeps as experiments
    from diffx.experiments.lora_axes import check_lora_axes
    from diffx.experiments.model_axis import MODEL_AXIS
    from diffx.render import save_png

    out = out or Path("compare.png")
    check_outputs([], force, picture=out)
    x_axis = experiments.parse_axis(x)
    y_axis = experiments.parse_axis(y) if y else None
    names = (x_axis[0], y_axis[0] if y_axis else None)
    # before any work; lora-blocks needs to know the network the --lora files were read against (U-Net or MMDiT)
    network = model.check().network if "lora-blocks" in names and model.lora else "U-Net"
    check_lora_axes(names, bool(model.lora), network)
    settings = sampling.settings(prompt, guidance)
    if MODEL_AXIS in (x_axis[0], y_axis and y_axis[0]):
        loaded, (x_axis, y_axis) = None, _load_axis_models(model, (x_axis, y_axis))
    else:
        loaded = model.load()
    with StepProgress(runs=len(x_axis[1]) * (len(y_axis[1]) if y_axis else 1)) as progress:
        comparison = experiments.compare(loaded, settings, x_axis, y_axis, progress)
    save_png(comparison.grid, out, force)
    print_written([out])


Axis = tuple[str, list]  # a comparison axis: its name and values (`parse_axis`)


def _load_axis_models(choice: ModelChoice, axes: tuple[Axis, Axis | None]) -> tuple[Axis, Axis | None]:
    """`axes` (x, y) with the model axis's names replaced by the models: each name found as --model finds it and
    checked with the other model options (--device, --dtype, --lora…) before the first is loaded, each loaded once.
    --model itself is refused: the axis names every model."""
    from dataclasses import replace

    from diffx.errors import InvalidArgumentError
    from diffx.experiments.model_axis import BOTH_MODELS, MODEL_AXIS
    from diffx.weights.discovery import resolve_model_source

    if choice.model is not None:
        raise InvalidArgumentError(BOTH_MODELS)
    names = [value for axis in axes if axis and axis[0] == MODEL_AXIS for value in axis[1]]
    paths = {name: resolve_model_source(name, where=f"{MODEL_AXIS} axis value").path for name in names}
    choices = {path: replace(choice, model=name) for name, path in paths.items()}  # one per model, however named
    for named in choices.values():
        named.check()
    models = {path: named.load() for path, named in choices.items()}
    return tuple(axis and (axis[0], [models[paths[v]] for v in axis[1]] if axis[0] == MODEL_AXIS else axis[1])
                 for axis in axes)
