"""The two picture forms used by the renderers: uint8 (H, W, 3) numpy arrays and PIL images.

Math-side functions (latents, colormaps) return arrays; layout and file functions take either.
"""

import numpy as np
from PIL import Image

from diffx.errors import check_choice

PictureLike = Image.Image | np.ndarray

RESAMPLE_METHODS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}


def to_pil(image: PictureLike) -> Image.Image:
    """Return `image` as an RGB PIL image; arrays must be uint8 (H, W, 3) or (H, W)."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected a uint8 (H, W, 3) or (H, W) array, got {image.dtype} {image.shape}")
    return Image.fromarray(image).convert("RGB")


def upscale(image: PictureLike, size: tuple[int, int], resample: str = "nearest") -> np.ndarray:
    """Resize a small picture (e.g. a 64x64 latent preview) to a display `size` = (width, height).

    "nearest" keeps each latent pixel a visible square (honest about the resolution);
    "bilinear" gives a smoother look.
    """
    check_choice("resample method", resample, tuple(RESAMPLE_METHODS))
    return np.asarray(to_pil(image).resize(tuple(size), RESAMPLE_METHODS[resample]))
