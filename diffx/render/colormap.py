"""Float maps (attention, noise magnitude) to colours with perceptual colormaps.

Perceptually uniform colormaps (viridis, magma, inferno, ...) change lightness monotonically, so a
brighter pixel always means a larger value - unlike "jet", whose bright bands invent structure.
"""

import matplotlib
import numpy as np
import torch
from PIL import Image

from diffx.errors import InvalidArgumentError, check_choice
from diffx.render.image import PictureLike, to_pil

COLORMAPS = ("viridis", "magma", "inferno", "plasma", "cividis")
NORMALIZE_SCALES = ("shared", "word")

MapLike = np.ndarray | torch.Tensor


def _as_float_array(values: MapLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().float().numpy()
    return np.asarray(values, dtype=np.float32)


def _rescale(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Map [vmin, vmax] linearly to [0, 1], clipping; a constant map (vmax == vmin) becomes all zeros."""
    if vmax <= vmin:
        return np.zeros_like(values)
    return np.clip((values - vmin) / (vmax - vmin), 0.0, 1.0)


def heatmap(
    values: MapLike, vmin: float | None = None, vmax: float | None = None, cmap: str = "viridis"
) -> np.ndarray:
    """Colour a (h, w) float map; values are scaled from [vmin, vmax] (default: the map's range).

    Returns a uint8 (h, w, 3) RGB array.
    """
    check_choice("colormap", cmap, COLORMAPS)
    values = _as_float_array(values)
    vmin = float(values.min()) if vmin is None else vmin
    vmax = float(values.max()) if vmax is None else vmax
    rgba = matplotlib.colormaps[cmap](_rescale(values, vmin, vmax))  # (h, w, 4) floats in [0, 1]
    return np.round(rgba[..., :3] * 255).astype(np.uint8)


def overlay(image: PictureLike, heat: MapLike, alpha: float = 0.5, cmap: str = "viridis",
            grey: bool = False) -> np.ndarray:
    """Blend a heatmap over an RGB image (H, W, 3): (1 - alpha) * image + alpha * colour(heat), as uint8.

    `heat` is a (h, w) map already in [0, 1] (see `normalize_maps`); it is upsampled bilinearly to
    the image size first, so a 16x16 attention map lines up with the 512x512 picture it attends over.
    `grey`: draw the picture in greyscale under the colours, so the colour map alone carries the values
    (a red object under viridis would otherwise read as heat).
    """
    if not 0.0 <= alpha <= 1.0:
        raise InvalidArgumentError(f"overlay alpha must be in [0, 1], got {alpha}")
    picture = to_pil(image)
    image = np.asarray(picture.convert("L").convert("RGB") if grey else picture)
    height, width = image.shape[:2]
    heat = _as_float_array(heat)
    heat = np.asarray(Image.fromarray(heat).resize((width, height), Image.Resampling.BILINEAR))
    colours = heatmap(heat, vmin=0.0, vmax=1.0, cmap=cmap).astype(np.float32)  # (H, W, 3)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    return np.round(blended).astype(np.uint8)


def normalize_maps(maps: MapLike, scale: str = "shared") -> np.ndarray:
    """Scale K maps (K, h, w) to [0, 1] for display.

    "shared": one min/max over all K maps, so maps can be compared (a word that gets little
    attention stays dark). "word": each map by its own min/max, so the shape of every map is
    visible even when its values are small.
    """
    check_choice("attention scale", scale, NORMALIZE_SCALES)
    maps = _as_float_array(maps)
    if scale == "shared":
        return _rescale(maps, float(maps.min()), float(maps.max()))
    return np.stack([_rescale(m, float(m.min()), float(m.max())) for m in maps])


def colorbar(width: int, height: int, cmap: str = "viridis") -> np.ndarray:
    """A horizontal colour bar (height, width, 3), low values on the left, for a legend under heatmaps."""
    ramp = np.tile(np.linspace(0.0, 1.0, max(width, 2), dtype=np.float32), (max(height, 1), 1))
    return heatmap(ramp, 0.0, 1.0, cmap)
