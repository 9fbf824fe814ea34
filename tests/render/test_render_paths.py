"""The pictures of how samplers travel (render/paths.py) and the report's small convergence chart (render/charts.py)."""

import itertools

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from diffx.errors import InvalidArgumentError
from diffx.render.charts import convergence_svg
from diffx.render.paths import PathLine, paths_figure, plot_convergence, plot_paths, stack_labels

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


def _end_label_boxes(figure) -> dict[str, Bbox]:
    """Each end label's text box in display pixels, measured by the Agg renderer that draws the picture."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = figure.axes[0]
    return {label.get_text(): Text.get_window_extent(label, renderer) for label in ax.texts
            if label.get_text().startswith("end: ")}


def test_end_labels_never_overlap_when_the_ends_nearly_meet():
    """The ends of docs/images/paths.png (PCA coordinates), where "end: heun" sat on "end: reference": the old
    stacking by distance (4% of the span) missed ends 0.057 apart whose labels meet. Every label stays readable,
    each beside or in a column right of its end."""
    t = np.linspace(0, 1, 12)
    ends = {"reference: dpmpp_2m (200 steps, 200 NFE)": (0.8257, 0.0325), "ddim (25 steps, 25 NFE)": (0.8076, 0.0392),
            "euler (25 steps, 25 NFE)": (0.8285, 0.0259), "heun (25 steps, 49 NFE)": (0.7706, 0.0468),
            "dpmpp_2m (25 steps, 25 NFE)": (0.8295, 0.0287), "euler_a (25 steps, 25 NFE)": (0.5479, -0.6793)}
    lines = [PathLine(name, -0.5 + (x + 0.5) * t, -0.1 + (y + 0.1) * t, colour, reference=name.startswith("ref"))
             for (name, (x, y)), colour in zip(ends.items(), ("#7f7f7f", BLUE, "#ff7f0e", RED, "#9467bd", "#2ca02c"),
                                              strict=True)]
    figure = paths_figure(lines, [0.58, 0.25])
    boxes = _end_label_boxes(figure)
    assert len(boxes) == len(lines)
    for (a, box_a), (b, box_b) in itertools.combinations(boxes.items(), 2):
        assert not box_a.overlaps(box_b), f"{a!r} {box_a} overlaps {b!r} {box_b}"
    # Every label sits right of its own end's marker, and a far end's label stays beside it.
    ax = figure.axes[0]
    for line in lines:
        end = ax.transData.transform((line.x[-1], line.y[-1]))
        box = boxes[f"end: {line.label.split(' (')[0]}"]
        assert box.x0 > end[0]
    euler_a = boxes["end: euler_a"]
    far_end = ax.transData.transform(ends["euler_a (25 steps, 25 NFE)"])
    assert euler_a.y0 < far_end[1] < euler_a.y1


def test_stacked_labels_keep_their_ends_order_and_clear_every_marker_of_the_cluster():
    anchors = np.array([[100.0, 50.0], [104.0, 52.0], [0.0, 500.0], [102.0, 48.0]])
    sizes = np.array([[60.0, 10.0]] * 4)
    corners = stack_labels(anchors, sizes, pad=8, gap=2)
    assert corners[2].tolist() == [8.0, 495.0]  # alone: beside its anchor, centred
    stacked = corners[[1, 0, 3]]  # top to bottom, as the anchors are
    assert (stacked[:, 0] == 112).all() and np.allclose(-np.diff(stacked[:, 1]), 12)
    assert np.isclose(stacked[:, 1].mean() + 5, 50)  # the column is centred on its anchors


def test_convergence_svg_is_a_log_chart_by_model_evaluations():
    nfe = np.arange(1, 11)
    svg = convergence_svg({"x̂0": (nfe, 10.0 ** -nfe.astype(float)), "step": (nfe, np.ones(10))})
    assert svg.startswith("<svg") and svg.endswith("</svg>") and svg.count("<polyline") == 2
    assert "1e0" in svg and "1e-9" in svg and "model evaluations (NFE)" in svg
    assert "timestep t" not in svg
