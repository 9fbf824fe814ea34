"""Input pictures: image and mask files, picture <-> tensor conversions (diffx/images.py)."""

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from diffx.errors import InputImageError
from diffx.images import image_to_tensor, load_image, load_init_image, load_mask, repaint_mask, tensor_to_image


def test_load_image_converts_to_rgb_and_resizes(tmp_path):
    Image.new("L", (10, 6), 200).save(tmp_path / "grey.png")
    image = load_image(tmp_path / "grey.png")
    assert image.mode == "RGB" and image.size == (10, 6)
    assert load_image(tmp_path / "grey.png", size=(20, 12)).size == (20, 12)


def test_load_image_rejects_non_image_and_missing(tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not a picture")
    with pytest.raises(InputImageError, match="notes.png") as err:
        load_image(not_image)
    assert "\n" not in str(err.value)
    with pytest.raises(InputImageError, match="no image file"):
        load_image(tmp_path / "missing.png")


def test_mask_threshold_at_half(tmp_path):
    levels = np.array([[0, 127, 128, 255]], np.uint8)  # 127/255 < 0.5 <= 128/255
    Image.fromarray(levels).save(tmp_path / "mask.png")
    mask = load_mask(tmp_path / "mask.png", size=(4, 1))
    assert mask.tolist() == [[0.0, 0.0, 1.0, 1.0]]


def test_mask_size_mismatch(tmp_path):
    Image.new("L", (8, 8), 255).save(tmp_path / "mask.png")
    with pytest.raises(InputImageError, match="8x8 but the image is 16x16"):
        load_mask(tmp_path / "mask.png", size=(16, 16))


def test_tensor_to_image_range_and_layout():
    x = torch.zeros(3, 2, 4)
    x[0, 0, 0] = -1.0
    x[1, 0, 0] = 1.0
    x[2, 1, 3] = 5.0  # out of range: clipped
    image = tensor_to_image(x)
    assert image.shape == (2, 4, 3) and image.dtype == np.uint8
    assert tuple(image[0, 0]) == (0, 255, 128)
    assert tuple(image[1, 3]) == (128, 128, 255)
    with pytest.raises(ValueError):
        tensor_to_image(torch.zeros(1, 3, 4, 4))


def test_init_image_and_mask(tmp_path):
    Image.new("RGB", (64, 48), (255, 0, 0)).save(tmp_path / "image.png")
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[:, 32:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.new("L", (32, 32)).save(tmp_path / "small_mask.png")
    image, resized = load_init_image(tmp_path / "image.png", (32, 24), tmp_path / "mask.png")
    assert image.size == (32, 24) and resized.shape == (24, 32)
    assert set(resized.unique().tolist()) == {0.0, 1.0} and resized[:, 16:].all() and not resized[:, :16].any()
    with pytest.raises(InputImageError, match="resize the mask"):
        load_init_image(tmp_path / "image.png", (32, 24), tmp_path / "small_mask.png")


def test_picture_tensor_round_trip_and_repaint_mask():
    picture = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 14
    x = image_to_tensor(picture)  # (1, 3, 2, 3) in [-1, 1]
    assert x.shape == (1, 3, 2, 3) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(tensor_to_image(x[0]), picture)
    levels = np.array([[0, 127, 128, 255]], np.uint8)
    assert repaint_mask(levels).tolist() == [[[[0.0, 0.0, 1.0, 1.0]]]]
    assert repaint_mask(torch.tensor([[0.2, 0.5]])).tolist() == [[[[0.0, 1.0]]]]


@pytest.mark.parametrize(("colour", "says"), [((255, 0, 0), "repaints nothing"), ((255, 255, 255), "every pixel")])
def test_mask_that_selects_nothing_or_everything_warns(tmp_path, colour, says):
    from diffx.images import MaskWarning

    Image.new("RGB", (8, 8), colour).save(tmp_path / "m.png")
    with pytest.warns(MaskWarning, match=says):
        load_mask(tmp_path / "m.png", (8, 8))


def png_claiming(tmp_path, width: int, height: int) -> str:
    """A 1x1 PNG whose header says `width` x `height` (IHDR patched, its CRC recomputed): a decompression bomb."""
    path = tmp_path / f"claims_{width}x{height}.png"
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR's width and height follow its 4-byte type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return str(path)


@pytest.mark.parametrize("side, says", [(30_000, "claims to be over"), (9_000, "is 9000x9000")])
def test_pictures_too_large_are_one_clear_error_before_decoding(tmp_path, recwarn, side, says):
    with pytest.raises(InputImageError, match=says):
        load_image(png_claiming(tmp_path, side, side))
    with pytest.raises(InputImageError, match=says):
        load_mask(png_claiming(tmp_path, side, side), (side, side))
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]
