"""The lessons `diffx lab --lessons` adds to the `--out` figures: each trains what it needs beside the job's
ε-model, measures, and draws one figure, `<out>_<lesson>.png`.

- classifier (`lab.classifier`): a noisy classifier f_φ(y | x_t, t); its gradient field beside CFG's implicit
  one per t (their cosine similarity), and samples under both guidances over w (each class's spread).
- variance (`lab.variance`): a model that also outputs v, trained with L_hybrid; its Σ_θ against β_t and β̃_t
  over t, and DDPM at few steps with fixed and learned variances (SW₁ to the data per step count).

Each lesson returns its measurements as flat `key: value` pairs (what `diffx lab` prints and
benchmarks/lab_lessons.py reports) and its picture.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from diffx.errors import InvalidArgumentError, check_choice
from diffx.lab.classifier import (
    classifier_gradient,
    classifier_guided_eps,
    implicit_gradient,
    mean_cosine,
    train_classifier,
)
from diffx.lab.data import PointDistribution
from diffx.lab.figures import arrow_starts, forward_marginal
from diffx.lab.lesson_figures import FieldPair, GuidedPair, VarianceCurves, classifier_figure, variance_figure
from diffx.lab.metrics import class_spread, sliced_wasserstein
from diffx.lab.model import LabModel, one_thread
from diffx.lab.sampling import initial_noise, run_denoiser, run_sampler
from diffx.lab.train import LabTrainConfig, TrainedLab, TrainProgress
from diffx.lab.variance import (
    MAPPINGS,
    RespacedChain,
    eps_head,
    interpolated_log_variance,
    learned_fraction,
    sample_learned_variance,
    split_output,
    train_variance_model,
    training_variances,
)
from diffx.sampling.samplers import VARIANCES
from diffx.sampling.schedules import NoiseSchedule

LESSONS = ("classifier", "variance")
FIELD_TIMESTEPS = (25, 100, 300, 600, 900)  # where the two guidance fields are compared
FIELD_CLASS = 0  # the class y both fields point towards
VARIANCE_STEPS = (5, 10, 25)  # DDPM step counts compared
CHART_STEPS = 10  # the respaced chain whose variances are charted
QUANTILES = torch.tensor([0.1, 0.5, 0.9])  # the respaced chart's band and median
SW_POINTS = 4000  # samples per SW₁ (the panels draw the first `particles`): 1000 would hide the differences

StageProgress = Callable[[str], TrainProgress]  # a training stage's name -> its progress callback


@dataclass(frozen=True)
class LessonContext:
    """What every lesson is given: the job's trained ε-model, its data and the x_T, how to sample and train."""

    trained: TrainedLab
    x0: Tensor  # (N, 2) data points: the reference cloud
    noise: Tensor  # (N, 2) the x_T every run starts from
    sampler: str  # the ODE sampler of the guidance sweep
    steps: int
    guidance: tuple[float, ...]
    train: LabTrainConfig
    seed: int = 0
    progress: StageProgress | None = None

    def report(self, stage: str) -> TrainProgress | None:
        """The training progress callback for `stage`, or None without `progress`."""
        return None if self.progress is None else self.progress(stage)


@dataclass
class LessonResult:
    """One lesson's picture and its measurements, `key: value` (e.g. "cos_t300": 0.99)."""

    picture: Image.Image
    measured: dict[str, float]


def check_lessons(lessons: Sequence[str], out: Path | None) -> None:
    """Every lesson name known and given once, and an --out to name their pictures after."""
    for lesson in lessons:
        check_choice("lesson", lesson, LESSONS)
    if len(set(lessons)) != len(lessons):
        raise InvalidArgumentError(f"lessons {','.join(lessons)} name one twice; give each once")
    if lessons and out is None:
        raise InvalidArgumentError(f"--lessons draws <out>_{lessons[0]}.png; add --out lab.png (or drop --lessons)")


def check_lesson_data(lessons: Sequence[str], data: PointDistribution) -> None:
    """Data every lesson can use: the classifier lesson needs two classes or more."""
    if "classifier" in lessons and data.num_classes < 2:
        raise InvalidArgumentError(f"the classifier lesson needs two classes or more and {data.name} has one; "
                                   "use --data moons, spiral or gaussians")


def run_lesson(lesson: str, context: LessonContext) -> LessonResult:
    """Train, measure and draw one of `LESSONS`."""
    check_choice("lesson", lesson, LESSONS)
    return {"classifier": classifier_lesson, "variance": variance_lesson}[lesson](context)


def classifier_lesson(context: LessonContext) -> LessonResult:
    """f_φ trained on the job's data; per t of FIELD_TIMESTEPS both fields towards FIELD_CLASS on the arrow grid
    and their mean cosine over q(x_t)'s points; then both guidances at every w of the job."""
    trained, schedule = context.trained, context.trained.schedule
    classifier = train_classifier(trained.data, schedule, context.train, context.seed,
                                  context.report("training the noisy classifier f_φ(y | x_t, t)"))
    starts = arrow_starts()
    fields, measured = [], {}
    with one_thread():
        for t in FIELD_TIMESTEPS:
            marginal = forward_marginal(schedule, context.x0, t)  # (N, 2) points of q(x_t)
            cosine = mean_cosine(*_both_fields(classifier, trained, marginal, t))
            measured[f"cos_t{t}"] = cosine
            fields.append(FieldPair(t, float(schedule.alphas_cumprod[t]), marginal,
                                    *_both_fields(classifier, trained, starts, t), cosine))
    labels = torch.arange(len(context.noise)) % trained.data.num_classes  # every class asked for equally often
    runs = []
    for weight in context.guidance:
        free = run_sampler(trained.model, schedule, context.sampler, context.steps, context.noise, labels=labels,
                           guidance=weight)
        guided = run_denoiser(classifier_guided_eps(trained.model, classifier, schedule, labels, weight), schedule,
                              context.sampler, context.steps, context.noise, labels=labels)
        runs.append(GuidedPair(weight, free, guided))
        measured[f"spread_cfg_w{weight:g}"] = class_spread(free.samples, labels)
        measured[f"spread_classifier_w{weight:g}"] = class_spread(guided.samples, labels)
    picture = classifier_figure(trained.data, schedule, FIELD_CLASS, fields, runs, context.x0)
    return LessonResult(picture, measured)


def _both_fields(classifier: LabModel, trained: TrainedLab, points: Tensor, t: int) -> tuple[Tensor, Tensor]:
    """At `points` (N, 2) and timestep t, towards FIELD_CLASS: the classifier's ∇ log f_φ(y | x_t) and CFG's
    implicit −(ε_c − ε_∅)/√(1 − ᾱ_t), (N, 2) each."""
    labels, timestep = torch.full((len(points),), FIELD_CLASS), torch.tensor(float(t))
    return (classifier_gradient(classifier, points, timestep, labels),
            implicit_gradient(trained.model, trained.schedule, points, timestep, labels))


def variance_lesson(context: LessonContext) -> LessonResult:
    """A variance model trained on the job's data; its Σ_θ over t (1000-step chain and CHART_STEPS respaced
    steps), then DDPM at VARIANCE_STEPS with fixed_small, fixed_large and the learned Σ_θ by each mapping, each
    measured by SW₁ on SW_POINTS samples against as many fresh data points."""
    trained, schedule = context.trained, context.trained.schedule
    model = train_variance_model(trained.data, schedule, context.train, context.seed,
                                 context.report("training the variance model (L_simple + λ L_vlb)"))
    reference, _ = trained.data.sample(SW_POINTS, torch.Generator().manual_seed(context.seed + 5))
    noise = initial_noise(SW_POINTS, context.seed + 6)
    runs: dict[int, dict[str, Tensor]] = {}
    distances: dict[int, dict[str, float]] = {}
    for steps in VARIANCE_STEPS:
        samples = {variance: run_denoiser(eps_head(model), schedule, "ddpm", steps, noise, seed=context.seed + 3,
                                          variance=variance).samples for variance in VARIANCES}
        for mapping in MAPPINGS:
            samples[f"learned_{mapping}"] = sample_learned_variance(model, schedule, steps, noise, context.seed + 3,
                                                                    mapping)
        runs[steps] = samples
        distances[steps] = {name: sliced_wasserstein(points, reference) for name, points in samples.items()}
    curves = variance_curves(model, schedule, context.x0)
    picture = variance_figure(trained.data, schedule, curves, runs, distances, reference, len(context.x0))
    return LessonResult(picture, {f"sw_{steps}_{name}": value for steps, values in distances.items()
                                  for name, value in values.items()})


@torch.no_grad()
def variance_curves(model: Callable[[Tensor, Tensor], Tensor], schedule: NoiseSchedule, x0: Tensor,
                    count: int = 40) -> VarianceCurves:
    """What the variance figure charts, each learned value the median over q(x_t)'s points of the data `x0`:
    Σ_θ and r per coordinate at `count` timesteps spread evenly in log t; on the CHART_STEPS respaced steps each
    mapping's Σ_θ at the QUANTILES over points and coordinates."""
    betas, beta_tildes = training_variances(schedule)
    total = schedule.num_train_timesteps
    timesteps = sorted({min(round(float(t)), total - 1) for t in torch.logspace(0, math.log10(total), count)})
    sigma, fraction = [], []
    with one_thread():
        for t in timesteps:
            _, v = split_output(model(forward_marginal(schedule, x0, t), torch.tensor(float(t))))  # (N, 2)
            sigma.append(torch.exp(interpolated_log_variance(v, betas[t], beta_tildes[t])).quantile(0.5, dim=0))
            fraction.append(learned_fraction(v, schedule, t).quantile(0.5, dim=0))
        chain = RespacedChain.create(schedule, CHART_STEPS)
        mapped = {mapping: [] for mapping in MAPPINGS}
        for index, t in enumerate(chain.timesteps):
            _, v = split_output(model(forward_marginal(schedule, x0, t), torch.tensor(float(t))))
            for mapping in MAPPINGS:
                mapped[mapping].append(chain.variance(v, schedule, index, mapping).quantile(QUANTILES))
    return VarianceCurves(timesteps=timesteps, betas=betas[timesteps], beta_tildes=beta_tildes[timesteps],
                          sigma=torch.stack(sigma), fraction=torch.stack(fraction), data_variance=x0.var(dim=0),
                          chain=chain, step_sigma={mapping: torch.stack(values) for mapping, values in mapped.items()})
