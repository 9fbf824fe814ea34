"""One lab run, as `diffx lab` does it: train the 2-D model, run the samplers, draw and write the pictures.

    job = LabJob(data="moons", samplers=("ddim", "euler_a"), steps=25, gif=Path("lab.gif"))
    result = run_lab(job)          # checks everything first, then trains (seconds) and writes
    result.sliced_wasserstein      # {"ddim": 0.11, "euler_a": 0.07}: each sampler's SW₁ to the data

Writes `gif` (the reverse process, one frame per step) and, with `out`, three pictures: `out` (the forward
process and the learned score field over t), `<out>_schedules.png` (linear vs cosine β × step count) and
`<out>_guidance.png` (classifier-free guidance over w); and one `<out>_<lesson>.png` per lesson asked for
(`lab.lessons`: classifier guidance beside CFG, the learned variance).

`objective` "flow" trains a flow-matching model instead, "both" the two on the same data and budget
(flow_job.py): the GIF then shows the flow's samplers under diffusion's, from the same x_T, and `out` is the flow's
comparison figure (with `reflow`, `<out>_reflow.png` too). The lessons are the diffusion figures' (objective
"diffusion" only).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from diffx.errors import InvalidArgumentError, check_choice, check_finite
from diffx.files import check_outputs, companion_path
from diffx.lab.data import PointDistribution, get_distribution
from diffx.lab.figures import ANCESTRAL, forward_and_field, guidance_sweep, reverse_frames, schedules_and_steps
from diffx.lab.flow_figures import flow_frames, stack_frames
from diffx.lab.flow_job import DEFAULT_SHIFT, OBJECTIVES, FlowOutcome, FlowResult, flow_figures, run_flow_part
from diffx.lab.lessons import LessonContext, check_lesson_data, check_lessons, run_lesson
from diffx.lab.metrics import class_spread, sliced_wasserstein
from diffx.lab.model import LabModel
from diffx.lab.sampling import LabRun, initial_noise, run_sampler
from diffx.lab.train import LabTrainConfig, TrainedLab, train_lab_model
from diffx.render.io import save_gif, save_png
from diffx.sampling.flow import check_shift
from diffx.sampling.grids import SAMPLERS
from diffx.sampling.schedules import BETA_SCHEDULES, NoiseSchedule

DEFAULT_SAMPLERS = ("ddpm", "euler_a", "ddim", "euler", "heun", "dpmpp_2m")  # ancestral first: one row each
COMPARED_SCHEDULES = ("linear", "cosine")
COMPARED_STEPS = (3, 6, 12, 25, 50)
MAX_STEPS = 200  # one GIF frame per step
MAX_GUIDANCE = 50.0

LabProgress = Callable[[str, int, int, float], None]  # (stage, done, total, running training loss or NaN)


@dataclass(frozen=True)
class LabJob:
    """What to train, run and draw. `gif`/`out` None: not written (at least one is needed)."""

    data: str = "moons"
    samplers: tuple[str, ...] = DEFAULT_SAMPLERS
    steps: int = 25
    schedule: str = "linear"
    guidance: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)
    gif: Path | None = Path("lab.gif")
    out: Path | None = None
    force: bool = False
    seed: int = 0
    particles: int = 1000
    frame_ms: int = 160
    train: LabTrainConfig = field(default_factory=LabTrainConfig)
    objective: str = "diffusion"  # or "flow", "both" (flow_job.py)
    shift: float = DEFAULT_SHIFT  # the flow samplers' time shift (SD3's)
    reflow: bool = False  # one reflow round of the flow model
    lessons: tuple[str, ...] = ()  # of `lessons.LESSONS`, each drawn to <out>_<lesson>.png (diffusion only)

    @property
    def outputs(self) -> list[Path | None]:
        """Every file the job writes (None where not asked for): the GIF, then `out` and its companions —
        diffusion's schedules and guidance figures and the lessons', or with a flow objective the reflow figure."""
        if self.objective != "diffusion":
            return [self.gif, self.out, companion_path(self.out, "reflow") if self.out and self.reflow else None]
        if self.out is None:
            return [self.gif, None, None, None]
        return [self.gif, self.out, companion_path(self.out, "schedules"), companion_path(self.out, "guidance"),
                *(companion_path(self.out, lesson) for lesson in self.lessons)]

    def check(self) -> PointDistribution:
        """Every argument and output path, before any work; returns the data (a mask file is read here)."""
        if not self.samplers:
            raise InvalidArgumentError("no samplers given; name at least one of: " + ", ".join(SAMPLERS))
        for sampler in self.samplers:
            check_choice("sampler", sampler, SAMPLERS)
        if len(set(self.samplers)) != len(self.samplers):
            raise InvalidArgumentError(f"samplers {','.join(self.samplers)} name one twice; give each once")
        if not 1 <= self.steps <= MAX_STEPS:
            raise InvalidArgumentError(f"steps must be 1 to {MAX_STEPS} (one GIF frame each), got {self.steps}")
        check_choice("beta schedule", self.schedule, BETA_SCHEDULES)
        if not self.guidance:
            raise InvalidArgumentError("guidance list is empty; give weights like 0,1,2,4,8")
        for weight in self.guidance:
            if not 0 <= check_finite("guidance", weight) <= MAX_GUIDANCE:
                raise InvalidArgumentError(f"guidance weight {weight:g} is out of range; use 0 to {MAX_GUIDANCE:g}")
        if not 0 <= self.seed < 2**63 - 1:
            raise InvalidArgumentError(f"seed must be 0 to 2^63 - 2, got {self.seed}")
        if not 2 <= self.particles <= 100_000:
            raise InvalidArgumentError(f"particles must be 2 to 100000, got {self.particles}")
        if self.gif is None and self.out is None:
            raise InvalidArgumentError("nothing to write; give a GIF path, an --out picture, or both")
        if self.gif is not None and Path(self.gif).suffix.lower() != ".gif":
            raise InvalidArgumentError(f"the lab animation is a GIF; name it .gif, not {Path(self.gif).name!r}")
        check_lessons(self.lessons, self.out)
        self._check_objective()
        check_outputs(self.outputs[2:], self.force, picture=self.out)
        check_outputs([self.gif], self.force)
        data = get_distribution(self.data)
        check_lesson_data(self.lessons, data)
        return data

    def _check_objective(self) -> None:
        """The objective, and the options that belong to one objective only."""
        check_choice("objective", self.objective, OBJECTIVES)
        check_shift(self.shift)
        if self.objective != "diffusion" and self.lessons:
            raise InvalidArgumentError("--lessons teach with the diffusion model's figures; drop them, or use "
                                       "--objective diffusion")
        if self.objective == "diffusion" and (self.reflow or self.shift != DEFAULT_SHIFT):
            raise InvalidArgumentError("--shift and --reflow are the flow model's; add --objective flow (or both)")
        if self.objective == "flow" and (self.samplers != DEFAULT_SAMPLERS or self.schedule != "linear"):
            raise InvalidArgumentError("--samplers and --schedule are the diffusion model's; the flow runs flow Euler "
                                       "and Heun: drop them, or use --objective both")


@dataclass
class LabResult:
    """What a lab run wrote and measured: SW₁ to the data per sampler (at `steps`), the untrained model's
    SW₁ (first sampler), the guided classes' RMS spread per guidance weight (with `out`) and each lesson's
    measurements (`lessons.LessonResult.measured`) — the diffusion model's (empty and None without one) — and
    with a flow objective the flow's measurements."""

    written: list[Path]
    sliced_wasserstein: dict[str, float]
    untrained_sliced_wasserstein: float | None
    spread: dict[float, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    lessons: dict[str, dict[str, float]] = field(default_factory=dict)
    flow: FlowResult | None = None


def _report(progress: LabProgress | None, stage: str) -> Callable[[int, int, float], None] | None:
    return None if progress is None else (lambda done, total, loss: progress(stage, done, total, loss))


def _train(job: LabJob, data: PointDistribution, schedule: str, progress: LabProgress | None) -> TrainedLab:
    return train_lab_model(data, NoiseSchedule.create(schedule), job.train, job.seed,
                           _report(progress, f"training on {data.name}, {schedule} β"))


def _untrained_sw(job: LabJob, trained: TrainedLab, noise: torch.Tensor, x0: torch.Tensor) -> float:
    """SW₁ of an untrained lab model's samples (its random initial weights): the scale "not learned" has."""
    torch.manual_seed(job.seed + 7)
    untrained = LabModel(trained.data.num_classes, width=job.train.width, depth=job.train.depth).eval()
    run = run_sampler(untrained, trained.schedule, job.samplers[0], job.steps, noise, seed=job.seed)
    return sliced_wasserstein(run.samples, x0)


def _frames_done(progress: LabProgress | None, stage: str) -> Callable[[int, int], None] | None:
    return None if progress is None else (lambda done, total: progress(stage, done, total, math.nan))


def run_lab(job: LabJob, progress: LabProgress | None = None) -> LabResult:
    """Check `job`, train the model(s) of its objective (and, with `out`, one per compared schedule), sample, draw
    and write."""
    data = job.check()
    x0, labels = data.sample(job.particles, torch.Generator().manual_seed(job.seed + 1))  # (N, 2), (N,)
    noise = initial_noise(job.particles, job.seed + 2)  # the x_T every sampler starts from
    result = LabResult(written=[], sliced_wasserstein={}, untrained_sliced_wasserstein=None)
    trained, runs = None, []
    if job.objective != "flow":
        trained = _train(job, data, job.schedule, progress)
        runs = [run_sampler(trained.model, trained.schedule, sampler, job.steps, noise, seed=job.seed + 3)
                for sampler in job.samplers]
        result.sliced_wasserstein = {run.sampler: sliced_wasserstein(run.samples, x0) for run in runs}
        result.losses, result.untrained_sliced_wasserstein = trained.losses, _untrained_sw(job, trained, noise, x0)
    flow = None
    if job.objective != "diffusion":
        flow = run_flow_part(job, data, x0, noise, trained, lambda stage: _report(progress, stage))
        result.flow = flow.result
    if job.gif is not None:
        frames = _gif_frames(job, trained, runs, flow, (x0, labels), progress)
        result.written.append(save_gif(frames, job.gif, duration_ms=job.frame_ms, hold_last_ms=2500, force=job.force))
    if job.out is not None and flow is None:
        result.written += _write_figures(job, trained, noise, (x0, labels), result, progress)
    elif job.out is not None:
        pictures = flow_figures(job, flow, data, x0, noise)
        result.written += [save_png(picture, path, job.force)
                           for picture, path in zip(pictures, [p for p in job.outputs[1:] if p], strict=True)]
    return result


def _gif_frames(job: LabJob, trained: TrainedLab | None, runs: list[LabRun], flow: FlowOutcome | None,
                data: tuple[torch.Tensor, torch.Tensor], progress: LabProgress | None) -> list[Image.Image]:
    """The GIF's frames: diffusion's samplers, the flow's, or diffusion's above the flow's (one x_T for all)."""
    x0, labels = data
    frames = None
    if trained is not None:
        frames = reverse_frames(trained, runs, x0, labels, on_frame=_frames_done(progress, "drawing the GIF frames"))
    if flow is None:
        return frames
    flow_part = flow_frames(flow.trained.model, flow.trained.data, flow.panels, labels, job.shift,
                            on_frame=_frames_done(progress, "drawing the flow's GIF frames"))
    return flow_part if frames is None else stack_frames(frames, flow_part)


def _write_figures(job: LabJob, trained: TrainedLab, noise: torch.Tensor, data: tuple[torch.Tensor, torch.Tensor],
                   result: LabResult, progress: LabProgress | None) -> list[Path]:
    """`out` (forward process and score field), `<out>_schedules.png`, `<out>_guidance.png` and `<out>_<lesson>.png`
    per lesson (its measurements into `result.lessons`)."""
    x0, data_labels = data
    _, out, schedules_path, guidance_path = job.outputs[:4]
    ode = [sampler for sampler in job.samplers if sampler not in ANCESTRAL]
    sampler = (ode or list(job.samplers))[0]
    models = {trained.schedule.beta_schedule: trained}
    for name in dict.fromkeys([*COMPARED_SCHEDULES, job.schedule]):
        if name not in models:
            models[name] = _train(job, trained.data, name, progress)
    compared = {name: [run_sampler(model.model, model.schedule, sampler, steps, noise) for steps in COMPARED_STEPS]
                for name, model in models.items()}
    labels = torch.arange(job.particles) % trained.data.num_classes  # every class asked for equally often
    guided: list[tuple[float, LabRun]] = []
    for weight in job.guidance:
        run = run_sampler(trained.model, trained.schedule, sampler, job.steps, noise, labels=labels, guidance=weight)
        guided.append((weight, run))
        result.spread[weight] = class_spread(run.samples, labels)
    written = [save_png(forward_and_field(trained, x0, data_labels), out, job.force),
               save_png(schedules_and_steps(compared, x0), schedules_path, job.force),
               save_png(guidance_sweep(trained, guided, x0), guidance_path, job.force)]
    context = LessonContext(trained, x0, noise, sampler, job.steps, job.guidance, job.train, job.seed,
                            None if progress is None else lambda stage: _report(progress, stage))
    for lesson, path in zip(job.lessons, job.outputs[4:], strict=True):
        taught = run_lesson(lesson, context)
        result.lessons[lesson] = taught.measured
        written.append(save_png(taught.picture, path, job.force))
    return written
