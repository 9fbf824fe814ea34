"""lab/data.py: the built-in distributions are deterministic from a seed, labelled by component and about
unit variance; a picture is a density by grey level; bad data names and files are one clear error."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffx.errors import InputImageError, InvalidArgumentError
from diffx.lab.data import DISTRIBUTIONS, GRID_STD, get_distribution, grid_centres


def _draw(name, n=4000, seed=0):
    return get_distribution(name).sample(n, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_builtin_distributions_are_seeded_labelled_and_unit_scale(name):
    points, labels = _draw(name)
    again, again_labels = _draw(name)
    other, _ = _draw(name, seed=1)
    assert points.shape == (4000, 2) and points.dtype == torch.float32 and labels.dtype == torch.long
    torch.testing.assert_close(points, again, rtol=0, atol=0)
    assert torch.equal(labels, again_labels) and not torch.equal(points, other)
    data = get_distribution(name)
    assert set(labels.tolist()) == set(range(data.num_classes))
    assert 0.6 < float(points.std(dim=0).mean()) < 1.4  # the scale a VP diffusion expects of x_0
    assert float(points.abs().max()) < 3.0  # inside the lab's ±3 window


def test_two_moons_upper_moon_is_label_0():
    points, labels = _draw("moons")
    assert points[labels == 0, 1].mean() > points[labels == 1, 1].mean() + 0.5


def test_gaussian_grid_points_sit_around_their_component_centre():
    points, labels = _draw("gaussians")
    distance = (points - grid_centres()[labels]).norm(dim=1)
    assert float(distance.max()) < 6 * GRID_STD
    assert abs(float(distance.pow(2).mean().sqrt()) - GRID_STD * 2**0.5) < 0.01  # RMS of a 2-D Gaussian


def test_a_picture_is_a_density_by_grey_level(tmp_path):
    pixels = np.zeros((20, 40), dtype=np.uint8)
    pixels[:, :20] = 255  # left half white: mass 1 per pixel
    pixels[:, 20:] = 85  # right half at a third of white
    pixels[:10, :20] = 0  # ... except the top-left quarter, black: no mass
    Image.fromarray(pixels).save(tmp_path / "mask.png")
    data = get_distribution(str(tmp_path / "mask.png"))
    points, labels = data.sample(20000, torch.Generator().manual_seed(0))
    assert data.num_classes == 1 and (labels == 0).all()
    left = points[:, 0] < 0
    assert 1.4 < float(left.sum() / (~left).sum()) < 1.6  # left: 200 px x 1, right: 400 px x 1/3
    assert not ((points[:, 0] < 0) & (points[:, 1] > 0)).any()  # nothing in the black quarter (y up)
    assert float(points.abs().max()) <= 1.6 + 1e-6


@pytest.mark.parametrize(("name", "error", "message"), [
    ("circles", InvalidArgumentError, "unknown data 'circles'; choose one of: moons, spiral, gaussians"),
    ("missing.png", InputImageError, "no image file at missing.png"),
])
def test_bad_data_names_are_one_clear_error(name, error, message):
    with pytest.raises(error, match=message):
        get_distribution(name)


def test_unreadable_and_black_pictures_are_refused(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not a picture")
    with pytest.raises(InputImageError, match="cannot read image"):
        get_distribution(str(tmp_path / "junk.png"))
    Image.new("L", (8, 8), 0).save(tmp_path / "black.png")
    with pytest.raises(InputImageError, match="black everywhere"):
        get_distribution(str(tmp_path / "black.png"))


def test_sample_count_must_be_positive():
    with pytest.raises(InvalidArgumentError, match="at least 1"):
        get_distribution("moons").sample(0, torch.Generator())
