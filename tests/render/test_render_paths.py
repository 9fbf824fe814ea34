"""The pictures of how samplers travel (render/paths.py) and the report's small convergence chart (render/charts.py)."""

import numpy as np
import pytest

from diffx.errors import InvalidArgumentError
from diffx.render.charts import convergence_svg
from diffx.render.paths import PathLine, _end_label_offsets, plot_convergence, plot_paths

RED, BLUE = "#d62728", "#1f77b4"


def _lines(count: int = 10) -> list[PathLine]:
    nfe = np.arange(1, count + 1)
    return [PathLine("heun", nfe, 2.0 ** -nfe, RED), PathLine("euler_a", nfe, 1 / nfe, BLUE, dashed=True)]


def _has_colour(image, colour: str) -> bool:
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return bool((np.abs(np.asarray(image).astype(int) - rgb).sum(-1) == 0).any())


def test_convergence_panels_one_per_measure_given():
    three = plot_convergence(_lines(), _lines(), _lines())
    four = plot_convergence(_lines(), _lines(), _lines(), endpoints=_lines(4))
    two = plot_convergence(None, _lines(), _lines())
    assert two.width < three.width < four.width and two.height == three.height
    assert _has_colour(three, RED) and _has_colour(three, BLUE)


def test_distances_of_exactly_zero_are_left_off_the_log_axis():
    lines = [PathLine("dpmpp_2m", np.arange(1, 6), np.array([1.0, 0.1, 0.01, 0.001, 0.0]), RED)]
    assert _has_colour(plot_convergence(None, lines, lines), RED)
    with pytest.raises(InvalidArgumentError, match="no runs"):
        plot_convergence(None, [], [])


def test_paths_picture_shows_every_path_and_the_results_under_it():
    green = np.zeros((8, 8, 3), np.uint8)
    green[..., 1] = 255
    lines = [PathLine("reference", np.linspace(0, 1, 20), np.linspace(0, 1, 20), "#7f7f7f", reference=True),
             PathLine("ddim (3 steps, 3 NFE)", np.array([0, 0.5, 1.0]), np.array([0, 0.45, 1.0]), RED, image=green),
             PathLine("euler_a (3 steps, 3 NFE)", np.array([0, 0.6, 0.2]), np.array([0, -0.3, -0.8]), BLUE,
                      dashed=True, image=green)]
    with_results = plot_paths(lines, [0.8, 0.15])
    without = plot_paths([lines[0]], [0.8, 0.15])
    assert with_results.height > without.height
    assert _has_colour(with_results, RED) and _has_colour(with_results, BLUE) and _has_colour(with_results, "#00ff00")
    with pytest.raises(InvalidArgumentError, match="no paths"):
        plot_paths([], [0.5, 0.5])


def test_labels_of_ends_that_meet_are_stacked():
    ends = np.array([[1.0, 1.0], [1.0, 1.001], [0.0, 0.0], [1.0, 0.999]])
    assert _end_label_offsets(ends, span=1.0) == [0, -13, 0, -26]


def test_convergence_svg_is_a_log_chart_by_model_evaluations():
    nfe = np.arange(1, 11)
    svg = convergence_svg({"x̂0": (nfe, 10.0 ** -nfe.astype(float)), "step": (nfe, np.ones(10))})
    assert svg.startswith("<svg") and svg.endswith("</svg>") and svg.count("<polyline") == 2
    assert "1e0" in svg and "1e-9" in svg and "model evaluations (NFE)" in svg
    assert "timestep t" not in svg
