"""Labelled horizontal bar charts, one panel per set of bars (e.g. a LoRA's update strength per U-Net block, and per
text-encoder layer), first bar at the top. Pure: labels and numbers in, a matplotlib Figure or a PIL image out."""

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from diffx.errors import InvalidArgumentError
from diffx.render.plots import figure_to_image

BAR_INCHES = 0.24  # height per bar: the figure grows with the bars, so 70 labels stay readable


@dataclass(frozen=True)
class BarPanel:
    """One panel: a bar per label (top to bottom), its value, and the group it is coloured and listed in the
    legend by (e.g. "input blocks (down)")."""

    title: str
    labels: Sequence[str]
    values: Sequence[float]
    groups: Sequence[str]


def bars_figure(panels: Sequence[BarPanel], title: str, x_label: str) -> Figure:
    """The panels stacked, each as tall as its bars, with `x_label` under each and one legend of the groups per
    panel; each bar's value written at its end. A colour per group, the same across panels."""
    panels = [panel for panel in panels if len(panel.labels)]
    if not panels:
        raise InvalidArgumentError("nothing to draw: no bars")
    for panel in panels:
        if not len(panel.labels) == len(panel.values) == len(panel.groups):
            raise InvalidArgumentError(f"panel {panel.title!r}: {len(panel.labels)} labels, {len(panel.values)} "
                                       f"values and {len(panel.groups)} groups; give one of each per bar")
        if not np.isfinite(np.asarray(panel.values, dtype=float)).all():
            raise InvalidArgumentError(f"panel {panel.title!r} holds a value that is not finite")
    names = list(dict.fromkeys(group for panel in panels for group in panel.groups))
    colours = dict(zip(names, matplotlib.colormaps["tab10"](np.arange(len(names)) % 10), strict=True))
    heights = [len(panel.labels) + 2.5 for panel in panels]  # bars plus room for the title, axis and legend
    figure = Figure(figsize=(9, 1.2 + BAR_INCHES * sum(heights)), dpi=100, layout="constrained")
    axes = figure.subplots(len(panels), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)[:, 0]
    largest = max(max(panel.values) for panel in panels) or 1.0
    for ax, panel in zip(axes, panels, strict=True):
        rows = np.arange(len(panel.labels))
        ax.barh(rows, panel.values, color=[colours[group] for group in panel.groups], height=0.75)
        for row, value in zip(rows, panel.values, strict=True):
            ax.text(value + 0.01 * largest, row, f"{value:.3g}", va="center", fontsize=7)
        ax.set_yticks(rows, list(panel.labels), fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)  # the first bar at the top: the order the blocks run in
        ax.set_xlim(0, largest * 1.12)
        ax.set(xlabel=x_label, title=panel.title)
        ax.grid(axis="x", alpha=0.3)
        shown = list(dict.fromkeys(panel.groups))
        ax.legend(handles=[Patch(color=colours[group], label=group) for group in shown], fontsize=8,
                  loc="best")
    figure.suptitle("\n".join(textwrap.wrap(title, 95)), fontsize=11)
    return figure


def plot_bars(panels: Sequence[BarPanel], title: str, x_label: str) -> Image.Image:
    """`bars_figure` as a picture."""
    return figure_to_image(bars_figure(panels, title, x_label))
