"""Scenes of the v1 shapes world for tests: an indexable dataset whose item i is always the same, and a fresh
batch from a seed or a live generator. Training draws its pictures from the pool (`diffx.embedded.pool`);
these exercise the scene, caption and rendering functions in the ways a data loader would."""

import numpy as np
import torch

from diffx.embedded.shapes import TRAIN_STREAM, Scene, _scene_rng, caption, make_scene, render, to_tensor
from diffx.errors import InvalidArgumentError


class ShapesDataset(torch.utils.data.Dataset):
    """`num` training examples; item i is always the same (image (3, H, W) in [-1, 1], caption)."""

    def __init__(self, num: int, seed: int = 0, size: int = 64):
        if num < 1:
            raise InvalidArgumentError(f"dataset size {num} must be at least 1")
        self.num, self.seed, self.size = num, seed, size

    def __len__(self) -> int:
        return self.num

    def example(self, index: int) -> tuple[Scene, str]:
        """The scene and caption of item `index`, without rendering."""
        if not 0 <= index < self.num:
            raise IndexError(f"index {index} out of range for {self.num} examples")
        rng = _scene_rng(TRAIN_STREAM, self.seed, index)
        scene = make_scene(rng)
        return scene, caption(scene, rng)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        scene, text = self.example(index)
        return to_tensor(render(scene, self.size)), text


def sample_batch(batch_size: int, generator: np.random.Generator | int = 0,
                 size: int = 64) -> tuple[torch.Tensor, list[str], list[Scene]]:
    """A fresh batch: images (B, 3, size, size) in [-1, 1], captions, scenes.

    Pass one long-lived `np.random.Generator` to stream new batches; an int seed draws from the
    training stream.
    """
    rng = generator if isinstance(generator, np.random.Generator) else _scene_rng(TRAIN_STREAM, generator)
    scenes = [make_scene(rng) for _ in range(batch_size)]
    captions = [caption(scene, rng) for scene in scenes]
    images = torch.stack([to_tensor(render(scene, size)) for scene in scenes])  # (B, 3, size, size)
    return images, captions, scenes
