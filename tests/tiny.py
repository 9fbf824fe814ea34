"""Settings for runs of the tiny random-weight model (the `tiny_model` fixture in conftest.py)."""

from diffx.pipeline.settings import GenerationSettings

STEPS = 3  # enough steps for every sampler to show a trajectory, few enough to stay fast


def tiny_settings(**changes) -> GenerationSettings:
    """A 32 px, STEPS-step generation of "a red circle", with `changes` applied."""
    return GenerationSettings(**{"prompt": "a red circle", "steps": STEPS, "height": 32, "width": 32, **changes})
