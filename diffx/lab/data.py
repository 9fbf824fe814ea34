"""The lab's 2-D data: labelled point distributions to train a tiny diffusion model on.

Every distribution is a mixture whose components are its classes (the two moons, the two arms of the
spiral, the cells of the Gaussian grid; a PNG mask is one class), so the same data serves unconditional
training and classifier-free guidance "conditional on the component" (Ho & Salimans 2022). Points are
scaled to about unit variance, the scale a variance-preserving diffusion expects of x_0: the forward
process x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε then keeps every marginal inside the same ±3 box.

Every draw takes a `torch.Generator`, so a seed fixes the data exactly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffx.errors import InputImageError, InvalidArgumentError
from diffx.images import load_image

DISTRIBUTIONS = ("moons", "spiral", "gaussians")
GRID_SIDE = 3  # the Gaussian grid is GRID_SIDE x GRID_SIDE components
GRID_STD = 0.12  # each grid component's standard deviation, in data units
MOON_NOISE = 0.06
SPIRAL_NOISE = 0.05
MASK_EXTENT = 1.6  # a mask picture is fitted into the square [-MASK_EXTENT, MASK_EXTENT]²
MAX_MASK_SIDE = 512  # larger masks are shrunk first (the density keeps its shape, sampling stays fast)


@dataclass
class PointDistribution:
    """A labelled 2-D distribution: `sample(n, generator)` -> points (n, 2) float32 and labels (n,) int64.

    `class_names[k]` says what label k is (shown in the legends); `name` is what the pictures call it.
    """

    name: str
    class_names: tuple[str, ...]
    draw: Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if n < 1:
            raise InvalidArgumentError(f"number of points must be at least 1, got {n}")
        return self.draw(n, generator)


def _uniform(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator)


def _two_moons(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved half circles (the scikit-learn toy), centred and scaled to about unit variance."""
    labels = (torch.rand(n, generator=generator) < 0.5).long()  # (n,)
    angle = math.pi * _uniform(n, generator)
    upper = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)  # (n, 2) on the unit half circle
    lower = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
    points = torch.where(labels[:, None] == 0, upper, lower)
    points = points + MOON_NOISE * torch.randn(n, 2, generator=generator)
    return (points - torch.tensor([0.5, 0.25])) * 1.6, labels


def _spiral(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved arms of an Archimedean spiral r ∝ θ, one and a half turns each; label = arm."""
    labels = (torch.rand(n, generator=generator) < 0.5).long()
    # √u spreads the points evenly along the arm (its length grows with r), starting off the centre.
    theta = 3 * math.pi * (0.08 + 0.92 * _uniform(n, generator).sqrt())
    radius = theta / (3 * math.pi) * 1.9
    theta = theta + math.pi * labels
    points = torch.stack([radius * torch.cos(theta), radius * torch.sin(theta)], dim=1)  # (n, 2)
    return points + SPIRAL_NOISE * torch.randn(n, 2, generator=generator), labels


def _gaussian_grid(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A GRID_SIDE x GRID_SIDE grid of equal Gaussians, spacing 1.2; label = component (row-major)."""
    labels = torch.randint(0, GRID_SIDE**2, (n,), generator=generator)
    return grid_centres()[labels] + GRID_STD * torch.randn(n, 2, generator=generator), labels


def grid_centres() -> torch.Tensor:
    """The means of the Gaussian grid's components, (GRID_SIDE², 2), in label order."""
    labels = torch.arange(GRID_SIDE**2)
    return (torch.stack([labels % GRID_SIDE, labels // GRID_SIDE], dim=1).float() - (GRID_SIDE - 1) / 2) * 1.2


def mask_density(path: str | os.PathLike) -> PointDistribution:
    """A picture as a density: a pixel's grey level (white = 1, black = 0) is its probability mass.

    The picture is read with `diffx.images.load_image` (a missing or unreadable file is one
    `InputImageError` line), fitted into the square ±MASK_EXTENT keeping its aspect ratio, with image row 0
    at the top; a point is a pixel drawn by mass, placed uniformly inside it. One class.
    """
    image = load_image(path)
    if max(image.size) > MAX_MASK_SIDE:
        scale = MAX_MASK_SIDE / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    levels = torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)  # (H, W) in [0, 1]
    if float(levels.sum()) == 0.0:
        raise InputImageError(f"mask {path} is black everywhere, so it has no density; paint the shape white")
    height, width = levels.shape
    pixel = 2 * MASK_EXTENT / max(height, width)  # the side of one pixel in data units
    weights = levels.reshape(-1)

    def draw(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.multinomial(weights, n, replacement=True, generator=generator)  # (n,) flat pixel ids
        jitter = torch.rand(n, 2, generator=generator)  # uniform inside the pixel
        column, row = (index % width).float() + jitter[:, 0], (index // width).float() + jitter[:, 1]
        points = torch.stack([(column - width / 2) * pixel, (height / 2 - row) * pixel], dim=1)
        return points, torch.zeros(n, dtype=torch.long)

    return PointDistribution(name=f"mask {Path(path).name}", class_names=("mask",), draw=draw)


def get_distribution(name: str) -> PointDistribution:
    """One of `DISTRIBUTIONS` by name, or a picture file (a name ending in .png/.jpg/...) as a density."""
    builtin = {
        "moons": PointDistribution("two moons", ("upper moon", "lower moon"), _two_moons),
        "spiral": PointDistribution("spiral", ("arm 1", "arm 2"), _spiral),
        "gaussians": PointDistribution(f"{GRID_SIDE}x{GRID_SIDE} Gaussians",
                                       tuple(f"component {k + 1}" for k in range(GRID_SIDE**2)), _gaussian_grid),
    }
    if name in builtin:
        return builtin[name]
    if Path(name).suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"):
        return mask_density(name)
    raise InvalidArgumentError(
        f"unknown data {name!r}; choose one of: {', '.join(DISTRIBUTIONS)}, or give a PNG mask file (white = dense)")
