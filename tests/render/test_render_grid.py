"""Labelled grids, captions and panel strips: sizes, and that the text is really drawn."""

import numpy as np
import pytest
from PIL import Image, ImageFont

from diffx.render.grid import BACKGROUND, caption_bar, fit_text, load_font, make_grid


def _cells(rows, cols, size=64):
    rng = np.random.default_rng(0)
    return [[rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(cols)] for _ in range(rows)]


def _has_ink(image: Image.Image, box) -> bool:
    return bool((np.asarray(image.crop(box)) != BACKGROUND).any())


def test_font_is_scalable_truetype():
    font = load_font(20)
    assert isinstance(font, ImageFont.FreeTypeFont)
    assert load_font(40).getlength("guidance") > 1.8 * font.getlength("guidance")


def test_bare_grid_is_cells_and_padding():
    grid = make_grid(_cells(2, 3), pad=4)
    assert grid.size == (3 * 64 + 4 * 4, 2 * 64 + 3 * 4)
    assert np.array_equal(np.asarray(grid)[4 : 4 + 64, 4 : 4 + 64], _cells(2, 3)[0][0])


def test_labels_grow_the_grid_where_they_go():
    bare = make_grid(_cells(2, 3)).size
    with_rows = make_grid(_cells(2, 3), row_labels=["seed 1", "seed 2"]).size
    with_cols = make_grid(_cells(2, 3), col_labels=["1.0", "4.0", "7.5"]).size
    with_title = make_grid(_cells(2, 3), title="seeds × guidance").size
    with_cell_labels = make_grid(_cells(2, 3), cell_labels=[["a", "b", "c"], ["d", "e", "f"]]).size
    with_axes = make_grid(_cells(2, 3), x_axis_title="guidance", y_axis_title="seed").size
    assert with_rows[0] > bare[0] and with_rows[1] == bare[1]
    assert with_cols[1] > bare[1] and with_cols[0] == bare[0]
    assert with_title[1] > bare[1] and with_title[0] == bare[0]
    assert with_cell_labels[1] > bare[1]
    assert with_axes[0] > bare[0] and with_axes[1] > bare[1]


def test_text_is_drawn_in_the_label_areas():
    cells = [[np.full((64, 64, 3), 255, np.uint8)] * 2] * 2  # white cells: any ink is text
    grid = make_grid(cells, row_labels=["r1", "r2"], col_labels=["c1", "c2"], title="Title", pad=4)
    width, height = grid.size
    top_band = height - (2 * 64 + 3 * 4)
    left_band = width - (2 * 64 + 3 * 4)
    assert _has_ink(grid, (0, 0, width, top_band))
    assert _has_ink(grid, (0, top_band, left_band, height))
    blank = make_grid(cells, row_labels=["", ""], col_labels=["", ""], title="", pad=4)
    assert not _has_ink(blank, (0, 0, *blank.size))


def test_different_titles_give_different_pictures():
    cat = make_grid(_cells(1, 2), title="cat")
    dog = make_grid(_cells(1, 2), title="dog")
    assert cat.size == dog.size
    assert not np.array_equal(np.asarray(cat), np.asarray(dog))
    longer = make_grid(_cells(1, 2), title="a cat sitting on a mat in the sun")  # wraps to two lines
    assert longer.size[1] > cat.size[1] and longer.size[0] == cat.size[0]


def test_font_size_scales_with_cell_size():
    small = make_grid(_cells(1, 1, size=64), col_labels=["label"])
    large = make_grid(_cells(1, 1, size=512), col_labels=["label"])
    assert large.size[1] - 512 > small.size[1] - 64


def test_cells_are_resized_and_ragged_rows_allowed():
    cells = [[np.zeros((32, 32, 3), np.uint8), np.zeros((64, 48, 3), np.uint8)], [None]]
    grid = make_grid(cells, cell_size=(40, 40), pad=2)
    assert grid.size == (2 * 40 + 3 * 2, 2 * 40 + 3 * 2)


def test_label_count_must_match():
    with pytest.raises(ValueError, match="row_labels"):
        make_grid(_cells(2, 2), row_labels=["only one"])


def test_fit_text_wraps_shrinks_and_cuts_to_width():
    wrapped = fit_text("a long label about guidance", max_width=200, font_size=16)
    assert len(wrapped.lines) == 2 and wrapped.font.size == 16
    assert wrapped.width <= 200
    shrunk = fit_text("supercalifragilistic", max_width=100, font_size=24)
    assert shrunk.font.size < 24 and shrunk.width <= 100
    cut = fit_text("x" * 200, max_width=50, font_size=12)
    assert cut.lines[0].endswith("…") and cut.width <= 50


def test_caption_bar_height_is_independent_of_text():
    frame = np.zeros((128, 128, 3), np.uint8)
    short = caption_bar(frame, "step 1/25")
    long = caption_bar(frame, "step 12/25 · t=521 · σ=1.83 · and a very long tail that cannot fit")
    assert short.size == long.size and short.size[0] == 128 and short.size[1] > 128
    assert np.array_equal(np.asarray(short)[:128], frame)
    assert _has_ink(short, (0, 128, 128, short.size[1]))
