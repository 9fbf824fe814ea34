"""The settings of one training run (`TrainConfig`, checked when made) and a stage's resumable state.

`TrainConfig` rejects every value training could not use, so the Python API fails at once with one line
(`InvalidArgumentError`) instead of deep inside a stage. `diffx train` holds no checks of its own: it parses
its options against the same ranges (`NUMBERS`) and builds its config with `TrainConfig.for_world`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from diffx.embedded.captions import EXACT_CAPTIONS, CaptionNoise
from diffx.embedded.flow_model import flow_model_config
from diffx.embedded.worlds import WORLDS, get_world
from diffx.errors import InvalidArgumentError, check_choice
from diffx.models.any_model import SD3_FAMILY, config_from_dict, config_to_dict
from diffx.models.configs import PREDICTION_TYPES
from diffx.models.sd3 import SD3Config

MAX_STEPS = 10_000_000
UNET_FAMILY = "stable-diffusion"
FAMILIES = (UNET_FAMILY, SD3_FAMILY)  # a U-Net on a diffusion schedule; an MMDiT with rectified flow


@dataclass(frozen=True)
class Allowed:
    """The numbers one setting may take: whole (`kind` int) or finite (`kind` float), from `low` (excluded when
    `above`) to `high` (excluded when `below`); `example` is one of them, as the fix an error message offers."""

    kind: type
    low: float
    high: float
    example: str
    above: bool = False
    below: bool = False

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if self.kind is int else int | float):
            return False
        # NaN fails every comparison; an int is finite (math.isfinite would overflow on a huge one)
        return ((value > self.low) if self.above else (value >= self.low)) \
            and ((value < self.high) if self.below else (value <= self.high)) \
            and (isinstance(value, int) or math.isfinite(value))

    def __str__(self) -> str:
        """E.g. "a whole number at least 1 and at most 65536", "a finite number above 0"."""
        word = "a whole number" if self.kind is int else "a finite number"
        bound = f"above {self.low}" if self.above else f"at least {self.low}"
        if math.isinf(self.high):
            return f"{word} {bound}"
        most = f"{self.high:g}" if self.kind is float else str(self.high)
        return f"{word} {bound} and {'below' if self.below else 'at most'} {most}"

    def refusal(self, label: str, got: object, example: str) -> str:
        """The one line refusing `got` for `label` (a field, or the `diffx train` option that sets it)."""
        return f"{label} must be {self}, got {got!r}; e.g. {example}"


# Every number field and the numbers training can use. `diffx train` parses its options against these too, so
# the CLI and the Python API refuse the same values. The upper limits lie far above any real run's, so only a
# slip (extra digits) meets them; the seed's is the largest whose seed + 1 (the U-Net stage's seed) is still a
# signed 64-bit integer.
NUMBERS: dict[str, Allowed] = {
    "seed": Allowed(int, 0, 2**63 - 2, "0"),
    "pool_size": Allowed(int, 1, 1_000_000, "30000"),
    "vae_steps": Allowed(int, 1, MAX_STEPS, "1100"),
    "vae_batch": Allowed(int, 1, 65536, "32"),
    "vae_crop": Allowed(int, 1, 8192, "32"),
    "unet_steps": Allowed(int, 1, MAX_STEPS, "5000"),
    "unet_batch": Allowed(int, 1, 65536, "64"),
    "warmup_steps": Allowed(int, 0, math.inf, "200"),
    "checkpoint_every": Allowed(int, 1, MAX_STEPS, "100"),
    "threads": Allowed(int, 0, 4096, "0"),
    "vae_lr": Allowed(float, 0, math.inf, "1e-3", above=True),
    "vae_kl_weight": Allowed(float, 0, math.inf, "1e-3"),
    "shape_pixel_weight": Allowed(float, 0, math.inf, "10", above=True),
    "unet_lr": Allowed(float, 0, 1, "5e-4", above=True),
    "caption_dropout": Allowed(float, 0, 1, "0.1"),
    "attention_loss": Allowed(float, 0, 1000, "0.01"),
    "ema_decay": Allowed(float, 0, 1, "0.999", below=True),
}


@dataclass
class TrainConfig:
    """Settings of one training run; saved next to the checkpoints and in the model card.

    Raises `InvalidArgumentError` naming the field for any value out of range (NaN and ±inf included).
    """

    out_dir: str = "runs/shapes-world"
    seed: int = 0
    pool_size: int = 30000  # the most scenes rendered once (`pool_scenes`); captions are re-drawn at every use
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
    threads: int = 0  # 0: leave the process's count (`diffx train` sets it from --threads, diffx.threads)
    device: str = "auto"  # "auto": CUDA (or MPS) when present, else CPU
    init_from: str | None = None  # a model folder to continue from (e.g. data/shapes-world-2), VAE kept as is
    world: str = "shapes"  # what the model learns from: diffx.embedded.worlds ("shapes" v1, "shapes2" v2)
    caption_noise: dict = field(default_factory=dict)  # CaptionNoise settings ("shapes2"); {} = the defaults
    # The share of U-Net training draws showing 1, 2, 3... objects ([] = as many as the pool holds): spends the
    # steps on the scenes not yet learnt without changing the world (pool.scene_weights)
    object_counts: list[float] = field(default_factory=list)
    # the model's configuration (`diffx.models.any_model`: an SD3-family one is marked "family": "sd3");
    # None = the world's U-Net model (`World.model_config`)
    model: dict | None = None

    def __post_init__(self) -> None:
        if self.model is None and isinstance(self.world, str) and self.world in WORLDS:
            self.model = get_world(self.world).model_config().to_dict()
        self.validate()

    @classmethod
    def for_world(cls, world: str = "shapes", prediction_type: str = "epsilon", zero_snr: bool = False,
                  exact_captions: bool = False, family: str = UNET_FAMILY, **settings: object) -> TrainConfig:
        """A run on `world` whose model learns to predict `prediction_type` ("epsilon" or "v_prediction"), with
        β rescaled to zero terminal SNR if `zero_snr` (Lin et al. 2023; it then samples with trailing spacing),
        on exact captions instead of the caption-noise model if `exact_captions`; `family` "sd3": the world's
        flow model instead (`diffx.embedded.flow_model`: an MMDiT trained with rectified flow, which predicts a
        velocity on no β schedule). `settings` are the other fields. What `diffx train` builds from its options,
        with the same one-line errors."""
        check_choice("family", family, FAMILIES)
        chosen = get_world(world)
        if exact_captions and not chosen.noisy_captions:
            raise InvalidArgumentError(f"--exact-captions: the {world!r} world's captions are exact already; "
                                       "use it with --world shapes2")
        model = chosen.model_config()
        if family == SD3_FAMILY:
            if prediction_type != "epsilon" or zero_snr:
                raise InvalidArgumentError("--prediction-type and --zero-snr choose a U-Net's target and schedule; "
                                           "a --family sd3 model learns the flow's velocity: leave them out")
            flow = flow_model_config(model)
        else:
            model.scheduler = model.scheduler.trained_for(prediction_type, zero_snr)
        return cls(world=world, caption_noise=EXACT_CAPTIONS.to_dict() if exact_captions else {},
                   model=config_to_dict(flow if family == SD3_FAMILY else model), **settings)

    @property
    def pool_scenes(self) -> int:
        """The scenes the pool holds: `pool_size`, or as many pictures as the run can draw if fewer — the VAE
        stage draws vae_steps × vae_batch, the U-Net stage unet_steps × unet_batch — so a toy run renders,
        encodes and stores what it can use (20 + 20 steps at the default batches: 1280 scenes, not 30000)."""
        return min(self.pool_size, max(self.vae_steps * self.vae_batch, self.unet_steps * self.unet_batch))

    def captions(self) -> CaptionNoise:
        """The caption-noise settings training draws captions with (the world's own for v1: exact)."""
        return CaptionNoise.from_dict(self.caption_noise)

    def validate(self) -> None:
        """Raise `InvalidArgumentError` for the first field training could not use (`train` checks again, as
        fields may have been changed since)."""
        for name, allowed in NUMBERS.items():
            value = getattr(self, name)
            if value not in allowed:
                raise InvalidArgumentError(allowed.refusal(name, value, f"{name}={allowed.example}"))
        defaults = {f.name: f.default for f in fields(self)}
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
        model = config_from_dict(self.model)
        if not isinstance(model, SD3Config) and model.scheduler.prediction_type not in PREDICTION_TYPES:
            raise InvalidArgumentError(f"prediction type {model.scheduler.prediction_type!r} is not one of: "
                                       f"{', '.join(PREDICTION_TYPES)}")
        if model.scheduler.rescale_betas_zero_snr and model.scheduler.prediction_type == "epsilon":
            # At t = T, ᾱ = 0: an ε-model's x̂0 = (x_t − √(1 − ᾱ) ε̂) / √ᾱ divides by 0 and its target ε = x_T is
            # the input.
            raise InvalidArgumentError("zero terminal SNR (--zero-snr) needs --prediction-type v_prediction: at "
                                       "t = T an ε-model's x̂0 divides by √ᾱ = 0")
        factor = model.vae.downsample_factor
        if self.vae_crop > model.image_size or self.vae_crop % factor:
            raise InvalidArgumentError(f"vae_crop must be a multiple of the VAE's factor {factor} and at most the "
                                       f"image size {model.image_size}, got {self.vae_crop}; e.g. 32")


@dataclass
class TrainState:
    """What a stage needs to resume: step, losses, and the generator states; and its two clocks, every sitting
    summed: `seconds` in the training steps alone, `wall_seconds` from the start of the stage's work (the
    VAE's: rendering the pool; the U-Net's: encoding it) to its last checkpoint, loss curves, preview
    pictures and checkpoints included."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    wall_seconds: float = 0.0
    hardware: str = ""
    grounding_losses: list[float] = field(default_factory=list)  # U-Net stage with attention_loss > 0
