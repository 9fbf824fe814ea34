"""The knobs of one generation, and their resolution: every setting is filled in and checked once, at the API's
entrance, into an immutable `ResolvedSettings` that everything below takes.

`GenerationSettings` is what a caller writes (any `None` = the model's default); `resolve_settings(model,
settings)` turns it into `ResolvedSettings` — the model's size, steps, guidance, sampler, schedule and spacing
filled in, every value checked (one clear line naming the option and the fix), the image-to-image strength
derived from `timestep` when that is given. The caller's object is never changed. `check_settings` runs the checks
that need no model alone, for a caller that has not loaded one yet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from diffx.errors import InvalidArgumentError, check_choice, check_finite
from diffx.pipeline.families import family_of
from diffx.pipeline.prompt_weights import parse_weights
from diffx.sampling.flow import FLOW_SAMPLERS, FLOW_SCHEDULE
from diffx.sampling.grids import KARRAS_SAMPLERS, SAMPLERS
from diffx.sampling.schedules import BETA_SCHEDULES, SPACINGS, strength_for_timestep

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

MAX_SIDE = 8192  # larger pictures would not fit in any memory
# A model draws sides up to this many times its training size; beyond, a U-Net repeats its objects across the
# canvas, and the run takes minutes without a word (the 128 px embedded model asked for 8192 px).
MAX_NATIVE_SCALE = 4
DEFAULT_STRENGTH = 0.8  # image-to-image without --strength or --t: diffusers' default


@dataclass
class GenerationSettings:
    """All the knobs of one generation (the model's defaults fill the `None`s).

    Image-to-image and inpainting noise the input picture either by `strength` (the fraction of the schedule to
    run, 0 to 1) or to `timestep` t (strength t / T); give at most one. Neither: strength 0.8.
    """

    prompt: str = ""
    # None: no negative prompt, which SDXL base answers with zeros for the unconditional branch; "" is encoded like
    # any text (diffusers' StableDiffusionXLPipeline: `negative_prompt is None and force_zeros_for_empty_prompt`).
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None
    sampler: str | None = None
    schedule: str | None = None  # β schedule: None = the one the model was trained with
    spacing: str | None = None
    karras: bool = False
    eta: float = 0.0
    seed: int = 0
    strength: float | None = None  # image-to-image and inpainting: how much of the schedule to run
    guidance_rescale: float = 0.0  # φ of `rescale_guidance`, 0 to 1
    timestep: int | None = None  # image-to-image: the timestep to noise the picture to (instead of strength)

    def resolved(self, model: StableDiffusion) -> ResolvedSettings:
        """`resolve_settings(model, self)`."""
        return resolve_settings(model, self)


@dataclass(frozen=True)
class ResolvedSettings:
    """One generation's settings with every default filled in from the model and every value checked.

    Immutable: a variant is `dataclasses.replace(settings, seed=…)`, which `resolve_settings` checks again when
    given to the API. `guided` says whether the unconditional branch of classifier-free guidance runs (w ≠ 1).
    """

    prompt: str
    negative_prompt: str | None  # None: none given (see `GenerationSettings`)
    height: int
    width: int
    steps: int
    guidance: float
    sampler: str
    schedule: str
    spacing: str
    karras: bool
    eta: float
    seed: int
    strength: float
    guidance_rescale: float

    @property
    def guided(self) -> bool:
        """Guidance 1 is ε_c alone: the unconditional branch is skipped (ε_u + 1·(ε_c − ε_u) = ε_c)."""
        return self.guidance != 1.0

    def resolved(self, model: StableDiffusion) -> ResolvedSettings:
        """`resolve_settings(model, self)`: checked again (e.g. after `dataclasses.replace`)."""
        return resolve_settings(model, self)

    def as_dict(self) -> dict:
        """The fields by name, as a trace file records them."""
        return asdict(self)


def size_multiple(model: StableDiffusion) -> int:
    """Image sides must be multiples of this (the model family's: for a U-Net, VAE factor × its downsampling)."""
    return family_of(model).size_multiple(model)


def check_side(model: StableDiffusion, name: str, value: int) -> int:
    """`value` (the picture's `name`, width or height) if `model` can draw it: at most MAX_SIDE pixels and
    MAX_NATIVE_SCALE times the model's training size."""
    size = model.config.image_size
    if value > MAX_SIDE:
        raise InvalidArgumentError(f"{name} {value} is more than {MAX_SIDE} pixels; pick a smaller --size")
    if value > MAX_NATIVE_SCALE * size:
        raise InvalidArgumentError(
            f"{name} {value} is more than {MAX_NATIVE_SCALE}x this model's {size} px (it would run for long and "
            f"draw repeats); pick --size {MAX_NATIVE_SCALE * size} or less")
    return value


def _or_default(value: str | int | None, default: str | int) -> str | int:
    return default if value is None else value


def check_seed(seed: int) -> int:
    """`seed` if torch's generators take it (0 to 2**63 - 1), else an error naming --seed."""
    if not 0 <= seed < 2**63:
        raise InvalidArgumentError(f"seed must be between 0 and 2**63 - 1, got {seed}; give e.g. --seed 0")
    return seed


def _strength(settings: GenerationSettings | ResolvedSettings, num_train_timesteps: int) -> float:
    timestep = getattr(settings, "timestep", None)
    if timestep is not None and settings.strength is not None:
        raise InvalidArgumentError("--t and --strength (timestep and strength) both set how far to noise the image; "
                                   "give one of them")
    if timestep is not None:
        return strength_for_timestep(timestep, num_train_timesteps)
    return DEFAULT_STRENGTH if settings.strength is None else settings.strength


def check_prompt(text: str, name: str = "prompt", empty: str = "an empty prompt for an unconditional sample") -> str:
    """`text` unless it is only spaces or its word weights do not parse (`empty`: what to give for no words)."""
    if text and not text.strip():
        raise InvalidArgumentError(f"the {name} is only spaces; give words, or {empty}")
    parse_weights(text, name)
    return text


def check_settings(settings: GenerationSettings | ResolvedSettings) -> None:
    """The checks that need no model, of the values `settings` gives (a None, the model's default, is checked by
    `resolve_settings`, which runs these too): names, finite numbers and their ranges, the prompts. A caller runs
    them before loading a model, so that a bad value costs no load."""
    for name, valid in (("sampler", SAMPLERS), ("schedule", (*BETA_SCHEDULES, FLOW_SCHEDULE)), ("spacing", SPACINGS)):
        if getattr(settings, name) is not None:
            check_choice(name, getattr(settings, name).lower(), valid)  # names in any case: "DDIM" is ddim
    numbers = {name: getattr(settings, name) for name in ("guidance", "strength", "eta", "guidance_rescale")}
    for name, value in numbers.items():
        if value is not None:
            check_finite(name, value)
    if settings.steps is not None and settings.steps < 1:
        raise InvalidArgumentError(f"steps must be at least 1, got {settings.steps}")
    check_seed(settings.seed)
    if numbers["guidance"] is not None and numbers["guidance"] < 0:
        raise InvalidArgumentError(f"guidance must be >= 0 (1 = no guidance), got {numbers['guidance']}")
    for name in ("strength", "guidance_rescale"):
        if numbers[name] is not None and not 0.0 <= numbers[name] <= 1.0:
            raise InvalidArgumentError(f"{name} must be between 0 and 1, got {numbers[name]}")
    check_prompt(settings.prompt)
    if settings.negative_prompt is not None:  # None: no negative prompt
        check_prompt(settings.negative_prompt, "negative prompt", "leave it out (plain guidance)")


def _check_flow(flow_model: bool, settings: ResolvedSettings) -> None:
    """A rectified-flow model (SD3) runs on the flow schedule with a flow sampler, and nothing else does."""
    if flow_model and settings.schedule != FLOW_SCHEDULE:
        raise InvalidArgumentError(f"a rectified-flow model samples on the flow schedule, not {settings.schedule}; "
                                   "leave --schedule out")
    if not flow_model and settings.schedule == FLOW_SCHEDULE:
        raise InvalidArgumentError("the flow schedule is for rectified-flow models (SD3); leave --schedule out")
    if flow_model and settings.sampler not in FLOW_SAMPLERS:
        raise InvalidArgumentError(f"a rectified-flow model samples with {', '.join(FLOW_SAMPLERS)}, not "
                                   f"{settings.sampler}; pass --sampler euler")
    if flow_model and settings.eta:
        raise InvalidArgumentError(f"--eta {settings.eta:g} adds DDIM's noise, which a rectified-flow run has no "
                                   "place for (its DDIM step is flow Euler's); leave --eta at 0")
    if flow_model and settings.karras:
        raise InvalidArgumentError("Karras sigmas (--karras) are for diffusion schedules; a rectified-flow model "
                                   "spaces its steps by its time shift: drop --karras")


def resolve_settings(model: StableDiffusion, settings: GenerationSettings | ResolvedSettings) -> ResolvedSettings:
    """`settings` with every default filled in from `model` and every value checked (see the module docstring)."""
    config = model.config
    size = config.image_size
    scheduler = config.scheduler
    resolved = ResolvedSettings(
        prompt=settings.prompt, negative_prompt=settings.negative_prompt,
        height=_or_default(settings.height, size), width=_or_default(settings.width, size),
        steps=config.default_steps if settings.steps is None else settings.steps,
        guidance=config.default_guidance if settings.guidance is None else settings.guidance,
        # Names in any case: "DDIM" is ddim. An empty name is not the default: check_settings refuses it.
        sampler=_or_default(settings.sampler, config.default_sampler).lower(),
        schedule=_or_default(settings.schedule, scheduler.beta_schedule).lower(),
        spacing=_or_default(settings.spacing, scheduler.timestep_spacing).lower(),
        karras=settings.karras, eta=settings.eta, seed=settings.seed,
        strength=_strength(settings, scheduler.num_train_timesteps), guidance_rescale=settings.guidance_rescale)
    check_settings(resolved)
    _check_flow(scheduler.beta_schedule == FLOW_SCHEDULE, resolved)
    if resolved.karras and resolved.sampler not in KARRAS_SAMPLERS:
        raise InvalidArgumentError(f"Karras sigmas (--karras) apply to {', '.join(KARRAS_SAMPLERS)}, "
                                   f"not {resolved.sampler}; drop --karras or pick one of those samplers")
    if resolved.steps > scheduler.num_train_timesteps:
        raise InvalidArgumentError(f"steps {resolved.steps} is more than the "
                                   f"{scheduler.num_train_timesteps} training timesteps; pick fewer")
    multiple = size_multiple(model)
    for name, value in (("height", resolved.height), ("width", resolved.width)):
        check_side(model, name, value)
        if value <= 0 or value % multiple:
            raise InvalidArgumentError(
                f"{name} {value} is not a positive multiple of {multiple}; "
                f"try {max(multiple, round(value / multiple) * multiple)}")
    return resolved
