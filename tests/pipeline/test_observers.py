"""The one observer API (diffx/pipeline/observers.py): `generate`, `invert` and `reconstruct` take the same
`observe` factory, each run is announced with an `ImageRun`, and callbacks chain in order."""

import numpy as np
import torch

from diffx.pipeline.generation import generate
from diffx.pipeline.inversion import invert, reconstruct
from diffx.pipeline.observers import ImageRun, Observer, chain_callbacks
from diffx.pipeline.settings import GenerationSettings
from tests.tiny import STEPS, tiny_settings


def test_chain_callbacks_calls_each_in_order_and_skips_none():
    heard = []
    chained = chain_callbacks(lambda r: heard.append(("a", r)), None, lambda r: heard.append(("b", r)))
    chained("record")
    assert heard == [("a", "record"), ("b", "record")]


def listener(runs: list, steps: list, guidance: list):
    def observe(run: ImageRun) -> Observer:
        runs.append(run)
        return Observer(on_step=steps.append, on_guidance=lambda u, c: guidance.append((u is None, c.shape)))
    return observe


def test_generate_announces_every_image_and_lets_it_be_heard(tiny_model):
    runs, steps, guidance = [], [], []
    result = generate(tiny_model, tiny_settings(guidance=3.0), prompts=["a red circle", "a blue square"],
                      seeds=[1, 2], observe=listener(runs, steps, guidance))
    assert [(run.index, run.settings.prompt, run.settings.seed, run.mode) for run in runs] == [
        (0, "a red circle", 1, "text2img"), (1, "a blue square", 2, "text2img")]
    assert runs[0].latent_shape == (1, 4, 16, 16) and len(steps) == 2 * STEPS
    assert all(not no_uncond for no_uncond, _ in guidance)  # w = 3: both branches are heard
    assert [s.seed for s in result.settings] == [1, 2]


def test_batched_and_one_at_a_time_give_the_same_pictures(tiny_model):
    settings = tiny_settings(guidance=3.0)
    prompts, seeds = ["a red circle", "a blue square", "a green star"], [4, 5, 6]
    batched = generate(tiny_model, settings, prompts=prompts, seeds=seeds, batch=3)
    for prompt, seed, picture in zip(prompts, seeds, batched.images, strict=True):
        alone = generate(tiny_model, GenerationSettings(**{**settings.__dict__, "prompt": prompt, "seed": seed}))
        assert np.abs(alone.images[0].astype(int) - picture.astype(int)).max() <= 1


def test_inversion_takes_the_same_factory(tiny_model):
    picture = generate(tiny_model, tiny_settings()).images[0]
    runs, steps, guidance = [], [], []
    observe = listener(runs, steps, guidance)
    inversion = invert(tiny_model, picture, "a red circle", steps=3, observe=observe)
    back = reconstruct(tiny_model, inversion, observe=observe)
    assert [run.mode for run in runs] == ["invert", "reconstruct"] and len(steps) == 6
    assert all(no_uncond for no_uncond, _ in guidance)  # w = 1: the unconditional branch never runs
    assert back.shape == inversion.latent.shape and torch.isfinite(back).all()
