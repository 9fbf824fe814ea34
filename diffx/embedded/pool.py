"""The training pictures: the scene pool, rendered once and cached in the training folder, and their latents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffx.embedded.config import TrainConfig
from diffx.embedded.shapes import TRAIN_STREAM
from diffx.embedded.worlds import get_world
from diffx.errors import InvalidArgumentError
from diffx.files import write_atomic
from diffx.models.any_model import config_from_dict
from diffx.models.stable_diffusion import StableDiffusion

POOL_FILE = "pool.pt"  # (N, 3, H, W) uint8, in the training folder


def scene_pool(config: TrainConfig) -> tuple[list, torch.Tensor]:
    """The training scenes of `config.world` — `config.pool_scenes` of them — and their pictures (N, 3, H, W)
    uint8 at the model's image size, cached on disk.

    The scenes come from one seeded generator, so a pool of n scenes is the first n of any larger one: a
    resumed run that can draw more renders only the scenes the file lacks, one that draws fewer takes the
    file's first n (a file `pool_render` wrote may hold more)."""
    path = Path(config.out_dir) / POOL_FILE
    world = get_world(config.world)
    rng = np.random.default_rng([TRAIN_STREAM, config.seed, 1_000_003])
    scenes = [world.make_scene(rng) for _ in range(config.pool_scenes)]
    images = torch.load(path, weights_only=True) if path.exists() else None
    have = 0 if images is None else len(images)
    if have < len(scenes):
        size = config_from_dict(config.model).image_size
        fresh = torch.from_numpy(np.stack([world.render(scene, size) for scene in scenes[have:]])).permute(0, 3, 1, 2)
        images = fresh.contiguous() if images is None else torch.cat([images, fresh])
        write_atomic(path, lambda tmp: torch.save(images, tmp), force=True)
    return scenes, images[:len(scenes)]


@torch.no_grad()
def pool_latents(model: StableDiffusion, images: torch.Tensor, path: Path, write: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std (N, 4, h, w) of every pool picture, so the U-Net stage never runs the encoder
    again; cached in `path` (written when `write`: rank 0 of a data-parallel run). Only the pictures the cache
    lacks are encoded (a pool that grew since), and a cache longer than the pool is cut to it."""
    cached = torch.load(path, weights_only=True) if path.exists() else None
    have = 0 if cached is None else len(cached[0])
    if have >= len(images):
        return cached[0][:len(images)], cached[1][:len(images)]
    means, stds = ([cached[0]], [cached[1]]) if cached is not None else ([], [])
    for i in range(have, len(images), 512):
        posterior = model.vae.encode(to_unit(images[i:i + 512].to(model.device)))
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
    latents = torch.cat(means), torch.cat(stds)
    if write:
        write_atomic(path, lambda tmp: torch.save(latents, tmp), force=True)
    return latents


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
