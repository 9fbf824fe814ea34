"""The flow half of a lab run (`diffx lab --objective flow|both`): train the flow model on the diffusion model's data
and budget, sample it from the same x_T, measure it against diffusion, optionally reflow it, and draw it.

    outcome = run_flow_part(job, data, x0, noise, diffusion=trained_or_None)
    outcome.result.sliced_wasserstein   # {"flow_euler": 0.063, "flow_heun": 0.059}
    outcome.result.equivalence_gap      # max |flow Euler − diffx's DDIM on the flow's ε̂| (float64)

`job` is a `job.LabJob` (anything with its fields, `FlowSettings`); `run_lab` calls this and writes what it draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image
from torch import Tensor

from diffx.lab.data import PointDistribution
from diffx.lab.flow import TrainedFlow, flow_times, run_flow, train_flow_model
from diffx.lab.flow_ddim import equivalence_gap, straight_line_path
from diffx.lab.flow_figures import FlowPanel, flow_comparison, reflow_figure
from diffx.lab.metrics import path_straightness, sliced_wasserstein
from diffx.lab.reflow import REFLOW_PAIRS, reflow_pairs, train_reflow
from diffx.lab.sampling import LabRun, initial_noise, run_sampler
from diffx.lab.train import LabTrainConfig, TrainedLab

OBJECTIVES = ("diffusion", "flow", "both")
DEFAULT_SHIFT = 1.0  # SD3 samples 1024² pictures with 3; the lab's 2-D points sample best unshifted (README)
COMPARED_SHIFTS = (1.0, 3.0)  # the figure's rows of flow Euler over step counts, with the job's own shift
COMPARED_STEPS = (1, 2, 5, 12, 25)
FEW_STEPS = (1, 2)  # the step counts reflow is for

StageProgress = Callable[[str], Callable[[int, int, float], None] | None]  # stage name -> its progress callback


class FlowSettings(Protocol):
    """What the flow part reads of a `LabJob`."""

    steps: int
    shift: float
    reflow: bool
    seed: int
    particles: int
    train: LabTrainConfig


@dataclass
class FlowResult:
    """What the flow part measured, all against the same data points and from the same x_T as diffusion.

    sliced_wasserstein  SW₁ to the data at the job's steps: flow_euler, flow_heun (and reflow_euler with reflow)
    straightness        `metrics.path_straightness` in the flow's units: ddim (the diffusion model, when trained),
                        flow_euler, reflow_euler
    equivalence_gap     max |flow Euler − diffx's DDIM on ε̂ = x_t + (1 − t) v̂| after the job's steps, float64
    few_steps           SW₁ at 1 and 2 Euler steps: {"flow": {1: …, 2: …}, "reflow": {…}} (reflow: with reflow)
    """

    sliced_wasserstein: dict[str, float]
    straightness: dict[str, float]
    equivalence_gap: float
    few_steps: dict[str, dict[int, float]] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)


@dataclass
class FlowOutcome:
    """The flow part's models, runs and measurements, for the GIF and the figures."""

    trained: TrainedFlow
    panels: list[FlowPanel]  # the GIF's flow samplers
    result: FlowResult
    paths: list[tuple[str, Tensor]]  # (name, path in the flow's units) for the figure, diffusion's first
    equivalence: tuple[Tensor, Tensor]  # flow Euler's and DDIM's samples (float64)
    few_step_runs: dict[str, list[LabRun]] = field(default_factory=dict)  # "flow"/"reflow" -> FEW_STEPS + steps


def run_flow_part(job: FlowSettings, data: PointDistribution, x0: Tensor, noise: Tensor,
                  diffusion: TrainedLab | None = None, stage: StageProgress | None = None) -> FlowOutcome:
    """Train the flow model (the job's budget and seed, as the diffusion model), run flow Euler and Heun from `noise`
    (the diffusion samplers' x_T) over `flow_times(steps, shift)`, compare with DDIM on `diffusion`, run the flow by
    diffx's DDIM, and with `job.reflow` train one reflow round. `x0` (N, 2): the data points SW₁ is measured to."""
    stage = stage or (lambda name: None)
    trained = train_flow_model(data, job.train, job.seed, stage(f"training the flow model on {data.name}"))
    times = flow_times(job.steps, job.shift)
    euler, heun = (run_flow(trained.model, sampler, times, noise) for sampler in ("flow_euler", "flow_heun"))
    ends = (x0, initial_noise(len(x0), job.seed + 5))  # p_t's clouds in the GIF
    panels = [FlowPanel("flow Euler", euler, ends), FlowPanel("flow Heun", heun, ends)]
    paths = [("flow Euler · flow (v)", euler.path), ("flow Heun · flow (v)", heun.path)]
    straightness = {"flow_euler": path_straightness(euler.path)}
    if diffusion is not None:  # its DDIM path from the same x_T, in the flow's units
        ddim = straight_line_path(run_sampler(diffusion.model, diffusion.schedule, "ddim", job.steps, noise),
                                  diffusion.schedule)
        paths.insert(0, ("DDIM · diffusion (ε)", ddim))
        straightness = {"ddim": path_straightness(ddim), **straightness}
    euler64, ddim64, gap = equivalence_gap(trained.model, times, noise)
    result = FlowResult(sliced_wasserstein={run.sampler: sliced_wasserstein(run.samples, x0) for run in (euler, heun)},
                        straightness=straightness, equivalence_gap=gap, losses=trained.losses)
    outcome = FlowOutcome(trained=trained, panels=panels, result=result, paths=paths, equivalence=(euler64, ddim64))
    outcome.few_step_runs["flow"] = _few_steps(trained, job, noise, euler)
    if job.reflow:
        _reflow(job, outcome, x0, noise, stage)
    result.few_steps = {name: {len(run.path) - 1: sliced_wasserstein(run.samples, x0) for run in runs[:-1]}
                        for name, runs in outcome.few_step_runs.items()}
    return outcome


def _few_steps(flow: TrainedFlow, job: FlowSettings, noise: Tensor, full: LabRun) -> list[LabRun]:
    """Flow Euler at FEW_STEPS from `noise` (on the job's shift), then `full` (the run at the job's steps)."""
    return [run_flow(flow.model, "flow_euler", flow_times(steps, job.shift), noise) for steps in FEW_STEPS] + [full]


def _reflow(job: FlowSettings, outcome: FlowOutcome, x0: Tensor, noise: Tensor, stage: StageProgress) -> None:
    """One reflow round on REFLOW_PAIRS couplings of the flow's ODE, its runs and measurements added to `outcome`."""
    pairs = reflow_pairs(outcome.trained, seed=job.seed + 4)
    reflowed = train_reflow(outcome.trained, pairs, job.train, job.seed,
                            stage(f"reflow: training on {REFLOW_PAIRS} (x_T, sample) pairs"))
    run = run_flow(reflowed.model, "flow_euler", flow_times(job.steps, job.shift), noise)
    n = len(x0)
    outcome.panels.append(FlowPanel("reflow Euler", run, (pairs.x0[:n], pairs.noise[:n])))
    outcome.paths.append(("reflow Euler · 1 round", run.path))
    outcome.result.sliced_wasserstein["reflow_euler"] = sliced_wasserstein(run.samples, x0)
    outcome.result.straightness["reflow_euler"] = path_straightness(run.path)
    outcome.few_step_runs["reflow"] = _few_steps(reflowed, job, noise, run)


def flow_figures(job: FlowSettings, outcome: FlowOutcome, data: PointDistribution, x0: Tensor,
                 noise: Tensor) -> list[Image.Image]:
    """The flow's pictures: the comparison figure (paths, the DDIM equivalence, shifts × step counts) and, after a
    reflow, the reflow figure."""
    shift_runs = {shift: [run_flow(outcome.trained.model, "flow_euler", flow_times(steps, shift), noise)
                          for steps in COMPARED_STEPS] for shift in dict.fromkeys([*COMPARED_SHIFTS, job.shift])}
    pictures = [flow_comparison(data, x0, outcome.paths, outcome.equivalence, shift_runs)]
    if "reflow" in outcome.few_step_runs:
        pictures.append(reflow_figure(data, x0, {"flow": outcome.few_step_runs["flow"],
                                                 "after one reflow": outcome.few_step_runs["reflow"]}))
    return pictures

