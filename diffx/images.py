"""Input pictures: reading image and mask files, and converting between pictures and tensors.

The bottom layer for pictures that go *into* the model (the pipeline's init images and masks); the
renderers in `diffx.render` make pictures that come *out*. Tensor images are (3, H, W) in [-1, 1], the
VAE's range; pictures are uint8 (H, W, 3) arrays or PIL images.
"""

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from diffx.errors import InputImageError

MASK_THRESHOLD = 0.5  # a mask pixel whose grey level is >= this repaints
MAX_PICTURE_SIDE = 8192  # the largest input picture side read (as large as any generation: MAX_SIDE)


class MaskWarning(UserWarning):
    """An inpainting mask selects no pixel or every pixel (e.g. a coloured or mid-grey mask)."""


def unit_range_to_uint8(x: torch.Tensor) -> np.ndarray:
    """(H, W, 3) floats in [-1, 1] -> uint8 (H, W, 3) in [0, 255], clipping what falls outside."""
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8).cpu().numpy()


def tensor_to_image(x: torch.Tensor) -> np.ndarray:
    """A decoded image (3, H, W) in [-1, 1] (the VAE's output range) -> uint8 (H, W, 3)."""
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image tensor, got shape {tuple(x.shape)}")
    return unit_range_to_uint8(x.detach().float().permute(1, 2, 0))


def image_to_tensor(image: Image.Image | np.ndarray | Tensor) -> Tensor:
    """(H, W, 3) uint8 or PIL → (1, 3, H, W) float in [-1, 1]; a (3, H, W) tensor in [-1, 1] passes through."""
    if isinstance(image, Tensor):
        return image[None] if image.ndim == 3 else image
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def repaint_mask(mask: Image.Image | np.ndarray | Tensor) -> Tensor:
    """Pixel mask (H, W), 1 = repaint → (1, 1, H, W) of exact 0s and 1s.

    Grey levels are thresholded at MASK_THRESHOLD (>= 0.5 → repaint), like `load_mask` and diffusers'
    mask processor; a uint8 array or a PIL image counts 255 as 1.
    """
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    levels = torch.as_tensor(np.asarray(mask), dtype=torch.float32)
    if isinstance(mask, np.ndarray) and mask.dtype == np.uint8:
        levels = levels / 255.0
    return (levels >= MASK_THRESHOLD).float()[None, None]


def _check_picture_size(path: Path, size: tuple[int, int]) -> None:
    """Refuse, from the file's header alone, a picture no generation could use (and whose pixels would not fit)."""
    width, height = size
    if width < 1 or height < 1 or max(width, height) > MAX_PICTURE_SIDE:
        raise InputImageError(f"image {path} is {width}x{height}; pass a picture of 1 to {MAX_PICTURE_SIDE} pixels "
                              "a side")


def load_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> Image.Image:
    """Read an image file as RGB, optionally resized to `size` = (width, height) with Lanczos filtering.

    EXIF orientation is applied, so photos from phones come out upright.
    """
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"no image file at {path}; check the path")
    try:
        with warnings.catch_warnings():
            # Pillow warns about (and refuses) pictures it takes for decompression bombs, in two lines of its own;
            # the size is checked from the header below, before a pixel is decoded.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                _check_picture_size(path, opened.size)
                image = ImageOps.exif_transpose(opened).convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputImageError(f"image {path} claims to be over {Image.MAX_IMAGE_PIXELS:,} pixels; pass a picture "
                              f"of at most {MAX_PICTURE_SIDE} pixels a side") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        reason = "not an image format Pillow can read" if isinstance(err, UnidentifiedImageError) else err
        raise InputImageError(f"cannot read image {path} ({reason}); pass a PNG or JPEG file") from None
    if size is not None and image.size != tuple(size):
        image = image.resize(tuple(size), Image.Resampling.LANCZOS)
    return image


def load_mask(path: str | os.PathLike, size: tuple[int, int]) -> torch.Tensor:
    """Read an inpainting mask as a (height, width) float tensor of 0s and 1s; 1 (white) = repaint.

    The file is converted to grey levels in [0, 1] (luminance: pure red is 0.3) and thresholded: a
    pixel is 1 when its level is
    >= MASK_THRESHOLD (0.5), else 0. The mask must already be `size` = (width, height), the size of
    the image it belongs to: resizing a mask silently would move the region the user drew. A mask that
    selects no pixel or every pixel is returned with a `MaskWarning`.
    """
    image = load_image(path)
    if image.size != tuple(size):
        raise InputImageError(
            f"mask {path} is {image.size[0]}x{image.size[1]} but the image is {size[0]}x{size[1]}; "
            "resize the mask to the image size"
        )
    mask = repaint_mask(np.array(image.convert("L")))[0, 0]  # (H, W)
    if not mask.any():
        warnings.warn(MaskWarning(
            f"mask {path} repaints nothing: no pixel is at least 50% bright (pure red counts 30%); "
            "paint the area to repaint white"), stacklevel=2)
    elif mask.all():
        warnings.warn(MaskWarning(f"mask {path} repaints every pixel (all at least 50% bright); "
                                  "paint the area to keep black"), stacklevel=2)
    return mask


def load_init_image(image_path: str | os.PathLike, size: tuple[int, int],
                    mask_path: str | os.PathLike | None = None) -> tuple[Image.Image, Tensor | None]:
    """An input image resized to `size` = (width, height), and its inpainting mask (1 = repaint).

    The mask must have the image file's own size (it was drawn on that picture); both are then
    resized together, the mask with nearest neighbours so it stays 0/1.
    """
    original = load_image(image_path)
    mask = None
    if mask_path is not None:
        mask = load_mask(mask_path, original.size)  # (H, W)
        mask = F.interpolate(mask[None, None], size=(size[1], size[0]), mode="nearest")[0, 0]
    image = original if original.size == tuple(size) else original.resize(tuple(size), Image.Resampling.LANCZOS)
    return image, mask
