"""The training scene pool rendered on every CPU core: the very file `pool.scene_pool` writes, sooner.

`scene_pool` renders the pool in one process the first time a training folder is used (about 18 ms per
128 px v2 scene: 30,000 scenes take ~9 minutes, longer than the GPU stage they feed). `render_pool` draws
the same scenes from the same generator, renders them in a process pool and writes `pool.POOL_FILE`, which
`scene_pool` then reads instead of rendering. Rendering is deterministic, so the file holds exactly the pictures
`scene_pool` would have written (a test checks the tensors; the bytes differ in the archive's internal name,
which torch.save takes from the temporary file the write goes through).

    python -m diffx.embedded.pool_render --out-dir runs/shapes-world-2 --world shapes2 --pool-size 20000
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch

from diffx.embedded.config import TrainConfig
from diffx.embedded.pool import POOL_FILE
from diffx.embedded.shapes import TRAIN_STREAM
from diffx.embedded.worlds import get_world
from diffx.files import write_atomic
from diffx.models.any_model import config_from_dict

POOL_STREAM_INDEX = 1_000_003  # the third entropy word of `pool.scene_pool`'s generator


def _render_chunk(world: str, size: int, scenes: list) -> np.ndarray:
    render = get_world(world).render
    return np.stack([render(scene, size) for scene in scenes])


def render_pool(config: TrainConfig, workers: int = 0) -> Path:
    """Write `config`'s scene pool (its `pool_scenes` pictures, (N, 3, H, W) uint8) to its training folder with
    `workers` processes (0: one per CPU), unless the file is there already. Returns its path."""
    path = Path(config.out_dir) / POOL_FILE
    if path.exists():
        return path
    world = get_world(config.world)
    rng = np.random.default_rng([TRAIN_STREAM, config.seed, POOL_STREAM_INDEX])
    scenes = [world.make_scene(rng) for _ in range(config.pool_scenes)]
    size = config_from_dict(config.model).image_size
    workers = workers or os.cpu_count() or 1
    chunk = max(1, -(-len(scenes) // (workers * 4)))
    chunks = [scenes[start:start + chunk] for start in range(0, len(scenes), chunk)]
    with ProcessPoolExecutor(max_workers=workers) as executor:
        pictures = np.concatenate(list(executor.map(partial(_render_chunk, config.world, size), chunks)))
    images = torch.from_numpy(pictures).permute(0, 3, 1, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save(images.contiguous(), tmp), force=True)
    return path


def main() -> None:
    """Command line: the pool of a `diffx train` run with these settings (the rest at their defaults)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", required=True, help="the training folder (diffx train --out-dir)")
    parser.add_argument("--world", default="shapes", help="shapes or shapes2 (diffx train --world)")
    parser.add_argument("--pool-size", type=int, default=TrainConfig.pool_size, help="diffx train --pool-size")
    parser.add_argument("--seed", type=int, default=0, help="diffx train --seed")
    parser.add_argument("--workers", type=int, default=0, help="processes (0: one per CPU)")
    args = parser.parse_args()
    config = TrainConfig(out_dir=args.out_dir, world=args.world, pool_size=args.pool_size, seed=args.seed)
    print(render_pool(config, args.workers))


if __name__ == "__main__":
    main()
