"""2-D point clouds as pictures: scatter plots, arrow fields and particle trails, drawn with numpy and PIL.

The lab's pictures (points diffusing, the learned score field, particles moving along a sampler's path)
are all one kind of panel: a square window [-extent, extent]² onto the plane, with faint grid lines at
every whole unit so distances read the same in every panel. Points are stamped as small discs straight
into a uint8 array (thousands per frame, no per-point drawing calls); arrows and trails are PIL lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from diffx.render.grid import TEXT_COLOR, load_font

# Categorical colours for classes (matplotlib's tab10): distinct hues that say "which class", not "how much".
CLASS_COLORS = np.array([(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                         (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)],
                        dtype=np.uint8)
POINT_COLOR = (30, 60, 140)  # particles
GHOST_COLOR = (200, 200, 200)  # reference points behind the particles (e.g. the forward marginal q(x_t))
ARROW_COLOR = (200, 60, 30)
GRID_COLOR = (232, 232, 232)
AXIS_COLOR = (205, 205, 205)

PointsLike = np.ndarray | torch.Tensor


def _as_points(points: PointsLike) -> np.ndarray:
    """(N, 2) tensor or array -> float64 (N, 2) array."""
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().double().numpy()
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"expected (N, 2) points, got shape {points.shape}")
    return points


def class_colors(labels: PointsLike) -> np.ndarray:
    """(N,) integer labels -> (N, 3) uint8 colours from CLASS_COLORS (cycling after ten classes)."""
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    return CLASS_COLORS[labels % len(CLASS_COLORS)]


@dataclass(frozen=True)
class PlaneView:
    """The window [-extent, extent]² of the plane drawn as a `size` x `size` picture (y up)."""

    extent: float = 3.0
    size: int = 200

    def to_pixels(self, points: PointsLike) -> np.ndarray:
        """(N, 2) plane coordinates -> (N, 2) float pixel coordinates (column, row)."""
        points = _as_points(points)
        scale = self.size / (2 * self.extent)
        return np.stack([(points[:, 0] + self.extent) * scale, (self.extent - points[:, 1]) * scale], axis=1)

    def blank(self) -> np.ndarray:
        """A white (size, size, 3) panel with grid lines at whole units and darker axes through 0."""
        canvas = np.full((self.size, self.size, 3), 255, dtype=np.uint8)
        for value in range(-int(self.extent), int(self.extent) + 1):
            column, row = self.to_pixels(np.array([[value, value]]))[0].round().astype(int).clip(0, self.size - 1)
            color = AXIS_COLOR if value == 0 else GRID_COLOR
            canvas[:, column] = color
            canvas[row, :] = color
        return canvas


def _disc_offsets(radius: float) -> np.ndarray:
    """The integer (dx, dy) pixel offsets inside a disc of `radius` pixels, (K, 2)."""
    reach = int(np.ceil(radius))
    dx, dy = np.meshgrid(np.arange(-reach, reach + 1), np.arange(-reach, reach + 1))
    inside = dx**2 + dy**2 <= radius**2 + 0.5
    return np.stack([dx[inside], dy[inside]], axis=1)


def scatter(canvas: np.ndarray, view: PlaneView, points: PointsLike, colors: np.ndarray | Sequence[int],
            radius: float = 1.5) -> np.ndarray:
    """Stamp points as discs of `radius` px into `canvas` (H, W, 3) uint8, in place; later points on top.

    `colors` is one RGB triple or (N, 3) uint8, one per point. Points outside the window are not drawn.
    """
    pixels = view.to_pixels(points).round().astype(np.int64)  # (N, 2) column, row
    colors = np.broadcast_to(np.asarray(colors, dtype=np.uint8), (len(pixels), 3))
    height, width = canvas.shape[:2]
    for dx, dy in _disc_offsets(radius):
        column, row = pixels[:, 0] + dx, pixels[:, 1] + dy
        inside = (column >= 0) & (column < width) & (row >= 0) & (row < height)
        canvas[row[inside], column[inside]] = colors[inside]
    return canvas


def draw_arrows(image: Image.Image, view: PlaneView, starts: PointsLike, vectors: PointsLike,
                color: tuple[int, int, int] = ARROW_COLOR) -> Image.Image:
    """Draw an arrow from each start along its vector (both (N, 2) plane units), in place on `image`."""
    tails, heads = view.to_pixels(starts), view.to_pixels(_as_points(starts) + _as_points(vectors))
    draw = ImageDraw.Draw(image)
    for tail, head in zip(tails, heads, strict=True):
        delta = head - tail
        length = float(np.hypot(*delta))
        if length < 0.5:  # shorter than a pixel: a dot says "no flow here"
            draw.point(tuple(tail), fill=color)
            continue
        draw.line([tuple(tail), tuple(head)], fill=color, width=1)
        back = -delta / length * min(5.0, 0.4 * length)  # the head's two barbs, ±28° off the shaft
        for angle in (0.49, -0.49):
            cos, sin = np.cos(angle), np.sin(angle)
            barb = np.array([cos * back[0] - sin * back[1], sin * back[0] + cos * back[1]])
            draw.line([tuple(head), tuple(head + barb)], fill=color, width=1)
    return image


def draw_trails(image: Image.Image, view: PlaneView, paths: PointsLike | Sequence[PointsLike],
                colors: np.ndarray | Sequence[Sequence[int]], width: int = 1) -> Image.Image:
    """Draw each particle's trail, a polyline through its positions: `paths` (S, K, 2), one colour per trail."""
    steps = np.stack([_as_points(step) for step in paths])  # (S, K, 2)
    pixels = view.to_pixels(steps.reshape(-1, 2)).reshape(steps.shape)
    draw = ImageDraw.Draw(image)
    for trail, color in zip(pixels.transpose(1, 0, 2), colors, strict=True):
        draw.line([tuple(point) for point in trail], fill=tuple(int(c) for c in color), width=width)
    return image


def color_key(names: Sequence[str], colors: np.ndarray | Sequence[Sequence[int]], width: int,
              font_size: int = 13) -> Image.Image:
    """A one-line key "■ name  ■ name …" for categorical colours, `width` px wide (entries that do not
    fit are cut, with "…" after the last one shown)."""
    font = load_font(font_size)
    ascent, descent = font.getmetrics()
    pad = max(2, font_size // 3)
    image = Image.new("RGB", (width, ascent + descent + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    x = pad
    for index, (name, color) in enumerate(zip(names, colors, strict=True)):
        entry = font.getlength(name) + font_size + 2 * pad
        if x + entry > width - pad:
            if index:
                draw.text((x, pad), "…", font=font, fill=TEXT_COLOR)
            break
        box = (x, pad + descent, x + font_size - 3, pad + descent + font_size - 3)
        draw.rectangle(box, fill=tuple(int(c) for c in color))
        draw.text((x + font_size, pad), name, font=font, fill=TEXT_COLOR)
        x += entry + pad
    return image


def points_panel(view: PlaneView, points: PointsLike | None = None, colors: np.ndarray | Sequence[int] = POINT_COLOR,
                 ghost: PointsLike | None = None, arrows: tuple[PointsLike, PointsLike] | None = None,
                 trails: tuple[PointsLike, np.ndarray] | None = None, radius: float = 1.5) -> Image.Image:
    """One panel, bottom to top: grid, `ghost` points in light grey (a reference cloud), `arrows`
    (starts, vectors), `trails` (paths (S, K, 2), colours (K, 3)), then `points` in `colors`."""
    canvas = view.blank()
    if ghost is not None:
        scatter(canvas, view, ghost, GHOST_COLOR, radius=1.0)
    image = Image.fromarray(canvas)
    if arrows is not None:
        draw_arrows(image, view, *arrows)
    if trails is not None:
        draw_trails(image, view, *trails)
    if points is not None:
        image = Image.fromarray(scatter(np.asarray(image).copy(), view, points, colors, radius))
    return image
