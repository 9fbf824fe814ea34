"""Small inline-SVG line charts for the HTML report: the noise schedule (ᾱ_t and log-SNR against t, every
visited step as a dot and a marker the page moves to the current step; for a rectified-flow model 1 − s, the
share of x₀ in x_s, in place of ᾱ) and a run's convergence (distances against model evaluations, log y).
Pure: arrays → SVG text."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

import numpy as np

from diffx.sampling.schedules import log_snr

CHART_WIDTH = 340


CHART_HEIGHT = 190


CHART_MARGIN = {"left": 42, "right": 10, "top": 22, "bottom": 30}


class Chart:
    """Data → SVG coordinates for one small line chart (x = timestep t, y = a schedule quantity)."""

    def __init__(self, x_max: float, y_min: float, y_max: float):
        self.x_max, self.y_min, self.y_max = x_max, y_min, y_max

    def x(self, t: float) -> float:
        inner = CHART_WIDTH - CHART_MARGIN["left"] - CHART_MARGIN["right"]
        return round(CHART_MARGIN["left"] + inner * t / self.x_max, 1)

    def y(self, value: float) -> float:
        inner = CHART_HEIGHT - CHART_MARGIN["top"] - CHART_MARGIN["bottom"]
        return round(CHART_MARGIN["top"] + inner * (self.y_max - value) / (self.y_max - self.y_min), 1)


def flow_signal_share(abar: np.ndarray) -> np.ndarray:
    """1 − s of the flow path's points x_s = (1 − s) x₀ + s ε from their VP ᾱ = (1 − s)²/((1 − s)² + s²)
    (`flow_alpha_cumprod`): (1 − s)/s = √(ᾱ/(1 − ᾱ)), so 1 − s = √ᾱ / (√ᾱ + √(1 − ᾱ)), finite at ᾱ = 0 and 1."""
    root = np.sqrt(abar)
    return root / (root + np.sqrt(1 - abar))


def schedule_charts(curves: dict[str, np.ndarray], visited: Sequence[tuple[np.ndarray, np.ndarray]],
                    colours: Sequence[str], flow: bool = False) -> tuple[str, list[dict[str, list[list[float]]]]]:
    """Two charts, ᾱ_t and log-SNR against t: the schedule curves (name → ᾱ over all training timesteps),
    every visited (timesteps, ᾱ) step of each column as dots in its colour, and a marker per column at its
    first step. Returns the SVG and, per column, the marker positions of every step by chart id.

    With `flow` (every curve is a rectified-flow path, as `flow_schedule` tabulates it), the first chart shows
    what a flow model's state is made of, 1 − s (x_s = (1 − s) x₀ + s ε), against t = 1000 s, and the log-SNR
    is named in s: λ = 2 log((1 − s)/s) (Esser et al. 2024, §3.1). A chart mixing flow and diffusion schedules
    keeps ᾱ, which both have."""
    x_max = max(len(abar) - 1 for abar in curves.values())
    markers: list[dict[str, list[list[float]]]] = [{} for _ in visited]
    snr_values = np.concatenate([log_snr(a) for a in curves.values()] + [log_snr(a) for _, a in visited])
    snr_chart = Chart(x_max, math.floor(snr_values.min()), math.ceil(snr_values.max()))
    if flow:
        x_label = "timestep t = 1000 s"
        charts = {
            "abar": ("1 − s — the share of x₀ in x_s", Chart(x_max, 0.0, 1.0), flow_signal_share, (0.0, 0.5, 1.0)),
            "lsnr": ("log-SNR λ = 2 log((1 − s) / s)", snr_chart, log_snr, None),
        }
    else:
        x_label = "timestep t"
        charts = {
            "abar": ("ᾱ_t — how much signal is left", Chart(x_max, 0.0, 1.0), lambda a: a, (0.0, 0.5, 1.0)),
            "lsnr": ("log-SNR λ_t = log(ᾱ_t / (1 − ᾱ_t))", snr_chart, log_snr, None),
        }
    svgs = []
    for chart_id, (title, chart, transform, y_ticks) in charts.items():
        if y_ticks is None:
            y_ticks = nice_ticks(chart.y_min, chart.y_max)
        parts = [f'<svg viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" aria-label="{html.escape(title)} '
                 f'against the timestep t, with the current step marked">',
                 f'<text class="title" x="{CHART_MARGIN["left"]}" y="14">{html.escape(title)}</text>']
        parts += axes_svg(chart, y_ticks, x_label)
        for line_index, abar in enumerate(curves.values()):
            stride = max(1, len(abar) // 250)
            points = " ".join(f"{chart.x(t)},{chart.y(v)}" for t, v in
                              zip(range(0, len(abar), stride), transform(abar[::stride]), strict=True))
            dash = ' stroke-dasharray="5 3"' if line_index else ""
            parts.append(f'<polyline points="{points}" fill="none" stroke="#8c94a3" stroke-width="1.6"{dash}/>')
        for c, ((timesteps, abar), colour) in enumerate(zip(visited, colours, strict=True)):
            values = transform(abar)
            coords = [[chart.x(t), chart.y(v)] for t, v in zip(timesteps, values, strict=True)]
            markers[c][chart_id] = coords
            parts += [f'<circle cx="{x}" cy="{y}" r="2.2" fill="{colour}" fill-opacity="0.45"/>' for x, y in coords]
            parts.append(f'<line data-marker-col="{c}" data-chart="{chart_id}" x1="{coords[0][0]}" '
                         f'x2="{coords[0][0]}" y1="{CHART_MARGIN["top"]}" '
                         f'y2="{CHART_HEIGHT - CHART_MARGIN["bottom"]}" stroke="{colour}" stroke-opacity="0.35" '
                         'stroke-dasharray="3 3"/>')
            parts.append(f'<circle data-marker-col="{c}" data-chart="{chart_id}" cx="{coords[0][0]}" '
                         f'cy="{coords[0][1]}" r="5.5" fill="#fff" stroke="{colour}" stroke-width="2.5"/>')
        parts.append("</svg>")
        svgs.append("".join(parts))
    legend = ""
    if len(curves) > 1:
        legend = ('<p class="legend">Curves: ' + ", ".join(
            f"{html.escape(name)} ({'dashed' if i else 'solid'})" for i, name in enumerate(curves)) + "</p>")
    return "\n".join(svgs) + legend, markers


def axes_svg(chart: Chart, y_ticks: Sequence[float], x_label: str = "timestep t",
             y_text: Callable[[float], str] = "{:g}".format) -> list[str]:
    """Axis lines, x ticks from 0 to `chart.x_max` and grid lines at `y_ticks`, labelled by `y_text`."""
    left, bottom = CHART_MARGIN["left"], CHART_HEIGHT - CHART_MARGIN["bottom"]
    right = CHART_WIDTH - CHART_MARGIN["right"]
    parts = [f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#c3c9d4"/>',
             f'<line x1="{left}" y1="{CHART_MARGIN["top"]}" x2="{left}" y2="{bottom}" stroke="#c3c9d4"/>']
    for tick in nice_ticks(0, chart.x_max, count=4):
        x = chart.x(tick)
        parts.append(f'<line x1="{x}" y1="{bottom}" x2="{x}" y2="{bottom + 4}" stroke="#c3c9d4"/>'
                     f'<text x="{x}" y="{bottom + 15}" text-anchor="middle">{tick:g}</text>')
    parts.append(f'<text x="{right}" y="{CHART_HEIGHT - 2}" text-anchor="end">{html.escape(x_label)}</text>')
    for tick in y_ticks:
        y = chart.y(tick)
        parts.append(f'<line x1="{left}" y1="{y}" x2="{right}" y2="{y}" stroke="#eceff4"/>'
                     f'<text x="{left - 5}" y="{y + 4}" text-anchor="end">{y_text(tick)}</text>')
    return parts


def convergence_svg(curves: dict[str, tuple[np.ndarray, np.ndarray]],
                    colours: Sequence[str] = ("#1f77b4", "#d62728")) -> str:
    """A small log-y chart of distances against model evaluations (NFE), one polyline per curve (name →
    (NFE, distance) arrays), named at the top right. Values at or below 0 cannot sit on a log axis: left out."""
    logs = {name: (np.asarray(x, dtype=float), np.log10(np.where(np.asarray(y, dtype=float) > 0, y, np.nan)))
            for name, (x, y) in curves.items()}
    finite = np.concatenate([y[np.isfinite(y)] for _, y in logs.values()] + [np.zeros(0)])
    low, high = (math.floor(finite.min()), math.ceil(finite.max())) if finite.size else (-1, 0)
    high = max(high, low + 1)
    chart = Chart(max(max(x.max(initial=1) for x, _ in logs.values()), 1), low, high)
    decades = list(range(high, low - 1, -max(1, (high - low + 3) // 4)))  # at most ~4 decades, the top one always
    title = "distances by model evaluation (RMS, log scale)"
    parts = [f'<svg viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" style="width: 100%; height: auto; display: block" '
             f'role="img" aria-label="{title}">',
             f'<text class="title" x="{CHART_MARGIN["left"]}" y="14">{title}</text>']
    parts += axes_svg(chart, decades, "model evaluations (NFE)", lambda d: f"1e{d:g}")
    for index, ((name, (nfe, values)), colour) in enumerate(zip(logs.items(), colours, strict=False)):
        points = " ".join(f"{chart.x(x)},{chart.y(v)}" for x, v in zip(nfe, values, strict=True) if np.isfinite(v))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        x = CHART_WIDTH - CHART_MARGIN["right"] - 4
        parts.append(f'<text x="{x}" y="{CHART_MARGIN["top"] + 12 + 13 * index}" text-anchor="end" '
                     f'style="fill: {colour}">{html.escape(name)}</text>')  # a page's `svg text` CSS beats fill=
    parts.append("</svg>")
    return "".join(parts)


def nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """About `count` round tick values (steps of 1, 2, 2.5 or 5 × 10^k) between `low` and `high`."""
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step + 1e-9) + 1)]
