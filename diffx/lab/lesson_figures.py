"""The lessons' pictures (`lab.lessons`), on the lab's window of the plane (`figures.VIEW`) and in its colours.

- `classifier_figure`: per t, the noisy classifier's ∇ log f_φ(y | x_t) beside CFG's implicit −(ε_c − ε_∅)/√(1 − ᾱ_t)
  on one arrow scale, with their cosine similarity; then samples under both guidances over w.
- `variance_figure`: a chart of the learned Σ_θ against β_t and β̃_t (over t, as the fraction r, and on a respaced
  chain), then DDPM samples per step count and variance, each with its SW₁ to the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from diffx.lab.data import PointDistribution
from diffx.lab.figures import VIEW, arrow_starts, scaled_arrows
from diffx.lab.metrics import class_spread
from diffx.lab.sampling import LabRun
from diffx.lab.variance import RespacedChain
from diffx.render.grid import caption_bar, make_grid, stack_pictures
from diffx.render.plots import figure_to_image
from diffx.render.points import class_colors, color_key, points_panel
from diffx.sampling.schedules import NoiseSchedule

# What each DDPM variance is, as the variance figure's column labels say it.
VARIANCE_LABELS = {
    "fixed_small": "fixed_small: Σ = β̃",
    "fixed_large": "fixed_large: Σ = β",
    "learned_log": "learned, log: exp(v log β + (1−v) log β̃)",
    "learned_linear": "learned, linear: β̃ + r (β − β̃)",
}


@dataclass
class FieldPair:
    """The two guidance gradients at one t: `classifier` and `implicit` (G², 2) at `figures.arrow_starts`, the
    points of q(x_t) (N, 2) they are compared over, and their mean cosine similarity there."""

    t: int
    alpha_cumprod: float
    marginal: Tensor
    classifier: Tensor
    implicit: Tensor
    cosine: float


@dataclass
class GuidedPair:
    """The same x_T guided with weight w by classifier-free guidance (`free`) and by the classifier (`guided`)."""

    weight: float
    free: LabRun
    guided: LabRun


@dataclass
class VarianceCurves:
    """The variance chart's lines (`lessons.variance_curves`): over `timesteps` (K,) β_t, β̃_t (K,), the learned
    Σ_θ and r (K, 2) per coordinate, the data's variance (2,); over a respaced `chain`'s S steps each mapping's Σ_θ
    at three quantiles (S, 3)."""

    timesteps: list[int]
    betas: Tensor
    beta_tildes: Tensor
    sigma: Tensor
    fraction: Tensor
    data_variance: Tensor
    chain: RespacedChain
    step_sigma: dict[str, Tensor]


def _keyed(picture: Image.Image, data: PointDistribution, note: str) -> Image.Image:
    """The picture, the classes' colour key under it, then a note line."""
    key = color_key(data.class_names, class_colors(np.arange(data.num_classes)), picture.width)
    return caption_bar(stack_pictures([picture, key]), note, font_size=13)


def classifier_figure(data: PointDistribution, schedule: NoiseSchedule, target: int, fields: Sequence[FieldPair],
                      runs: Sequence[GuidedPair], x0: Tensor) -> Image.Image:
    """Top: per t, ∇ log f_φ(y | x_t) (row 1) and −(ε_c − ε_∅)/√(1 − ᾱ_t) (row 2) towards class `target`, over q(x_t)
    (grey), arrows on one scale per column (its 90th-percentile length = a full arrow, longer ones clipped).
    Bottom: samples under classifier-free (row 1) and classifier (row 2) guidance per w, coloured by the class
    asked for, over the data (grey), each with its class spread."""
    starts = arrow_starts()
    rows: list[list[Image.Image]] = [[], []]
    col_labels = []
    for pair in fields:
        full = float(torch.cat([pair.classifier, pair.implicit]).norm(dim=1).quantile(0.9))
        for row, vectors in zip(rows, (pair.classifier, pair.implicit), strict=True):
            row.append(points_panel(VIEW, ghost=pair.marginal, arrows=scaled_arrows(starts, vectors, full)[:2]))
        col_labels.append(f"t={pair.t} · ᾱ={pair.alpha_cumprod:.3f} · cos {pair.cosine:.2f}\n"
                          f"full arrow: |∇| ≥ {full:.3g}")
    class_name = data.class_names[target]
    field_grid = make_grid(rows, row_labels=["the noisy classifier's\n∇ log f_φ(y | x_t)",
                                             "CFG's implicit classifier\n−(ε_c − ε_∅)/√(1−ᾱ)"],
                           col_labels=col_labels, font_size=13,
                           title=f"{data.name}: ∇ log p(y = {class_name} | x_t) two ways, one arrow scale per t; "
                                 "cos = their mean cosine similarity over q(x_t)'s points (grey)")
    samples = [[points_panel(VIEW, run.samples, class_colors(run.labels), ghost=x0, radius=1.0) for run in runs_]
               for runs_ in ([pair.free for pair in runs], [pair.guided for pair in runs])]
    spreads = [[f"class spread {class_spread(run.samples, run.labels):.3f}" for run in row] for row in
               ([pair.free for pair in runs], [pair.guided for pair in runs])]
    first = runs[0].free
    # Each row label's first line is its widest, so the formula under it is never broken.
    sample_grid = make_grid(samples, row_labels=["classifier-free guidance (CFG)\nε_∅ + w (ε_c − ε_∅)",
                                                 "classifier guidance, by f_φ\nε_∅ − √(1−ᾱ) w ∇ log f_φ"],
                            col_labels=[f"w = {pair.weight:g}" for pair in runs], cell_labels=spreads, font_size=13,
                            title=f"the same x_T guided both ways ({first.sampler}, {len(first.path) - 1} steps), "
                                  "coloured by the class asked for, over the data (grey)")
    return _keyed(stack_pictures([field_grid, sample_grid]), data,
                  "class spread: RMS distance of a class's samples to their mean; w = 0 is the unconditional "
                  "model, w = 1 the conditional one")


def variance_figure(data: PointDistribution, schedule: NoiseSchedule, curves: VarianceCurves,
                    runs: dict[int, dict[str, Tensor]], distances: dict[int, dict[str, float]], reference: Tensor,
                    particles: int) -> Image.Image:
    """The variance chart over a grid: rows DDPM step counts, columns the variances of VARIANCE_LABELS; each cell the
    first `particles` samples over as many data points (grey), labelled with its SW₁ to `reference` (`distances`,
    over all the samples; lower is closer, the row's best marked)."""
    rows, cell_labels = [], []
    for steps, samples in runs.items():
        best = min(distances[steps], key=distances[steps].get)
        rows.append([points_panel(VIEW, points[:particles], ghost=reference[:particles], radius=1.0)
                     for points in samples.values()])
        cell_labels.append([f"SW₁ {value:.3f}{' · best' if name == best else ''}"
                            for name, value in distances[steps].items()])
    names = list(next(iter(runs.values())))
    grid = make_grid(rows, row_labels=[f"{steps} DDPM steps" for steps in runs], font_size=13,
                     col_labels=[VARIANCE_LABELS[name] for name in names], cell_labels=cell_labels,
                     title=f"DDPM samples (blue) over the data (grey) at few steps: fixed against learned Σ_θ; SW₁ to "
                           f"the data on {len(reference)} samples")
    chart = variance_chart(curves, f"{data.name} · {schedule.beta_schedule} β: the learned reverse variance "
                                   "Σ_θ = exp(v log β_t + (1 − v) log β̃_t), trained with L_simple + λ L_vlb")
    return caption_bar(stack_pictures([chart, grid]), "medians over the points of q(x_t); r = (Σ_θ − β̃)/(β − β̃) is "
                                                      "where Σ_θ sits: 0 at β̃ (fixed_small), 1 at β (fixed_large)",
                       font_size=13)


def variance_chart(curves: VarianceCurves, title: str) -> Image.Image:
    """Three panels: Σ_θ per coordinate against β_t and β̃_t over t; the fraction r over t with the data's variance
    per coordinate (where the exact r = Var(x_0 | x_t)/(1 − ᾱ_t) tends as t → T); each mapping's Σ_θ on the respaced
    steps against their β and β̃, as Σ/β."""
    figure = Figure(figsize=(12.5, 3.9), dpi=100, layout="constrained")
    over_t, fraction, respaced = figure.subplots(1, 3)
    t = np.asarray(curves.timesteps)
    over_t.plot(t, curves.betas, color="tab:red", linewidth=1.6, label="β_t (fixed_large)")
    over_t.plot(t, curves.beta_tildes, color="tab:blue", linewidth=1.6, label="β̃_t (fixed_small)")
    for axis, colour in ((0, "0.15"), (1, "0.55")):
        over_t.plot(t, curves.sigma[:, axis], "--", color=colour, linewidth=1.4, label=f"Σ_θ, {'xy'[axis]}")
        fraction.plot(t, curves.fraction[:, axis], color=colour, linewidth=1.6, label=f"r, {'xy'[axis]}")
        fraction.axhline(float(curves.data_variance[axis]), color=colour, linestyle=":", linewidth=1.2,
                         label=f"Var(x_0), {'xy'[axis]}")
    over_t.set(xscale="log", yscale="log", xlabel="timestep t (log)", ylabel="variance",
               title="1000-step chain: Σ_θ, β_t, β̃_t")
    fraction.axhline(1.0, color="tab:red", linewidth=1.2, label="β (r = 1)")
    fraction.axhline(0.0, color="tab:blue", linewidth=1.2, label="β̃ (r = 0)")
    fraction.set(xscale="log", xlabel="timestep t (log)", ylabel="r = (Σ_θ − β̃)/(β − β̃)",
                 title="r; the exact r → Var(x_0) as t → T")
    # The respaced steps as Σ/β: 1 is fixed_large, β̃/β fixed_small (0 at the last step, which lands on x_0: off
    # the log axis). Each mapping's median over the points, and the band from its 10th to its 90th percentile.
    chain = curves.chain
    step_t = np.asarray(chain.timesteps)
    respaced.axhline(1.0, color="tab:red", linewidth=1.2, label="β (fixed_large)")
    respaced.plot(step_t[:-1], (chain.beta_tildes / chain.betas)[:-1], "o-", color="tab:blue", markersize=3,
                  label="β̃ (fixed_small)")
    for (mapping, values), colour in zip(curves.step_sigma.items(), ("0.15", "tab:green"), strict=True):
        ratio = values / chain.betas[:, None]  # (S, 3)
        respaced.plot(step_t, ratio[:, 1], "s--", color=colour, markersize=3, label=f"Σ_θ, {mapping} (10–90%)")
        respaced.fill_between(step_t, ratio[:, 0], ratio[:, 2], color=colour, alpha=0.15, linewidth=0)
    respaced.set(yscale="log", xlabel="the step's timestep t (sampling runs right to left)",
                 ylabel="Σ / β of the step", title=f"{len(step_t)} respaced DDPM steps: Σ / β")
    for ax in (over_t, fraction, respaced):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    figure.suptitle(title)
    return figure_to_image(figure)
