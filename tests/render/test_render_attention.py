"""Pictures of attention: coarse grids with visible cells, self-attention's principal components."""

import numpy as np
import pytest

from diffx.render.attention import component_grey, components_rgb, grid_heat, mark_pixel, self_attention_components


def test_grid_heat_keeps_one_square_per_cell():
    values = np.arange(4, dtype=np.float32).reshape(2, 2)
    big = grid_heat(values, (8, 8))
    assert big.shape == (8, 8)
    assert np.array_equal(big[:4, :4], np.zeros((4, 4))) and np.array_equal(big[4:, 4:], np.full((4, 4), 3.0))


def test_components_are_the_svd_of_the_row_centred_matrix():
    """Against numpy's SVD written out: Vᵀ rows of A − row means, signs turned so the peak is positive;
    shares s_i² / Σ s²; a two-region attention matrix puts the regions apart in PC1."""
    rng = np.random.default_rng(0)
    rows = cols = 4
    region = (np.arange(16) % 4 < 2)  # left half / right half of a 4×4 grid
    matrix = np.where(region[:, None] == region[None, :], 1.0, 0.05) + 0.01 * rng.random((16, 16))
    matrix /= matrix.sum(1, keepdims=True)
    components, shares = self_attention_components(matrix, rows, cols, count=3)
    _, s, vh = np.linalg.svd(matrix - matrix.mean(1, keepdims=True))
    for i in range(3):
        expected = vh[i] * np.sign(vh[i][np.abs(vh[i]).argmax()])
        np.testing.assert_allclose(components[i].reshape(-1), expected, atol=1e-4)  # float32 out
    np.testing.assert_allclose(shares, s[:3] ** 2 / (s**2).sum(), rtol=1e-5)
    first = components[0].reshape(-1)
    assert shares[0] > 0.9 and (np.sign(first[region]) != np.sign(first[~region][0])).all()
    with pytest.raises(ValueError, match="4×4 grid is 16² values"):
        self_attention_components(matrix[:8], rows, cols)


def test_rgb_and_grey_pictures():
    components = np.stack([np.linspace(0, 1, 16).reshape(4, 4), np.zeros((4, 4)), -np.eye(4)])
    rgb = components_rgb(components)
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 4, 3)
    assert rgb[0, 0, 0] == 0 and rgb[3, 3, 0] == 255 and (rgb[..., 1] == 0).all()  # a constant map is 0
    assert rgb[0, 0, 2] == 0 and rgb[0, 1, 2] == 255  # −I: the diagonal is the minimum
    grey = component_grey(components[0])
    assert grey.shape == (4, 4, 3) and (grey[..., 0] == grey[..., 2]).all() and grey.max() == 255
    with pytest.raises(ValueError, match="takes 3 component maps"):
        components_rgb(components[:2])


def test_mark_pixel_draws_around_the_point_only():
    picture = np.zeros((96, 96, 3), dtype=np.uint8)
    marked = mark_pixel(picture, 0.25, 0.75)
    changed = np.argwhere(marked.any(-1))
    centre = changed.mean(0)
    assert abs(centre[0] - 72) < 2 and abs(centre[1] - 24) < 2  # rows = y, cols = x
    assert (changed.max(0) - changed.min(0)).max() <= 2 * 96 / 24 + 2  # a ring of radius width/24
