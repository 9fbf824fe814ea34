"""The flow model's pictures: its particles step by step (the GIF, under diffusion's frames), diffusion's and flow's
paths side by side, the flow run by diffx's DDIM, flow Euler over shifts × step counts, and reflow straightening.

Drawn on the lab's window (figures.VIEW) in the flow's units x_t = (1 − t) x_0 + t ε, where the marginal p_t is
the straight-line mix of the data and the noise; a diffusion path is shown in the same units (its VP state divided
by √ᾱ + √(1 − ᾱ), `flow_ddim.straight_line_path`), so "how straight" means the same for both. Grey points are the
cloud a panel should be compared with; coloured lines the paths of TRAILS particles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffx.lab.data import PointDistribution
from diffx.lab.figures import TRAILS, VIEW, arrow_starts, scaled_arrows, uniform_size, with_key
from diffx.lab.flow import flow_interpolate, velocity
from diffx.lab.metrics import path_straightness, sliced_wasserstein
from diffx.lab.model import LabModel, one_thread
from diffx.lab.sampling import LabRun
from diffx.render.grid import caption_bar, make_grid, stack_pictures
from diffx.render.points import class_colors, points_panel

TRAIL_COLORS = class_colors(np.arange(TRAILS))
PATHS_SHOWN = 30  # particles whose whole path a figure's path panel draws
START_COLOR = (90, 90, 90)  # where a drawn path starts (x_T); it ends in its own colour
STRAIGHTNESS = "length/chord"  # the cell labels' name for `metrics.path_straightness`
STRAIGHTNESS_NOTE = (f"{STRAIGHTNESS}: a particle's path length over the distance between its ends, mean over "
                     "particles (1 = straight)")


@dataclass
class FlowPanel:
    """One flow sampler's run as a GIF panel shows it: its name, its run, and the clouds (x_0, ε) (N, 2) each whose
    straight-line mix (1 − t) x_0 + t ε is its marginal p_t (the data and fresh noise; for reflow, its own pairs)."""

    name: str
    run: LabRun
    ends: tuple[Tensor, Tensor]

    def marginal(self, t: float) -> Tensor:
        return flow_interpolate(*self.ends, torch.tensor(t))  # (N, 2)


@torch.no_grad()
def velocity_field(model: LabModel, t: float) -> tuple[np.ndarray, np.ndarray, float]:
    """−v̂(x, t) on the arrow grid, the way a sampler moves a particle as t falls: (starts, arrows, |v̂| of a
    full-length arrow), scaled as the score field is (`figures.scaled_arrows`)."""
    starts = arrow_starts()
    with one_thread():
        return scaled_arrows(starts, -velocity(model, starts, t))


def _trail_panel(path: Tensor, ghost: Tensor, upto: int) -> Image.Image:
    """Particles at path[upto] over `ghost` (grey), with the first TRAILS paths drawn so far."""
    return points_panel(VIEW, path[upto], ghost=ghost, trails=(path[: upto + 1, :TRAILS], TRAIL_COLORS), radius=1.0)


def _paths_panel(path: Tensor, ghost: Tensor) -> Image.Image:
    """The whole paths of PATHS_SHOWN particles over `ghost` (grey): a dark dot where each starts (x_T), a dot of
    its own colour where it ends."""
    shown = path[:, :PATHS_SHOWN]  # (S + 1, K, 2)
    colors = class_colors(np.arange(shown.shape[1]))
    ends = torch.cat([shown[0], shown[-1]])  # (2K, 2)
    return points_panel(VIEW, ends, np.concatenate([np.tile(START_COLOR, (len(colors), 1)), colors]), ghost=ghost,
                        trails=(shown, colors), radius=1.5)


def _steps(count: int) -> str:
    return f"{count} step{'' if count == 1 else 's'}"


def flow_frames(model: LabModel, data: PointDistribution, panels: Sequence[FlowPanel], labels: Tensor, shift: float,
                columns: int = 5, on_frame: Callable[[int, int], None] | None = None) -> list[Image.Image]:
    """One frame per step: p_t of the data coloured by class (the first panel's ends, `labels` (N,)), the learned
    velocity field at t, and each flow sampler's particles over its p_t with trails."""
    steps = len(panels[0].run.path) - 1
    frames = []
    for i in range(steps + 1):
        t = panels[0].run.timesteps[i]
        when = "sample x_0" if i == steps else f"t={t:.2f}"
        starts, arrows, full = velocity_field(model, t)
        cells = [points_panel(VIEW, panels[0].marginal(t), class_colors(labels), radius=1.0),
                 points_panel(VIEW, ghost=panels[0].marginal(t), arrows=(starts, arrows))]
        cell_labels = [f"flow path (1−t)x_0 + tε\n{when}", f"velocity −v̂, arrow = {full:.3g}\nt={t:.2f}"]
        for panel in panels:
            run = panel.run
            cells.append(_trail_panel(run.path, panel.marginal(run.timesteps[i]), upto=i))
            where = "sample" if i == steps else f"t={run.timesteps[i]:.2f}"
            cell_labels.append(f"{panel.name} · ODE\n{where} · {run.nfe[i]} NFE")
        rows = [cells[k:k + columns] for k in range(0, len(cells), columns)]
        row_labels = [cell_labels[k:k + columns] for k in range(0, len(cell_labels), columns)]
        title = f"{data.name} · flow matching (v-model) · {steps} steps · shift {shift:g} · step {i}/{steps}"
        frames.append(with_key(make_grid(rows, cell_labels=row_labels, title=title, font_size=13),
                               data.class_names, class_colors(np.arange(data.num_classes)),
                               f"flow samplers: {len(labels)} particles from the same x_T (blue) over p_t at their t "
                               f"(grey); lines: the paths of {TRAILS} of them"))
        if on_frame is not None:
            on_frame(i + 1, steps + 1)
    return uniform_size(frames)


def stack_frames(top: Sequence[Image.Image], bottom: Sequence[Image.Image]) -> list[Image.Image]:
    """Each frame of `top` above the same frame of `bottom` (diffusion's rows over the flow's), on white."""
    return [stack_pictures([upper, lower], centred=False) for upper, lower in zip(top, bottom, strict=True)]


def flow_comparison(data: PointDistribution, x0: Tensor, paths: Sequence[tuple[str, Tensor]],
                    equivalence: tuple[Tensor, Tensor], shift_runs: dict[float, list[LabRun]]) -> Image.Image:
    """Rows: the paths of each model from one x_T in the flow's units, with their straightness and SW₁; the flow model
    by flow Euler and by diffx's DDIM on ε̂ = x_t + (1 − t) v̂ over the same grid, with their largest difference;
    and flow Euler over step counts, one row per shift, each cell with SW₁ to the data (grey)."""
    steps = len(paths[0][1]) - 1
    path_cells = [_paths_panel(path, x0) for _, path in paths]
    path_labels = [f"{name}\n{STRAIGHTNESS} {path_straightness(path):.2f}" for name, path in paths]
    euler, ddim = equivalence
    gap = float((euler.double() - ddim.double()).abs().max())
    equal_cells = [points_panel(VIEW, euler, ghost=x0, radius=1.0), points_panel(VIEW, ddim, (214, 39, 40),
                                                                                  ghost=x0, radius=1.0)]
    equal_labels = [f"flow Euler, {_steps(steps)}", f"DDIM on ε̂ = x_t + (1−t)v̂\nmax |Δ| to Euler {gap:.1e}"]
    rows, cell_labels = [path_cells, equal_cells], [path_labels, equal_labels]
    row_labels = [f"paths of {PATHS_SHOWN} particles, {_steps(steps)}", "one flow model, two samplers (float64)"]
    for shift, runs in shift_runs.items():
        rows.append([points_panel(VIEW, run.samples, ghost=x0, radius=1.0) for run in runs])
        cell_labels.append([f"{_steps(len(run.path) - 1)} · SW₁ {sliced_wasserstein(run.samples, x0):.3f}"
                            for run in runs])
        row_labels.append(f"flow Euler, shift {shift:g}")
    grid = make_grid(rows, row_labels=row_labels, cell_labels=cell_labels, font_size=13,
                     title=f"{data.name}: diffusion (ε) and flow matching (v), one MLP, one budget — paths in the "
                           "flow's units x/(√ᾱ+√(1−ᾱ)) = (1−t)x_0 + tε over the data (grey)")
    return caption_bar(grid, STRAIGHTNESS_NOTE, font_size=13)


def reflow_figure(data: PointDistribution, x0: Tensor, runs: dict[str, list[LabRun]]) -> Image.Image:
    """Rows: the flow, then the flow after one reflow; columns: its paths at the most steps, then its samples at each
    step count over the data (grey), labelled with SW₁ (the paths also with their straightness)."""
    rows, cell_labels = [], []
    for model_runs in runs.values():
        longest = max(model_runs, key=lambda run: len(run.path))
        rows.append([_paths_panel(longest.path, x0)] +
                    [points_panel(VIEW, run.samples, ghost=x0, radius=1.0) for run in model_runs])
        cell_labels.append([f"{PATHS_SHOWN} paths, {_steps(len(longest.path) - 1)}\n{STRAIGHTNESS} "
                            f"{path_straightness(longest.path):.2f}"] +
                           [f"{_steps(len(run.path) - 1)} · SW₁ {sliced_wasserstein(run.samples, x0):.3f}"
                            for run in model_runs])
    grid = make_grid(rows, row_labels=list(runs), cell_labels=cell_labels, font_size=13,
                     title=f"{data.name}: reflow (Liu et al. 2022) — the flow trained again on its own (x_T, sample) "
                           "pairs: the paths straighten and one Euler step samples the data")
    return caption_bar(grid, STRAIGHTNESS_NOTE, font_size=13)
