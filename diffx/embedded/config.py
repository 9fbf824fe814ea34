"""The settings of one training run (`TrainConfig`, checked when made) and a stage's resumable state.

`TrainConfig` rejects every value training could not use, as `diffx train` does, so the Python API
fails at once with one line (`InvalidArgumentError`) instead of deep inside a stage.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from diffx.embedded.captions import CaptionNoise
from diffx.embedded.worlds import WORLDS, get_world
from diffx.errors import InvalidArgumentError
from diffx.models.configs import PREDICTION_TYPES, ModelConfig

POSITIVE, NOT_NEGATIVE = (lambda v: v > 0, "above 0"), (lambda v: v >= 0, "at least 0")
# Every number field: (the values training can use, those values in words).
_INTS: dict[str, tuple[Callable[[int], bool], str]] = {
    "seed": NOT_NEGATIVE, "pool_size": POSITIVE, "vae_steps": POSITIVE, "vae_batch": POSITIVE,
    "vae_crop": POSITIVE, "unet_steps": POSITIVE, "unet_batch": POSITIVE, "warmup_steps": NOT_NEGATIVE,
    "checkpoint_every": POSITIVE, "threads": NOT_NEGATIVE,
}
_FLOATS: dict[str, tuple[Callable[[float], bool], str]] = {
    "vae_lr": POSITIVE, "vae_kl_weight": NOT_NEGATIVE, "shape_pixel_weight": POSITIVE, "unet_lr": POSITIVE,
    "caption_dropout": (lambda v: 0 <= v <= 1, "between 0 and 1"), "attention_loss": NOT_NEGATIVE,
    "ema_decay": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
}


@dataclass
class TrainConfig:
    """Settings of one training run; saved next to the checkpoints and in the model card.

    Raises `InvalidArgumentError` naming the field for any value out of range (NaN and ±inf included).
    """

    out_dir: str = "runs/shapes-world"
    seed: int = 0
    pool_size: int = 30000  # scenes rendered once; captions are re-drawn every time a scene is used
    vae_steps: int = 3000
    vae_batch: int = 32
    vae_crop: int = 32  # the VAE is convolutional: training on crops is 4x cheaper and sees the same edges
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-3
    shape_pixel_weight: float = 10.0  # object pixels count this much more than background in the VAE loss
    unet_steps: int = 5000
    unet_batch: int = 64
    unet_lr: float = 5e-4
    warmup_steps: int = 200
    caption_dropout: float = 0.1
    attention_loss: float = 0.0  # weight of the attention-grounding loss (diffx.embedded.grounding); 0 = plain SD
    ema_decay: float = 0.999
    checkpoint_every: int = 100
    threads: int = 0  # 0: leave torch's default
    device: str = "auto"  # "auto": CUDA (or MPS) when present, else CPU
    init_from: str | None = None  # a model folder to continue from (e.g. data/shapes-world-2), VAE kept as is
    world: str = "shapes"  # what the model learns from: diffx.embedded.worlds ("shapes" v1, "shapes2" v2)
    caption_noise: dict = field(default_factory=dict)  # CaptionNoise settings ("shapes2"); {} = the defaults
    # The share of U-Net training draws showing 1, 2, 3... objects ([] = as many as the pool holds): spends the
    # steps on the scenes not yet learnt without changing the world (pool.scene_weights)
    object_counts: list[float] = field(default_factory=list)
    model: dict | None = None  # the model's configuration; None = the world's (`World.model_config`)

    def __post_init__(self) -> None:
        if self.model is None and isinstance(self.world, str) and self.world in WORLDS:
            self.model = get_world(self.world).model_config().to_dict()
        self.validate()

    def captions(self) -> CaptionNoise:
        """The caption-noise settings training draws captions with (the world's own for v1: exact)."""
        return CaptionNoise.from_dict(self.caption_noise)

    def validate(self) -> None:
        """Raise `InvalidArgumentError` for the first field training could not use (`train` checks again, as
        fields may have been changed since)."""
        defaults = {f.name: f.default for f in fields(self)}
        for name, (ok, allowed) in _INTS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not ok(value):
                raise InvalidArgumentError(f"{name} must be a whole number {allowed}, got {value!r}; "
                                           f"e.g. {defaults[name]}")
        for name, (ok, allowed) in _FLOATS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or not ok(value):
                raise InvalidArgumentError(f"{name} must be a finite number {allowed}, got {value!r}; "
                                           f"e.g. {defaults[name]}")
        for name in ("out_dir", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise InvalidArgumentError(f"{name} must be a non-empty string, got {getattr(self, name)!r}; "
                                           f"e.g. {defaults[name]!r}")
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from):
            raise InvalidArgumentError(f"init_from must be a model folder or None, got {self.init_from!r}")
        world = get_world(self.world)
        if not isinstance(self.caption_noise, dict):
            raise InvalidArgumentError(f"caption_noise must be a dict of rates, got {self.caption_noise!r}")
        self.captions()  # each rate a probability
        if self.caption_noise and not world.noisy_captions:
            raise InvalidArgumentError(f"the {world.name!r} world has no caption-noise model; leave caption_noise "
                                       "empty or train on the 'shapes2' world")
        if not isinstance(self.object_counts, list | tuple) or any(
                isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0
                for v in self.object_counts) or (self.object_counts and sum(self.object_counts) <= 0):
            raise InvalidArgumentError(f"object_counts must be a list of finite shares at least 0 (one per object "
                                       f"count, 1 first) with a positive sum, got {self.object_counts!r}; "
                                       "e.g. [0.2, 0.4, 0.4]")
        if any(self.object_counts[world.max_objects:]):
            raise InvalidArgumentError(f"object_counts {self.object_counts!r} gives a share to scenes of more than "
                                       f"{world.max_objects} objects, the most the {world.name!r} world draws")
        model = ModelConfig.from_dict(self.model)
        if model.scheduler.prediction_type not in PREDICTION_TYPES:
            raise InvalidArgumentError(f"prediction type {model.scheduler.prediction_type!r} is not one of: "
                                       f"{', '.join(PREDICTION_TYPES)}")
        factor = model.vae.downsample_factor
        if self.vae_crop > model.image_size or self.vae_crop % factor:
            raise InvalidArgumentError(f"vae_crop must be a multiple of the VAE's factor {factor} and at most the "
                                       f"image size {model.image_size}, got {self.vae_crop}; e.g. 32")


@dataclass
class TrainState:
    """What a stage needs to resume: step, losses, and the generator states."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    hardware: str = ""
    grounding_losses: list[float] = field(default_factory=list)  # U-Net stage with attention_loss > 0
