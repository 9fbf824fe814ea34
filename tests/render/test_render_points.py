"""render/points.py: points land on the pixels the plane maps them to, arrows point the way their vectors do,
trails pass through every position, and the colour key draws one swatch per class."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffx.render.points import (
    CLASS_COLORS,
    GHOST_COLOR,
    POINT_COLOR,
    PlaneView,
    class_colors,
    color_key,
    draw_arrows,
    draw_trails,
    points_panel,
    scatter,
)

VIEW = PlaneView(extent=2.0, size=100)


def _pixel(image, column, row):
    return tuple(int(v) for v in np.asarray(image)[row, column])


def test_to_pixels_maps_the_window_corners_and_keeps_y_up():
    pixels = VIEW.to_pixels(np.array([[-2.0, 2.0], [2.0, -2.0], [0.0, 0.0], [1.0, 1.0]]))
    np.testing.assert_allclose(pixels, [[0, 0], [100, 100], [50, 50], [75, 25]])


def test_blank_panel_has_grid_lines_at_whole_units_and_white_elsewhere():
    canvas = VIEW.blank()
    assert canvas.shape == (100, 100, 3) and canvas.dtype == np.uint8
    assert tuple(canvas[10, 50]) != (255, 255, 255)  # the vertical axis x = 0
    assert tuple(canvas[10, 75]) != (255, 255, 255)  # the grid line x = 1
    assert tuple(canvas[10, 60]) == (255, 255, 255)


def test_scatter_stamps_each_point_in_its_colour_and_skips_points_outside():
    canvas = np.full((100, 100, 3), 255, dtype=np.uint8)
    colors = np.array([[255, 0, 0], [0, 0, 255]], dtype=np.uint8)
    scatter(canvas, VIEW, torch.tensor([[1.0, 1.0], [-1.0, -1.0]]), colors, radius=1.0)
    assert tuple(canvas[25, 75]) == (255, 0, 0) and tuple(canvas[26, 75]) == (255, 0, 0)  # disc of radius 1
    assert tuple(canvas[75, 25]) == (0, 0, 255)
    assert tuple(canvas[28, 75]) == (255, 255, 255)
    before = canvas.copy()
    scatter(canvas, VIEW, np.array([[5.0, 5.0]]), POINT_COLOR)  # outside the ±2 window: nothing drawn
    np.testing.assert_array_equal(canvas, before)


def test_scatter_rejects_points_that_are_not_2d():
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        scatter(VIEW.blank(), VIEW, np.zeros((3, 3)), POINT_COLOR)


def test_arrow_is_drawn_from_its_start_towards_its_vector_with_a_head():
    image = Image.new("RGB", (100, 100), (255, 255, 255))
    draw_arrows(image, VIEW, np.array([[0.0, 0.0]]), np.array([[1.0, 0.0]]), color=(0, 0, 0))
    row = np.asarray(image)[50]
    drawn = np.flatnonzero(row.sum(axis=1) == 0)
    assert drawn.min() == 50 and drawn.max() == 75  # the shaft: x = 0 → 1 is column 50 → 75
    barbs = np.asarray(image)[45:49, 68:75].sum(axis=2) == 0  # the head's upper barb, just behind the tip
    assert barbs.any()
    assert (np.asarray(image)[:, :49].sum(axis=2) == 765).all()  # nothing behind the start


def test_trails_pass_through_every_position():
    image = Image.new("RGB", (100, 100), (255, 255, 255))
    paths = np.array([[[-1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]])  # (S=3, K=1, 2)
    draw_trails(image, VIEW, paths, [(0, 0, 0)])
    for column, row in VIEW.to_pixels(paths[:, 0]).round().astype(int):
        assert _pixel(image, min(column, 99), row) == (0, 0, 0)


def test_panel_draws_ghost_under_points():
    panel = points_panel(VIEW, np.array([[1.0, 1.0]]), ghost=np.array([[1.0, 1.0], [-1.0, 1.0]]))
    assert panel.size == (100, 100)
    assert _pixel(panel, 75, 25) == POINT_COLOR  # the particle covers the ghost under it
    assert _pixel(panel, 25, 25) == GHOST_COLOR


def test_class_colors_are_categorical_and_cycle():
    colors = class_colors(torch.tensor([0, 1, 10]))
    assert tuple(colors[0]) == tuple(CLASS_COLORS[0]) and tuple(colors[2]) == tuple(CLASS_COLORS[0])
    assert tuple(colors[1]) != tuple(colors[0])


def test_color_key_has_one_swatch_per_class():
    key = np.asarray(color_key(["a", "b"], CLASS_COLORS[:2], 200))
    for color in CLASS_COLORS[:2]:
        assert (key == color).all(axis=2).sum() > 20
