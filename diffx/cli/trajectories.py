"""`diffx paths`: how samplers travel from the same x_T — their convergence against model evaluations and
their latent paths in 2-D. Parses the options, calls `diffx.trajectories`, prints what it wrote and measured;
the heavy modules are imported inside the command, so `diffx --help` answers at once."""

from pathlib import Path
from typing import Annotated

import typer

from diffx.cli.core import OUT, print_written
from diffx.cli.options import (
    ForceOpt,
    GuidanceOpt,
    GuidanceRescaleOpt,
    KarrasOpt,
    ModelChoice,
    NegativeOpt,
    OutOpt,
    PromptOpt,
    SamplingChoice,
    ScheduleOpt,
    SeedOpt,
    SizeOpt,
    option_groups,
    parse_list,
)
from diffx.cli.progress import StepProgress
from diffx.files import check_outputs, companion_path


@option_groups
def paths(
    prompt: PromptOpt = "",
    samplers: Annotated[str | None, typer.Option(
        help="Samplers to run from the same x_T, comma-separated: ddpm, ddim, euler, euler_a, heun, dpmpp_2m. "
             "Default: ddim,euler,euler_a,heun,dpmpp_2m; a rectified-flow model's (SD3): euler,heun.",
        show_default=False)] = None,
    steps: Annotated[str | None, typer.Option(
        help="Steps of each run. Several, comma-separated (5,10,25), add a panel with the error of each run's "
             "result against its model evaluations; paths and the other panels show the most. "
             "Default: the model's.", show_default=False)] = None,
    reference: Annotated[str | None, typer.Option(
        help="The stand-in for the exact ODE solution, SAMPLER:STEPS, a sampler that adds no noise. "
             "Default: dpmpp_2m:200; a rectified-flow model's: heun:200.", show_default=False)] = None,
    out: OutOpt = None,
    negative_prompt: NegativeOpt = None,
    schedule: ScheduleOpt = None,
    spacing: Annotated[str | None, typer.Option(
        help="Timestep spacing: leading, trailing or linspace. Default: trailing, which starts every step count "
             "at t = T − 1 (leading starts short runs lower down, on a different ODE).", show_default=False)
    ] = None,
    karras: KarrasOpt = False,
    seed: SeedOpt = 0,
    size: SizeOpt = None,
    guidance: GuidanceOpt = None,
    guidance_rescale: GuidanceRescaleOpt = 0.0,
    model: ModelChoice = ModelChoice(),
    force: ForceOpt = False,
) -> None:
    """Run several samplers from the same x_T and show how they travel.

    Writes the latent path of every sampler and of the reference solve, projected on their two principal
    components, with each result below (--out, default paths.png), and the error-vs-NFE chart
    (<out>_convergence.png): per model evaluation the distance of x̂0 to the reference solution and to the
    run's last x̂0, per step the step length, log scale. Prints each run's model evaluations (counted) and the
    distance of its result to the reference.

    Example: diffx paths --prompt "a red circle" --samplers ddim,euler,euler_a,heun,dpmpp_2m --steps 25 --out paths.png
    """
    from diffx.experiments import trajectories
    from diffx.render import save_png

    out = out or Path("paths.png")
    chart_path = companion_path(out, "convergence")
    check_outputs([chart_path], force, picture=out)
    names = None if samplers is None else \
        trajectories.check_samplers([name.strip() for name in samplers.split(",") if name.strip()])
    step_counts = parse_list(steps, int, "--steps") if steps is not None else None
    solve = None if reference is None else trajectories.Reference.parse(reference)
    sampling = SamplingChoice(negative_prompt=negative_prompt, schedule=schedule, spacing=spacing, karras=karras,
                              seed=seed, size=size, guidance_rescale=guidance_rescale)
    settings = sampling.settings(prompt, guidance)
    loaded = model.load()
    count = len(names) if names else len(trajectories.default_samplers(loaded))
    with StepProgress(runs=1 + count * (len(step_counts) if step_counts else 1)) as progress:
        result = trajectories.sampler_paths(loaded, settings, names, step_counts, solve, progress)
    save_png(trajectories.path_picture(result), out, force)
    save_png(trajectories.convergence_chart(result), chart_path, force)
    for run in result.runs:
        OUT.print(f"{run.sampler:>9} {run.steps:>4} steps {run.nfe:>4} model evaluations   "
                  f"‖x_final − x_ref‖ = {run.convergence.final_error:.4g}")
    print_written([out, chart_path])
