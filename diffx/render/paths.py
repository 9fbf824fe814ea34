"""Matplotlib figures of how samplers travel: error against model evaluations, and latent paths in 2-D.

Pure: arrays in (one `PathLine` per sampler), a PIL image out. The log-y "error vs NFE" panels follow
Karras et al. 2022 (fig. 2) and Lu et al. 2022 (DPM-Solver++, fig. 3); the path picture draws 2-D
coordinates (e.g. a PCA projection) with the shared start and every end labelled.
"""

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from diffx.errors import InvalidArgumentError
from diffx.render.plots import figure_to_image

NFE_LABEL = "model evaluations (NFE)"
DISTANCE_LABEL = r"RMS distance $\|\cdot\|_2/\sqrt{n}$ (latent units)"


@dataclass
class PathLine:
    """One sampler's curve: `x`, `y` (N,) each; drawn dashed when the sampler adds noise, as a wide grey
    band underneath when it is the reference; `image` (H, W, 3) uint8 is its result, shown under a path."""

    label: str
    x: np.ndarray
    y: np.ndarray
    colour: str
    dashed: bool = False
    reference: bool = False
    image: np.ndarray | None = None


def _draw_log_panel(ax, lines: Sequence[PathLine], title: str, markers: bool = False) -> None:
    """One log-y panel; points at or below 0 (a distance that reached exactly 0) cannot be drawn and are left out."""
    for line in lines:
        x, y = np.asarray(line.x, dtype=float), np.asarray(line.y, dtype=float)
        keep = y > 0
        ax.plot(x[keep], y[keep], color=line.colour, linestyle="--" if line.dashed else "-", linewidth=1.6,
                marker="o" if markers else None, markersize=4, label=line.label)
    ax.set_yscale("log")
    ax.set(title=title, xlabel=NFE_LABEL)
    ax.grid(alpha=0.3, which="both")


def plot_convergence(reference_error: Sequence[PathLine] | None, x0_change: Sequence[PathLine],
                     step_size: Sequence[PathLine], endpoints: Sequence[PathLine] | None = None,
                     title: str = "") -> Image.Image:
    """Panels of RMS distances (log y) against model evaluations, one line per sampler in each:
    the running estimate's distance to the reference ‖x̂0_k − x_ref‖ (when given), its distance to the run's
    last estimate ‖x̂0_k − x̂0_final‖, the step length ‖x_{i+1} − x_i‖, and (when given) the error of each
    run's result ‖x_final − x_ref‖ against that run's NFE, one point per step count."""
    if not x0_change:
        raise InvalidArgumentError("no runs to chart; give at least one sampler")
    panels = [(reference_error, r"distance to the reference $\|\hat{x}_0 - x_\mathrm{ref}\|$", False),
              (x0_change, r"how far $\hat{x}_0$ still moves: $\|\hat{x}_0 - \hat{x}_{0,\mathrm{final}}\|$", False),
              (step_size, r"step length $\|x_{i+1} - x_i\|$ (grid states)", False),
              (endpoints, r"error of the result $\|x_\mathrm{final} - x_\mathrm{ref}\|$ per run", True)]
    panels = [panel for panel in panels if panel[0]]
    figure = Figure(figsize=(4.6 * len(panels), 4.4), dpi=100, layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (lines, panel_title, markers) in zip(axes, panels, strict=True):
        _draw_log_panel(ax, lines, panel_title, markers)
    axes[0].set_ylabel(DISTANCE_LABEL)
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(6, len(x0_change)),
                  title="dashed: adds fresh noise at every step" if any(line.dashed for line in x0_change) else None)
    if title:
        figure.suptitle("\n".join(textwrap.wrap(title, int(12 * figure.get_figwidth()))), fontsize=10)
    return figure_to_image(figure)


def _end_label_offsets(ends: np.ndarray, span: float) -> list[int]:
    """Vertical text offsets (points) so that labels of ends closer than 4% of the plot apart stack, not overlap."""
    offsets: list[int] = []
    for i, end in enumerate(ends):
        near = [offsets[j] for j in range(i) if np.linalg.norm(ends[j] - end) < 0.04 * span]
        offsets.append(min(set(range(0, -13 * (len(near) + 1), -13)) - set(near)))
    return offsets


def plot_paths(lines: Sequence[PathLine], variance_share: Sequence[float], title: str = "") -> Image.Image:
    """2-D paths (x, y per point, first point the shared start), each point a dot, every end labelled with its
    line's name; `variance_share` is the fraction of variance along each axis (PCA), written on the axes.
    Lines with an `image` get it shown, labelled, in a row under the plot."""
    if not lines:
        raise InvalidArgumentError("no paths to draw; give at least one sampler")
    with_images = [line for line in lines if line.image is not None]
    figure = Figure(figsize=(9, 8.6 if with_images else 7), dpi=100, layout="constrained")
    grid = figure.add_gridspec(2 if with_images else 1, max(1, len(with_images)),
                               height_ratios=[4.2, 1] if with_images else None)
    ax = figure.add_subplot(grid[0, :])
    for line in lines:
        if line.reference:
            ax.plot(line.x, line.y, color=line.colour, linewidth=7, alpha=0.3, solid_capstyle="round",
                    label=line.label)
        else:
            ax.plot(line.x, line.y, color=line.colour, linestyle="--" if line.dashed else "-", linewidth=1.4,
                    marker="o", markersize=2.5, label=line.label)
    ends = np.array([[line.x[-1], line.y[-1]] for line in lines])
    everything = np.concatenate([np.column_stack([line.x, line.y]) for line in lines])
    span = float(np.ptp(everything, axis=0).max()) or 1.0
    for line, end, offset in zip(lines, ends, _end_label_offsets(ends, span), strict=True):
        ax.plot(*end, marker="s", markersize=7, color=line.colour, markeredgecolor="black")
        ax.annotate(f"end: {line.label.split(' (')[0]}", end, xytext=(8, offset), textcoords="offset points",
                    fontsize=8, color=line.colour, va="center")
    start = np.array([lines[0].x[0], lines[0].y[0]])
    ax.plot(*start, marker="*", markersize=16, color="black")
    ax.annotate("start: x_T (the same noise for every sampler)", start, xytext=(10, -4), textcoords="offset points",
                fontsize=9, va="top")
    ax.set(xlabel=f"principal component 1 ({variance_share[0]:.0%} of the variance)",
           ylabel=f"principal component 2 ({variance_share[1]:.0%} of the variance)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", title="dots: the state x_t at each grid timestep; squares: final latents",
              title_fontsize=8)
    for column, line in enumerate(with_images):
        thumb = figure.add_subplot(grid[1, column])
        thumb.imshow(line.image, interpolation="bilinear")
        thumb.set_title(line.label.split(" (")[0], fontsize=9, color=line.colour)
        thumb.set_axis_off()
    if with_images:
        thumb.text(1.05, 0.5, "results\n(VAE decode)", transform=thumb.transAxes, fontsize=8, va="center")
    if title:
        figure.suptitle("\n".join(textwrap.wrap(title, int(12 * figure.get_figwidth()))), fontsize=10)
    return figure_to_image(figure)
