"""Heatmaps, overlays and attention-map normalization."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffx.errors import InvalidArgumentError
from diffx.render.colormap import COLORMAPS, heatmap, normalize_maps, overlay

VIRIDIS_LOW = (68, 1, 84)  # viridis(0.0) = (0.267, 0.005, 0.329)
VIRIDIS_HIGH = (253, 231, 37)  # viridis(1.0) = (0.993, 0.906, 0.144)


def _luma(rgb):
    return rgb.astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])


def test_heatmap_ends_and_default_range():
    colours = heatmap(np.array([[3.0, 5.0]]))  # default range = the map's own min/max
    assert colours.dtype == np.uint8 and colours.shape == (1, 2, 3)
    assert tuple(colours[0, 0]) == VIRIDIS_LOW
    assert tuple(colours[0, 1]) == VIRIDIS_HIGH


def test_heatmap_explicit_range_clips_and_accepts_tensors():
    colours = heatmap(torch.tensor([[-1.0, 0.5, 2.0]]), vmin=0.0, vmax=1.0)
    assert tuple(colours[0, 0]) == VIRIDIS_LOW
    assert tuple(colours[0, 2]) == VIRIDIS_HIGH
    assert tuple(colours[0, 1]) == (33, 145, 140)  # viridis(0.5), the teal middle


def test_constant_map_is_the_low_colour():
    assert (heatmap(np.full((3, 3), 7.0)) == VIRIDIS_LOW).all()


@pytest.mark.parametrize("cmap", COLORMAPS)
def test_colormaps_are_monotone_in_luminance(cmap):
    colours = heatmap(np.linspace(0, 1, 64)[None], cmap=cmap)[0]  # (64, 3)
    assert np.all(np.diff(_luma(colours)) > 0)


def test_unknown_colormap():
    with pytest.raises(InvalidArgumentError, match="jet"):
        heatmap(np.zeros((2, 2)), cmap="jet")


def test_overlay_alpha_zero_is_image_and_alpha_one_is_heatmap():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    heat = rng.random((4, 6)).astype(np.float32)
    assert np.array_equal(overlay(image, heat, alpha=0.0), image)
    assert np.array_equal(overlay(Image.fromarray(image), heat, alpha=0.0), image)  # PIL images too
    on_top = overlay(image, heat, alpha=1.0)
    upsampled = F.interpolate(torch.from_numpy(heat)[None, None], size=(16, 24), mode="bilinear")[0, 0]
    expected = heatmap(upsampled, vmin=0.0, vmax=1.0)
    assert np.abs(on_top.astype(int) - expected.astype(int)).max() <= 3


def test_overlay_lines_up_with_the_image_and_blends():
    image = np.full((8, 8, 3), 100, np.uint8)
    heat = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)  # hot on the left
    half = overlay(image, heat, alpha=0.5)
    assert _luma(half[:, 0]).mean() > _luma(half[:, -1]).mean()
    expected_left = np.round(0.5 * 100 + 0.5 * np.array(VIRIDIS_HIGH))
    assert np.array_equal(half[0, 0], expected_left)


def test_overlay_rejects_bad_alpha():
    with pytest.raises(InvalidArgumentError, match="alpha"):
        overlay(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2)), alpha=1.5)


def test_normalize_shared_keeps_relative_strength():
    strong = torch.linspace(0, 1, 16).reshape(4, 4)
    weak = strong * 0.1
    shared = normalize_maps(torch.stack([strong, weak]), scale="shared")
    assert shared.shape == (2, 4, 4)
    assert shared.min() == 0.0 and shared.max() == 1.0
    np.testing.assert_allclose(shared[1], 0.1 * shared[0], atol=1e-6)


def test_normalize_word_stretches_each_map():
    strong = np.linspace(0, 1, 16).reshape(4, 4)
    weak = 0.2 + 0.1 * strong
    per_word = normalize_maps(np.stack([strong, weak]), scale="word")
    for m in per_word:
        assert m.min() == 0.0 and m.max() == pytest.approx(1.0)
    np.testing.assert_allclose(per_word[0], per_word[1], atol=1e-6)


def test_normalize_unknown_scale():
    with pytest.raises(InvalidArgumentError, match="shared"):
        normalize_maps(np.zeros((1, 2, 2)), scale="global")
