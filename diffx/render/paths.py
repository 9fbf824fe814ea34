"""Matplotlib figures of how samplers travel: error against model evaluations, and latent paths in 2-D.

Pure: arrays in (one `PathLine` per sampler), a PIL image (or the path picture's matplotlib Figure) out. The log-y
"error vs NFE" panels follow Karras et al. 2022 (fig. 2) and Lu et al. 2022 (DPM-Solver++, fig. 3); the path picture
draws 2-D coordinates (e.g. a PCA projection) with the shared start and every end labelled, labels of ends that
meet stacked in a column beside them (`stack_labels`), measured with the renderer's own font metrics.
"""

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox
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


LABEL_PAD_PT = 8  # from an end's marker to its label
LABEL_GAP_PT = 1.5  # between stacked labels
LABEL_PLACEMENTS = 4  # passes of measuring and placing the end labels (each wider x range moves the ends)


def stack_labels(anchors: np.ndarray, sizes: np.ndarray, pad: float, gap: float) -> np.ndarray:
    """Lower-left corners (n, 2) of label boxes of `sizes` (n, 2: width, height) put right of their `anchors` (n, 2),
    so that no two boxes meet (display units, y up).

    Each label starts beside its anchor, vertically centred, `pad` to its right. Labels whose boxes meet form a
    cluster, laid out as one column: left of it `pad` right of the cluster's rightmost anchor (so it clears every
    marker of the cluster), the labels in their anchors' top-to-bottom order, `gap` apart, the column centred on
    the anchors' mean height. Clusters merge until no boxes meet (at most n − 1 merges).
    """
    anchors, sizes = np.asarray(anchors, dtype=float), np.asarray(sizes, dtype=float)
    clusters = [[i] for i in range(len(anchors))]
    while True:
        corners = np.zeros_like(anchors)
        for members in clusters:
            order = sorted(members, key=lambda i: -anchors[i, 1])
            top = anchors[members, 1].mean() + (sizes[members, 1].sum() + gap * (len(members) - 1)) / 2
            for i in order:
                corners[i] = anchors[members, 0].max() + pad, top - sizes[i, 1]
                top -= sizes[i, 1] + gap
        meeting = next(((a, b) for a in range(len(clusters)) for b in range(a + 1, len(clusters))
                        if _boxes_meet(corners, sizes, clusters[a], clusters[b], gap)), None)
        if meeting is None:
            return corners
        a, b = meeting
        clusters[a] += clusters.pop(b)


def _boxes_meet(corners: np.ndarray, sizes: np.ndarray, first: list[int], second: list[int], gap: float) -> bool:
    """Whether a box of cluster `first` comes within `gap` of a box of cluster `second`."""
    return any(corners[i, 0] < corners[j, 0] + sizes[j, 0] + gap and corners[j, 0] < corners[i, 0] + sizes[i, 0] + gap
               and corners[i, 1] < corners[j, 1] + sizes[j, 1] + gap
               and corners[j, 1] < corners[i, 1] + sizes[i, 1] + gap for i in first for j in second)


def _place_end_labels(figure: Figure, ax: Axes, labels: Sequence[Annotation]) -> None:
    """Move the end labels (annotations in offset points from their ends) apart with `stack_labels`, measured with
    the Agg renderer's font metrics; a label moved away from its end gets a thin leader line to it. Where labels
    would cross the axes' right edge the x range grows to hold them, and they are placed again (the constrained
    layout and the new range move the ends); then the layout is frozen so they stay put."""
    canvas = FigureCanvasAgg(figure)
    to_px = figure.dpi / 72
    for attempt in range(LABEL_PLACEMENTS):
        canvas.draw()
        renderer = canvas.get_renderer()
        anchors = ax.transData.transform([label.xy for label in labels])  # (n, 2) px
        sizes = np.array([[box.width, box.height] for box in (_label_box(label, renderer) for label in labels)])
        corners = stack_labels(anchors, sizes, LABEL_PAD_PT * to_px, LABEL_GAP_PT * to_px)
        for label, anchor, corner, size in zip(labels, anchors, corners, sizes, strict=True):
            offset = np.array([corner[0], corner[1] + size[1] / 2]) - anchor  # px to the left-middle of the box
            label.xyann = tuple(offset / to_px)
            label.arrow_patch.set_visible(bool(abs(offset[1]) > 1 or offset[0] > LABEL_PAD_PT * to_px + 1))
        right = float((corners[:, 0] + sizes[:, 0]).max()) + LABEL_PAD_PT * to_px  # px the labels need
        if right <= ax.bbox.x1 or attempt == LABEL_PLACEMENTS - 1:
            break
        ax.set_xlim(right=float(ax.transData.inverted().transform((right, 0))[0]))
    figure.set_layout_engine("none")


def _label_box(label: Annotation, renderer: RendererAgg) -> Bbox:
    """The display box of an annotation's text alone (without its leader line), as `renderer` measures it."""
    label.update_positions(renderer)
    return Text.get_window_extent(label, renderer)


def paths_figure(lines: Sequence[PathLine], variance_share: Sequence[float], title: str = "") -> Figure:
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
    labels = []
    for line in lines:
        end = (line.x[-1], line.y[-1])
        ax.plot(*end, marker="s", markersize=7, color=line.colour, markeredgecolor="black")
        labels.append(ax.annotate(f"end: {line.label.split(' (')[0]}", end, xytext=(LABEL_PAD_PT, 0),
                                  textcoords="offset points", fontsize=8, color=line.colour, va="center",
                                  arrowprops={"arrowstyle": "-", "color": line.colour, "linewidth": 0.6,
                                              "shrinkA": 1, "shrinkB": 4, "relpos": (0, 0.5)}))
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
    _place_end_labels(figure, ax, labels)
    return figure


def plot_paths(lines: Sequence[PathLine], variance_share: Sequence[float], title: str = "") -> Image.Image:
    """`paths_figure` as a picture."""
    return figure_to_image(paths_figure(lines, variance_share, title))
