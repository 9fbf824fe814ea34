"""Settings resolved once (diffx/pipeline/settings.py): the model's defaults filled in, every value checked with
one clear line, the image-to-image strength from --t, the caller's object never changed."""

import math
from dataclasses import FrozenInstanceError, replace

import numpy as np
import pytest

from diffx.errors import InvalidArgumentError
from diffx.pipeline.generation import generate
from diffx.pipeline.settings import DEFAULT_STRENGTH, GenerationSettings, ResolvedSettings, resolve_settings
from diffx.sampling.schedules import strength_for_timestep

PROMPT = "a red cube on a blue floor"


@pytest.mark.parametrize("change, message", [
    ({"width": 30}, r"width 30 is not a positive multiple of 4; try 32"),
    ({"height": 51}, r"height 51 is not a positive multiple of 4; try 52"),
    ({"height": -8}, r"height -8 is not a positive multiple of 4"),
    ({"steps": 0}, "steps must be at least 1"),
    ({"steps": -3}, "steps must be at least 1"),
    ({"guidance": -1.0}, "guidance must be >= 0"),
    ({"strength": 1.5}, "strength must be between 0 and 1"),
    ({"sampler": "plms"}, "unknown sampler 'plms'; choose one of: ddpm, ddim, euler, euler_a, heun, dpmpp_2m"),
    ({"schedule": "sigmoid"}, "unknown schedule 'sigmoid'; choose one of: linear, scaled_linear"),
    ({"spacing": "uniform"}, "unknown spacing 'uniform'; choose one of: leading, trailing, linspace"),
])
def test_bad_settings_name_the_fix(tiny_model, change, message):
    model = tiny_model
    with pytest.raises(InvalidArgumentError, match=message):
        GenerationSettings(prompt=PROMPT, **change).resolved(model)


def test_defaults_come_from_the_model(tiny_model):
    model = tiny_model
    settings = GenerationSettings().resolved(model)
    assert (settings.height, settings.width, settings.steps, settings.sampler) == (64, 64, 10, "ddim")
    assert (settings.schedule, settings.spacing, settings.guidance) == ("scaled_linear", "leading", 7.5)


@pytest.mark.parametrize("field", ["guidance", "strength", "eta"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_settings_refuse_non_finite_numbers(tiny_model, field, value):
    model = tiny_model
    with pytest.raises(InvalidArgumentError, match=f"{field} must be a finite number"):
        GenerationSettings(steps=1, **{field: value}).resolved(model)


def test_resolving_never_changes_the_callers_settings(tiny_model):
    settings = GenerationSettings(prompt=PROMPT, timestep=600)
    before = replace(settings)
    resolved = resolve_settings(tiny_model, settings)
    assert settings == before and isinstance(resolved, ResolvedSettings)
    with pytest.raises(FrozenInstanceError):
        resolved.steps = 3  # type: ignore[misc]
    assert resolve_settings(tiny_model, resolved) == resolved  # resolving again changes nothing


def test_strength_from_a_timestep_or_the_default(tiny_model):
    assert resolve_settings(tiny_model, GenerationSettings(timestep=600)).strength == strength_for_timestep(600)
    assert resolve_settings(tiny_model, GenerationSettings(strength=0.3)).strength == 0.3
    assert resolve_settings(tiny_model, GenerationSettings()).strength == DEFAULT_STRENGTH
    with pytest.raises(InvalidArgumentError, match="--t and --strength"):
        resolve_settings(tiny_model, GenerationSettings(timestep=600, strength=0.5))
    with pytest.raises(InvalidArgumentError, match="timestep 1000 is out of range"):
        resolve_settings(tiny_model, GenerationSettings(timestep=1000))


def test_the_api_refuses_what_the_cli_refuses(tiny_model):
    """Image-to-image options without a picture, and a strength that would run no step (the input would come back
    unchanged), are refused by `generate` itself — not only by the CLI."""
    picture = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(InvalidArgumentError, match="apply to an input picture; pass --image"):
        generate(tiny_model, GenerationSettings(steps=2, height=32, width=32, strength=0.5))
    with pytest.raises(InvalidArgumentError, match="runs none of the 4 steps"):
        generate(tiny_model, GenerationSettings(steps=4, height=32, width=32, strength=0.1), init_image=picture)


def test_guided_is_guidance_not_one(tiny_model):
    assert not resolve_settings(tiny_model, GenerationSettings(guidance=1.0)).guided
    assert resolve_settings(tiny_model, GenerationSettings(guidance=0.0)).guided


def test_names_in_any_case(tiny_model):
    resolved = resolve_settings(tiny_model, GenerationSettings(sampler="DDIM", schedule="Cosine", spacing="TRAILING"))
    assert (resolved.sampler, resolved.schedule, resolved.spacing) == ("ddim", "cosine", "trailing")


def test_a_prompt_of_only_spaces_and_a_size_far_past_the_models(tiny_model):
    with pytest.raises(InvalidArgumentError, match="the prompt is only spaces"):
        resolve_settings(tiny_model, GenerationSettings(prompt="   "))
    assert resolve_settings(tiny_model, GenerationSettings(height=256)).height == 256  # 4x the tiny model's 64 px
    with pytest.raises(InvalidArgumentError, match="more than 4x this model's 64 px.*pick --size 256 or less"):
        resolve_settings(tiny_model, GenerationSettings(height=260))
