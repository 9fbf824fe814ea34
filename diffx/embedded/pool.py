"""The training pictures: the scene pool, rendered once and cached in the training folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffx.embedded.config import TrainConfig
from diffx.embedded.shapes import TRAIN_STREAM
from diffx.embedded.worlds import get_world
from diffx.errors import InvalidArgumentError
from diffx.files import write_atomic
from diffx.models.configs import ModelConfig

POOL_FILE = "pool.pt"  # (N, 3, H, W) uint8, in the training folder


def scene_pool(config: TrainConfig) -> tuple[list, torch.Tensor]:
    """The training scenes of `config.world` and their pictures (N, 3, H, W) uint8 at the model's image
    size, cached on disk after the first call."""
    path = Path(config.out_dir) / POOL_FILE
    world = get_world(config.world)
    rng = np.random.default_rng([TRAIN_STREAM, config.seed, 1_000_003])
    scenes = [world.make_scene(rng) for _ in range(config.pool_size)]
    if path.exists():
        return scenes, torch.load(path, weights_only=True)
    size = ModelConfig.from_dict(config.model).image_size
    images = torch.from_numpy(np.stack([world.render(scene, size) for scene in scenes])).permute(0, 3, 1, 2)
    write_atomic(path, lambda tmp: torch.save(images.contiguous(), tmp), force=True)
    return scenes, images


def scene_weights(scenes: list, shares: list[float]) -> torch.Tensor | None:
    """(N,) sampling weights under which a draw from the pool shows n objects with probability
    shares[n - 1] / sum(shares): each scene's share divided by how many pool scenes have its count.
    None for no shares (uniform draws, as `torch.randint`); a scene with more objects than there are shares is
    never drawn. A share above 0 for a count the pool lacks is an error, as nothing could fill it."""
    if not shares:
        return None
    counts = torch.tensor([len(scene.objects) for scene in scenes])
    weights = torch.zeros(len(scenes), dtype=torch.float64)
    for n, share in enumerate(shares, start=1):
        have = counts == n
        if share > 0 and not have.any():
            raise InvalidArgumentError(f"object_counts gives {n}-object scenes a share of {share}, but the pool "
                                       f"holds none; give 0 there (its scenes hold {int(counts.min())}-"
                                       f"{int(counts.max())} objects)")
        weights[have] = share / max(int(have.sum()), 1)
    return weights / weights.sum()


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0
