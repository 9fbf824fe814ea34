"""Pictures of attention maps at their own resolution, and of self-attention's structure.

- `grid_heat`: a map on a coarse attention grid (4×4 … 64×64) enlarged with visible cells, so a learner
  sees how coarse each U-Net layer's grid is (bilinear smoothing would hide it);
- `self_attention_components`: the principal components of a self-attention matrix, as the
  prompt-to-prompt notebook shows them (Hertz et al. 2022, `show_self_attention_comp`): the SVD of
  the matrix with each row centred, the first right singular vectors as maps;
- `components_rgb`: the first three components as the R, G and B channels of one picture — pixels
  the model groups together share a colour;
- `mark_pixel`: a ring around one pixel of a picture (the query pixel of a self-attention row).
"""

import numpy as np
import torch
from PIL import Image, ImageDraw

from diffx.render.colormap import MapLike
from diffx.render.image import PictureLike, to_pil


def _as_array(values: MapLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().float().numpy()
    return np.asarray(values, dtype=np.float32)


def grid_heat(values: MapLike, size: tuple[int, int]) -> np.ndarray:
    """A (r, c) map enlarged to `size` = (width, height) with nearest neighbours: one square per grid cell."""
    return np.asarray(Image.fromarray(_as_array(values)).resize(size, Image.Resampling.NEAREST))


def self_attention_components(matrix: MapLike, rows: int, cols: int, count: int = 3
                              ) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` principal components (count, rows, cols) of a (N, N) self-attention matrix, N =
    rows·cols, and each one's share of the variance (count,).

    As in prompt-to-prompt: A − mean over each row, then the SVD U S Vᵀ; component i is row i of Vᵀ (a
    map over the key pixels), its share s_i² / Σ s². An SVD's signs are arbitrary, so each component is
    turned to make its largest-magnitude value positive (the same picture on every machine).
    """
    values = _as_array(matrix).astype(np.float64)
    if values.shape != (rows * cols, rows * cols):
        raise ValueError(f"a self-attention matrix on a {rows}×{cols} grid is {rows * cols}² values, "
                         f"got {values.shape}")
    _, singular, vh = np.linalg.svd(values - values.mean(axis=1, keepdims=True))
    components = vh[:count]  # (count, N)
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    components = components * signs[:, None]
    total = float((singular**2).sum())
    shares = singular[:count] ** 2 / total if total > 0 else np.zeros(len(components))
    return components.reshape(-1, rows, cols).astype(np.float32), shares


def _stretch(values: np.ndarray) -> np.ndarray:
    """Map a map's own [min, max] to [0, 1] (a constant map becomes 0)."""
    low, high = float(values.min()), float(values.max())
    return np.zeros_like(values) if high <= low else (values - low) / (high - low)


def components_rgb(components: MapLike) -> np.ndarray:
    """Three component maps (3, r, c) → a uint8 (r, c, 3) picture: R = the first, G the second, B the
    third, each stretched to its own range."""
    channels = _as_array(components)
    if channels.shape[0] != 3:
        raise ValueError(f"components_rgb takes 3 component maps, got {channels.shape[0]}")
    return np.round(np.stack([_stretch(c) for c in channels], axis=-1) * 255).astype(np.uint8)


def component_grey(component: MapLike) -> np.ndarray:
    """One component map (r, c) as a grey uint8 (r, c, 3) picture: black = its minimum, white = its maximum."""
    grey = np.round(_stretch(_as_array(component)) * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def mark_pixel(picture: PictureLike, x: float, y: float, colour: tuple[int, int, int] = (255, 64, 64)
               ) -> np.ndarray:
    """`picture` with a ring around the point (x, y), given as fractions of its width and height."""
    image = to_pil(picture).convert("RGB")
    draw = ImageDraw.Draw(image)
    cx, cy = x * image.width, y * image.height
    radius = max(4.0, image.width / 24)
    line = max(2, image.width // 96)
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=colour, width=line)
    draw.ellipse((cx - line, cy - line, cx + line, cy + line), fill=colour)
    return np.asarray(image)
