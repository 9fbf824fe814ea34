"""`diffx lab`: the 2-D diffusion lab (`diffx.lab.run_lab`) — train a tiny ε-model on points, watch every
sampler carry noise back to the data.

Parses the options into a `LabJob`, shows training as a rich progress bar on stderr, prints what it wrote
and each sampler's sliced Wasserstein distance to the data.
"""

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from diffx.cli.core import ERR, OUT, print_written
from diffx.cli.options import ForceOpt, FrameMsOpt, OutOpt, SeedOpt, check_frame_ms, parse_list
from diffx.errors import InvalidArgumentError
from diffx.files import named_file

if TYPE_CHECKING:
    from diffx.lab.flow_job import FlowResult

DEFAULT_GUIDANCE = "0,1,2,4,8"


class LabProgressBar:
    """One rich bar per stage of `run_lab` (each training run, writing the GIF), with the running loss; shown from
    the first stage on, so an error before it (a bad value) prints alone, with no blank line."""

    def __init__(self) -> None:
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[loss]}"), TimeRemainingColumn(), console=ERR)
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> "LabProgressBar":
        return self

    def __exit__(self, *exc_info) -> None:
        if self.tasks:
            self.bar.stop()

    def __call__(self, stage: str, done: int, total: int, loss: float) -> None:
        if stage not in self.tasks:
            self.bar.start()  # a no-op after the first stage
            self.tasks[stage] = self.bar.add_task(stage, total=total, loss="")
        shown = "" if math.isnan(loss) else f"loss {loss:.3f}"
        self.bar.update(self.tasks[stage], completed=done, loss=shown)


def lab(
    data: Annotated[str, typer.Option(
        help="moons, spiral, gaussians (a 3x3 grid), or a picture file read as a density (white = dense).")
    ] = "moons",
    samplers: Annotated[str, typer.Option(help="Samplers, comma-separated, one panel each.")] = (
        "ddpm,euler_a,ddim,euler,heun,dpmpp_2m"),
    steps: Annotated[int, typer.Option(help="Sampling steps (one GIF frame each), 1-200.")] = 25,
    schedule: Annotated[str, typer.Option(
        help="β schedule the model trains and samples with: linear, scaled_linear or cosine.")] = "linear",
    guidance: Annotated[str | None, typer.Option(
        help=f"With --out: guidance weights w for <out>_guidance.png, comma-separated. Default: {DEFAULT_GUIDANCE}.",
        show_default=False)] = None,
    lessons: Annotated[str | None, typer.Option(
        help="With --out (the diffusion objective): lessons to add, comma-separated: classifier (<out>_classifier.png: "
             "classifier guidance beside classifier-free guidance) and variance (<out>_variance.png: the learned "
             "reverse variance).",
        show_default=False)] = None,
    gif: Annotated[Path | None, typer.Option(
        help="The animation of the reverse process (.gif). Default: --out's name with .gif, else lab.gif.",
        show_default=False)] = None,
    out: OutOpt = None,
    train_steps: Annotated[int, typer.Option(
        help="Training steps of each network the run trains (Adam, 1024 fresh points each).")] = 750,
    particles: Annotated[int, typer.Option(help="Points per panel, 2-100000.")] = 1000,
    seed: SeedOpt = 0,
    frame_ms: FrameMsOpt = 160,
    force: ForceOpt = False,
    objective: Annotated[str, typer.Option(
        help="diffusion (an ε-model), flow (flow matching: a velocity model, as SD3 and Flux) or both, trained alike "
             "on the same data; with flow or both, --out is the flow's figure.")] = "diffusion",
    shift: Annotated[float, typer.Option(
        help="The flow samplers' time shift t → s·t/(1+(s−1)·t) (SD3 uses 3); with --objective flow or both.")] = 1.0,
    reflow: Annotated[bool, typer.Option(
        "--reflow", help="With --objective flow or both: train the flow again on its own (x_T, sample) pairs, one "
                         "reflow round (a GIF panel; <out>_reflow.png with --out).")] = False,
) -> None:
    """Train a tiny ε-model on 2-D points in seconds and watch every sampler carry noise back to the data.

    The model (an MLP told the timestep and the class) trains with the same L_simple and schedules as the
    real model; the samplers of diffx run on it unchanged. The GIF shows, step by step, the forward process
    q(x_t | x_0), the learned score field and each sampler's particles with their paths, ODE and ancestral
    side by side. With --out it also writes the forward process and score field over t (--out), linear vs
    cosine β over step counts (<out>_schedules.png) and classifier-free guidance over w (<out>_guidance.png);
    --lessons classifier,variance adds a noisy classifier's guidance beside CFG's implicit classifier
    (<out>_classifier.png) and a model that learns its reverse variance Σ_θ (<out>_variance.png).
    --objective both also trains a flow-matching model and adds its particles under diffusion's, from the same x_T;
    its --out figure puts the two models' paths side by side and runs the flow model through diffx's DDIM.

    Example: diffx lab --data spiral --steps 20 --gif spiral.gif --out spiral.png --lessons classifier,variance
    """
    from diffx.lab import LabJob, LabTrainConfig, run_lab

    check_frame_ms(frame_ms)
    if guidance is not None and out is None:
        raise InvalidArgumentError("--guidance draws <out>_guidance.png; add --out lab.png (or drop --guidance)")
    if guidance is not None and objective != "diffusion":
        raise InvalidArgumentError("--guidance draws the diffusion model's <out>_guidance.png; drop --objective")
    lesson_names = () if lessons is None else tuple(item.strip() for item in lessons.split(",") if item.strip())
    if lessons is not None and not lesson_names:
        raise InvalidArgumentError("--lessons is empty; name classifier, variance or both (comma-separated)")
    gif = gif or (named_file(out).with_suffix(".gif") if out is not None else Path("lab.gif"))  # spiral.png -> .gif
    weights = parse_list(DEFAULT_GUIDANCE if guidance is None else guidance, float, "--guidance")
    # run_lab checks it all before training.
    job = LabJob(data=data, samplers=tuple(item.strip() for item in samplers.split(",") if item.strip()),
                 steps=steps, schedule=schedule, guidance=tuple(weights), gif=gif, out=out, force=force, seed=seed,
                 particles=particles, frame_ms=frame_ms, train=LabTrainConfig(steps=train_steps), objective=objective,
                 shift=shift, reflow=reflow, lessons=lesson_names)
    with LabProgressBar() as progress:
        result = run_lab(job, progress)
    print_written(result.written)
    if result.sliced_wasserstein:
        OUT.print(f"sliced Wasserstein SW₁ to the data at {steps} steps: {_named(result.sliced_wasserstein)} "
                  f"(untrained model: {result.untrained_sliced_wasserstein:.3g})", soft_wrap=True)
    if result.flow is not None:
        _print_flow(result.flow, steps)
    if result.spread:
        spreads = " ".join(f"w={weight:g}:{value:.3f}" for weight, value in result.spread.items())
        OUT.print(f"per-class spread under guidance: {spreads}", soft_wrap=True)
    for lesson, measured in result.lessons.items():
        OUT.print(f"{lesson} lesson: {_named(measured)}", soft_wrap=True)


def _named(values: dict[str, float]) -> str:
    return " ".join(f"{name}={value:.3f}" for name, value in values.items())


def _print_flow(flow: "FlowResult", steps: int) -> None:
    """The flow model's measurements, one line each."""
    OUT.print(f"flow matching SW₁ to the data at {steps} steps: {_named(flow.sliced_wasserstein)}", soft_wrap=True)
    OUT.print(f"path length / distance between its ends (1 = straight, in the flow's units x_t = (1−t)x_0 + tε): "
              f"{_named(flow.straightness)}", soft_wrap=True)
    OUT.print(f"flow → ε̂ → diffx's DDIM over the flow's grid: max difference from flow Euler "
              f"{flow.equivalence_gap:.1e} (float64, {steps} steps)", soft_wrap=True)
    for name, distances in flow.few_steps.items():
        counts = ", ".join(f"{count} step{'s' if count > 1 else ''} {value:.3f}" for count, value in distances.items())
        OUT.print(f"{name} SW₁ at {counts}", soft_wrap=True)
