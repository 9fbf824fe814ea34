"""`diffx lab`: the 2-D diffusion lab (`diffx.lab.run_lab`) — train a tiny ε-model on points, watch every
sampler carry noise back to the data.

Parses the options into a `LabJob`, shows training as a rich progress bar on stderr, prints what it wrote
and each sampler's sliced Wasserstein distance to the data.
"""

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from diffx.cli.core import ERR, OUT, print_written
from diffx.cli.options import ForceOpt, FrameMsOpt, OutOpt, SeedOpt, check_frame_ms, parse_list
from diffx.errors import InvalidArgumentError

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
        help="With --out: lessons to add, comma-separated: classifier (<out>_classifier.png: classifier guidance "
             "beside classifier-free guidance) and variance (<out>_variance.png: the learned reverse variance).",
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
) -> None:
    """Train a tiny ε-model on 2-D points in seconds and watch every sampler carry noise back to the data.

    The model (an MLP told the timestep and the class) trains with the same L_simple and schedules as the
    real model; the samplers of diffx run on it unchanged. The GIF shows, step by step, the forward process
    q(x_t | x_0), the learned score field and each sampler's particles with their paths, ODE and ancestral
    side by side. With --out it also writes the forward process and score field over t (--out), linear vs
    cosine β over step counts (<out>_schedules.png) and classifier-free guidance over w (<out>_guidance.png);
    --lessons classifier,variance adds a noisy classifier's guidance beside CFG's implicit classifier
    (<out>_classifier.png) and a model that learns its reverse variance Σ_θ (<out>_variance.png).

    Example: diffx lab --data spiral --steps 20 --gif spiral.gif --out spiral.png --lessons classifier,variance
    """
    from diffx.lab import LabJob, LabTrainConfig, run_lab

    check_frame_ms(frame_ms)
    if guidance is not None and out is None:
        raise InvalidArgumentError("--guidance draws <out>_guidance.png; add --out lab.png (or drop --guidance)")
    lesson_names = () if lessons is None else tuple(item.strip() for item in lessons.split(",") if item.strip())
    if lessons is not None and not lesson_names:
        raise InvalidArgumentError("--lessons is empty; name classifier, variance or both (comma-separated)")
    gif = gif or (out.with_suffix(".gif") if out is not None else Path("lab.gif"))  # spiral.png -> spiral.gif
    job = LabJob(data=data, samplers=tuple(item.strip() for item in samplers.split(",") if item.strip()),
                 steps=steps, schedule=schedule, guidance=tuple(parse_list(guidance or DEFAULT_GUIDANCE, float,
                                                                           "--guidance")),
                 gif=gif, out=out, force=force, seed=seed, particles=particles, frame_ms=frame_ms,
                 train=LabTrainConfig(steps=train_steps), lessons=lesson_names)  # run_lab checks it all first
    with LabProgressBar() as progress:
        result = run_lab(job, progress)
    print_written(result.written)
    distances = " ".join(f"{name}={value:.3f}" for name, value in result.sliced_wasserstein.items())
    OUT.print(f"sliced Wasserstein SW₁ to the data at {steps} steps: {distances} "
              f"(untrained model: {result.untrained_sliced_wasserstein:.3g})", soft_wrap=True)
    if result.spread:
        spreads = " ".join(f"w={weight:g}:{value:.3f}" for weight, value in result.spread.items())
        OUT.print(f"per-class spread under guidance: {spreads}", soft_wrap=True)
    for lesson, measured in result.lessons.items():
        OUT.print(f"{lesson} lesson: " + " ".join(f"{key}={value:.3f}" for key, value in measured.items()),
                  soft_wrap=True)
