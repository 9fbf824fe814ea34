"""SD3 end to end against diffusers' StableDiffusion3Pipeline: a random-weight SD3 folder (tests/pipeline/sd3_models.py:
real widths, reduced depth) loaded by diffx, and the same prompt and seed through both pipelines — with and without
T5, with and without a negative prompt, Euler and Heun — within 1/255 of each other."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FlowMatchHeunDiscreteScheduler, StableDiffusion3Img2ImgPipeline
from PIL import Image

from diffx.models.sd3 import StableDiffusion3
from diffx.pipeline.generation import generate
from diffx.pipeline.settings import GenerationSettings
from diffx.weights.load import load_model
from tests.pipeline.sd3_models import REAL, TINY, sd3_pipeline

PROMPT, SIZE, STEPS = "a red cube on a blue floor", 64, 4
TOLERANCE = 1 / 255


@pytest.fixture(scope="module")
def sd3(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("sd3") / "sd3-random"
    pipeline = sd3_pipeline(folder)
    return folder, pipeline, load_model(folder)


def decoded(model: StableDiffusion3, latents: torch.Tensor) -> np.ndarray:
    """diffx's final latent decoded to (H, W, 3) floats in [0, 1], as diffusers' output_type="np"."""
    vae = model.config.vae
    with torch.no_grad():
        image = model.vae.decode(latents[:1] / vae.scaling_factor + vae.shift_factor)[0]
    return (image / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()


def run_both(model: StableDiffusion3, pipeline, **settings) -> tuple[np.ndarray, np.ndarray]:
    ours = generate(model, GenerationSettings(prompt=PROMPT, height=SIZE, width=SIZE, steps=STEPS, seed=0,
                                              **settings))
    theirs = pipeline(PROMPT, negative_prompt=settings.get("negative_prompt"), height=SIZE, width=SIZE,
                      num_inference_steps=STEPS, guidance_scale=settings.get("guidance", 7.0),
                      generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert theirs.std() > 0.02  # a flat picture would hide a wrong trajectory
    assert np.abs(ours.images[0] / 255.0 - theirs).max() <= TOLERANCE + 1e-6  # the uint8 picture, rounded
    return decoded(model, ours.latents), theirs


def test_load_reads_the_folder_as_sd3(sd3) -> None:
    folder, pipeline, model = sd3
    assert isinstance(model, StableDiffusion3) and model.family == "sd3"
    assert model.config.mmdit.depth == 2 and model.config.t5 is not None and model.config.scheduler.shift == 3.0
    assert model.config.vae.shift_factor == pytest.approx(0.0609)
    ours = sum(p.numel() for p in model.transformer.parameters())
    assert ours == sum(p.numel() for p in pipeline.transformer.parameters())


@pytest.mark.parametrize("settings", [{"guidance": 7.0}, {"guidance": 4.5, "negative_prompt": "blurry"},
                                      {"guidance": 1.0}], ids=["cfg", "negative", "unguided"])
def test_text_to_image_equals_diffusers(sd3, settings: dict) -> None:
    _, pipeline, model = sd3
    ours, theirs = run_both(model, pipeline, **settings)
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_heun_equals_diffusers_heun(sd3) -> None:
    _, pipeline, model = sd3
    euler = pipeline.scheduler
    pipeline.scheduler = FlowMatchHeunDiscreteScheduler.from_config(euler.config)
    try:
        ours, theirs = run_both(model, pipeline, sampler="heun")
    finally:
        pipeline.scheduler = euler
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_image_to_image_equals_diffusers_img2img(sd3) -> None:
    """SDEdit on the flow: the picture encoded (its latent centred and scaled), noised to the grid's first σ kept
    by `strength`, x_s = (1 − s) x̂0 + s ε, and sampled from there — against `StableDiffusion3Img2ImgPipeline`."""
    _, pipeline, model = sd3
    picture = Image.fromarray((np.random.default_rng(0).random((SIZE, SIZE, 3)) * 255).astype(np.uint8))
    ours = generate(model, GenerationSettings(prompt=PROMPT, height=SIZE, width=SIZE, steps=STEPS, seed=0,
                                              strength=0.6), init_image=picture)
    theirs = StableDiffusion3Img2ImgPipeline(**pipeline.components)(
        PROMPT, image=picture, height=SIZE, width=SIZE, strength=0.6, num_inference_steps=STEPS, guidance_scale=7.0,
        generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert theirs.std() > 0.02
    assert np.abs(ours.images[0] / 255.0 - theirs).max() <= TOLERANCE + 1e-6  # the uint8 picture, rounded


def test_without_t5_equals_diffusers_without_t5(sd3, tmp_path: Path) -> None:
    """A folder saved without text_encoder_3 / tokenizer_3: 256 zero rows stand for T5's part, as in diffusers."""
    folder, pipeline, _ = sd3
    for name in os.listdir(folder):
        if name not in ("text_encoder_3", "tokenizer_3"):
            (tmp_path / name).symlink_to(folder / name)
    model = load_model(tmp_path)
    assert model.config.t5 is None and model.t5_tokenizer is None
    t5, tokenizer = pipeline.text_encoder_3, pipeline.tokenizer_3
    pipeline.text_encoder_3 = pipeline.tokenizer_3 = None
    try:
        ours, theirs = run_both(model, pipeline)
    finally:
        pipeline.text_encoder_3, pipeline.tokenizer_3 = t5, tokenizer
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_sd35_medium_shape_equals_diffusers(tmp_path: Path) -> None:
    """SD3.5-medium's MMDiT-X at its width (1536, 24 heads of 64; 2 blocks): RMS QK-norm and the image stream's
    second attention in block 0. The encoders and the VAE are the tiny ones (their real widths are the other
    tests'), so this test costs the transformer only."""
    sizes = {**TINY, "sample": REAL["sample"], "heads": REAL["heads"], "head_dim": REAL["head_dim"]}
    pipeline = sd3_pipeline(tmp_path / "sd35", t5=False, qk_norm="rms_norm", dual_attention_layers=(0,), sizes=sizes)
    model = load_model(tmp_path / "sd35")
    assert model.config.mmdit.qk_norm and model.config.mmdit.dual_attention_layers == (0,)
    ours, theirs = run_both(model, pipeline, guidance=4.5)
    assert np.abs(ours - theirs).max() <= TOLERANCE
