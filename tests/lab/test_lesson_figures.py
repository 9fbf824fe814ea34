"""lab/lesson_figures.py: the lessons' pictures hold one 200-px panel per t, w, step count and variance, on white,
from made-up fields and samples (no training)."""

import numpy as np
import torch

from diffx.lab.data import get_distribution
from diffx.lab.figures import arrow_starts
from diffx.lab.lesson_figures import (
    VARIANCE_LABELS,
    FieldPair,
    GuidedPair,
    VarianceCurves,
    classifier_figure,
    variance_chart,
    variance_figure,
)
from diffx.lab.sampling import LabRun
from diffx.lab.variance import RespacedChain
from diffx.sampling.schedules import NoiseSchedule

SCHEDULE = NoiseSchedule.create("linear")
MOONS = get_distribution("moons")


def _run(points: torch.Tensor, labels: torch.Tensor) -> LabRun:
    return LabRun(sampler="ddim", path=torch.stack([torch.randn_like(points), points]), timesteps=[961.0, 0.0],
                  nfe=[0, 1], labels=labels)


def _curves() -> VarianceCurves:
    chain = RespacedChain.create(SCHEDULE, 10)
    timesteps = [1, 10, 100, 999]
    band = torch.stack([chain.beta_tildes, (chain.betas * chain.beta_tildes).sqrt(), chain.betas], dim=1)
    betas = SCHEDULE.betas[timesteps]
    return VarianceCurves(timesteps=timesteps, betas=betas, beta_tildes=betas / 2,
                          sigma=SCHEDULE.betas[timesteps, None].expand(-1, 2) * 0.8, fraction=torch.full((4, 2), 0.6),
                          data_variance=torch.tensor([1.5, 0.6]), chain=chain, step_sigma={"log": band, "linear": band})


def test_the_classifier_figure_has_a_column_per_t_and_per_w():
    points, labels = MOONS.sample(300, torch.Generator().manual_seed(0))
    grid = arrow_starts()
    fields = [FieldPair(t, float(SCHEDULE.alphas_cumprod[t]), points, -grid, grid.flip(1), 0.5) for t in (10, 500, 900)]
    runs = [GuidedPair(weight, _run(points, labels), _run(points * 0.9, labels)) for weight in (0.0, 1.0, 3.0, 9.0)]
    picture = classifier_figure(MOONS, SCHEDULE, 0, fields, runs, points)
    assert picture.width >= 4 * 200 and picture.height >= 4 * 200  # two rows of fields, two of samples
    pixels = np.asarray(picture)
    assert (pixels == 255).all(axis=2).mean() > 0.4  # white paper, not a dark plot
    assert ((pixels[..., 0] > 150) & (pixels[..., 1] < 100)).any()  # the red arrows are drawn


def test_the_variance_figure_has_a_row_per_step_count_and_a_column_per_variance():
    points, _ = MOONS.sample(400, torch.Generator().manual_seed(0))
    runs = {steps: {name: points + 0.1 * k for k, name in enumerate(VARIANCE_LABELS)} for steps in (5, 10)}
    distances = {steps: {name: 0.1 + k / 100 for k, name in enumerate(VARIANCE_LABELS)} for steps in (5, 10)}
    picture = variance_figure(MOONS, SCHEDULE, _curves(), runs, distances, points, particles=200)
    assert picture.width >= len(VARIANCE_LABELS) * 200 and picture.height >= 2 * 200 + 300  # the chart on top
    chart = variance_chart(_curves(), "a title")
    assert chart.width > 1000 and chart.height > 300
