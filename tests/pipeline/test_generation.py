"""The pipeline against diffusers' Stable Diffusion pipelines: same weights, same seed → the same image.

diffusers' pipelines are assembled from random-weight components holding *our* weights, converted by
diffusers' own LDM converters (U-Net, VAE, CLIP), with a CLIPTokenizer on our vocabulary files and SD1.5's
scheduler config. Everything runs on the CPU in fp32; images are compared as floats in [0, 1].
"""

from dataclasses import asdict

import numpy as np
import pytest
import torch
import transformers
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
from PIL import Image

from diffx.errors import InputImageError, InvalidArgumentError
from diffx.models.configs import ModelConfig, sd15, tiny
from diffx.models.stable_diffusion import StableDiffusion, build
from diffx.pipeline.codec import decode_latents, encode_image
from diffx.pipeline.conditioning import PromptTruncatedWarning
from diffx.pipeline.generation import generate
from diffx.pipeline.settings import GenerationSettings
from diffx.sampling.grids import SAMPLERS, GridSpec, sampling_grid
from diffx.sampling.samplers import StepRecord, sample
from diffx.sampling.schedules import NoiseSchedule
from tests.models.ldm_configs import reference_unet, reference_vae
from tests.models.tokenizer_files import write_vocab_folder

# SD1.5's scheduler_config.json. It names no timestep spacing: diffusers then takes each scheduler class's
# own default ("linspace" for Euler and DPM-Solver), so the spacing is always given explicitly below.
SD15_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
                  "steps_offset": 1, "trained_betas": None, "clip_sample": False}
SCHEDULERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler,
              "heun": HeunDiscreteScheduler, "dpmpp_2m": DPMSolverMultistepScheduler}
TOLERANCE = 1 / 255
SIZE = 32  # pixels; tiny's f2 VAE → a 16x16 latent
PROMPT = "a red cube on a blue floor"


def random_model(config: ModelConfig, seed: int = 0) -> StableDiffusion:
    torch.manual_seed(seed)
    return build(config).eval()


def diffusers_pipeline(model: StableDiffusion, tokenizer_folder) -> StableDiffusionPipeline:
    """diffusers' text-to-image pipeline holding `model`'s weights (shared U-Net/VAE tensors, no copies)."""
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(**asdict(model.config.text_encoder)))
    converted = convert_ldm_clip_checkpoint(model.original_state_dict())
    # transformers 5 names the keys without the `text_model.` that the original checkpoints carry.
    text_encoder.load_state_dict({key.removeprefix("text_model."): value for key, value in converted.items()})
    pipe = StableDiffusionPipeline(
        vae=reference_vae(model.config, model.vae.state_dict()),
        text_encoder=text_encoder.eval(),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(tokenizer_folder, model_max_length=77),
        unet=reference_unet(model.config, model.unet.state_dict()),
        scheduler=DDIMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_diffusers(pipe: StableDiffusionPipeline, pipeline_class: type, sampler: str, seed: int,
                  spacing: str = "leading", **kwargs) -> np.ndarray:
    """One image (H, W, 3) float in [0, 1] from `pipeline_class` built on `pipe`'s components."""
    scheduler = SCHEDULERS[sampler].from_config(SD15_SCHEDULER, timestep_spacing=spacing)
    runner = pipeline_class(**{**pipe.components, "scheduler": scheduler})
    runner.set_progress_bar_config(disable=True)
    return runner(generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images[0]


def decoded_floats(model: StableDiffusion, latents: torch.Tensor) -> np.ndarray:
    """Our final latent decoded to (H, W, 3) floats in [0, 1], as diffusers' output_type="np"."""
    with torch.no_grad():
        image = model.vae.decode(latents[:1] / model.config.vae.scaling_factor)[0]
    return (image / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()


def assert_same_image(model: StableDiffusion, ours, theirs: np.ndarray) -> None:
    assert theirs.std() > 0.02  # a flat picture would hide a wrong trajectory
    diff = np.abs(decoded_floats(model, ours.latents) - theirs).max()
    assert diff <= TOLERANCE, f"max abs diff {diff:.3g} > 1/255"
    # The uint8 picture is the same floats, rounded.
    assert np.abs(ours.images[0] / 255.0 - theirs).max() <= TOLERANCE


def random_picture(seed: int, size: int = SIZE) -> Image.Image:
    rng = np.random.default_rng(seed)
    smooth = np.kron(rng.integers(0, 256, (size // 8, size // 8, 3)), np.ones((8, 8, 1)))  # 8x8 px blocks
    return Image.fromarray(smooth.astype(np.uint8))


def box_mask(size: int = SIZE) -> Image.Image:
    """Repaint the centre; one grey band of 128 (>= 0.5: repaint) and one of 100 (< 0.5: keep)."""
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
    mask[:2] = 128
    mask[-2:] = 100
    return Image.fromarray(mask)


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    return write_vocab_folder(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def tiny_pair(tokenizer_folder):
    model = random_model(tiny())
    return model, diffusers_pipeline(model, tokenizer_folder)


@pytest.fixture(scope="module")
def inpainting_pair(tokenizer_folder):
    config = tiny()
    config.unet.in_channels = 9  # as sd15_inpainting(): latent, mask, masked-image latent
    model = random_model(config, seed=1)
    return model, diffusers_pipeline(model, tokenizer_folder)


# ---------------------------------------------------------------------------------------------------
# Same seed, same image


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m", "euler_a"])
def test_text_to_image_matches_diffusers(tiny_pair, sampler):
    model, pipe = tiny_pair
    ours = generate(model, GenerationSettings(prompt=PROMPT, steps=4, guidance=7.5, sampler=sampler,
                                              height=SIZE, width=SIZE, seed=5))
    theirs = run_diffusers(pipe, StableDiffusionPipeline, sampler, 5, prompt=PROMPT, num_inference_steps=4,
                           guidance_scale=7.5, height=SIZE, width=SIZE)
    assert_same_image(model, ours, theirs)


def test_negative_prompt_and_linspace_spacing_match_diffusers(tiny_pair):
    model, pipe = tiny_pair
    settings = GenerationSettings(prompt=PROMPT, negative_prompt="blurry, green", steps=5, guidance=6.0,
                                  sampler="euler", spacing="linspace", height=SIZE, width=SIZE, seed=11)
    ours = generate(model, settings)
    theirs = run_diffusers(pipe, StableDiffusionPipeline, "euler", 11, spacing="linspace", prompt=PROMPT,
                           negative_prompt="blurry, green", num_inference_steps=5, guidance_scale=6.0,
                           height=SIZE, width=SIZE)
    assert_same_image(model, ours, theirs)
    without = generate(model, GenerationSettings(**{**settings.__dict__, "negative_prompt": ""}))
    assert np.abs(decoded_floats(model, without.latents) - theirs).max() > 3 * TOLERANCE  # it mattered


@pytest.mark.parametrize("sampler", ["ddim", "euler_a", "dpmpp_2m"])
def test_img2img_matches_diffusers(tiny_pair, sampler):
    model, pipe = tiny_pair
    picture = random_picture(0)
    ours = generate(model, GenerationSettings(prompt=PROMPT, steps=5, guidance=7.5, sampler=sampler, strength=0.6,
                                              height=SIZE, width=SIZE, seed=3), init_image=picture)
    theirs = run_diffusers(pipe, StableDiffusionImg2ImgPipeline, sampler, 3, prompt=PROMPT, image=picture,
                           strength=0.6, num_inference_steps=5, guidance_scale=7.5)
    assert_same_image(model, ours, theirs)


@pytest.mark.parametrize("sampler, strength", [("ddim", 1.0), ("euler_a", 1.0), ("dpmpp_2m", 0.6), ("heun", 1.0)])
def test_latent_blending_inpainting_matches_diffusers(tiny_pair, sampler, strength):
    """A 4-channel U-Net: the known region is blended back in after every model evaluation."""
    model, pipe = tiny_pair
    picture, mask = random_picture(1), box_mask()
    ours = generate(model, GenerationSettings(prompt=PROMPT, steps=4, guidance=7.5, sampler=sampler,
                                              strength=strength, height=SIZE, width=SIZE, seed=8),
                    init_image=picture, mask=mask)
    theirs = run_diffusers(pipe, StableDiffusionInpaintPipeline, sampler, 8, prompt=PROMPT, image=picture,
                           mask_image=mask, strength=strength, num_inference_steps=4, guidance_scale=7.5,
                           height=SIZE, width=SIZE)
    assert_same_image(model, ours, theirs)


@pytest.mark.parametrize("sampler, strength", [("ddim", 1.0), ("euler_a", 1.0), ("euler", 0.6)])
def test_nine_channel_inpainting_matches_diffusers(inpainting_pair, sampler, strength):
    """The inpainting U-Net sees the mask and the VAE latent of the image with the hole blanked."""
    model, pipe = inpainting_pair
    picture, mask = random_picture(2), box_mask()
    ours = generate(model, GenerationSettings(prompt=PROMPT, steps=4, guidance=7.5, sampler=sampler,
                                              strength=strength, height=SIZE, width=SIZE, seed=9),
                    init_image=picture, mask=mask)
    theirs = run_diffusers(pipe, StableDiffusionInpaintPipeline, sampler, 9, prompt=PROMPT, image=picture,
                           mask_image=mask, strength=strength, num_inference_steps=4, guidance_scale=7.5,
                           height=SIZE, width=SIZE)
    assert_same_image(model, ours, theirs)


@pytest.mark.slow
def test_sd15_size_matches_diffusers(tokenizer_folder):
    """SD1.5's real widths (random weights) at 64x64 px, an 8x8 latent."""
    model = random_model(sd15())
    pipe = diffusers_pipeline(model, tokenizer_folder)
    ours = generate(model, GenerationSettings(prompt=PROMPT, negative_prompt="blurry", steps=2, guidance=7.5,
                                              sampler="dpmpp_2m", height=64, width=64, seed=2))
    theirs = run_diffusers(pipe, StableDiffusionPipeline, "dpmpp_2m", 2, prompt=PROMPT, negative_prompt="blurry",
                           num_inference_steps=2, guidance_scale=7.5, height=64, width=64)
    assert_same_image(model, ours, theirs)


# ---------------------------------------------------------------------------------------------------
# Inpainting by latent blending: the sampler hook


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_next_sigma_is_the_sigma_of_the_next_state(sampler):
    records: list[StepRecord] = []
    grid = sampling_grid(GridSpec(sampler, 5), NoiseSchedule.create("scaled_linear"))
    sample(lambda x, t: 0.1 * x, torch.randn(1, 4, 4, 4), grid, generator=torch.Generator().manual_seed(0),
           callback=records.append)
    for record, following in zip(records, records[1:], strict=False):
        assert record.next_sigma == following.sigma
    # Every sampler ends at the clean latent except DDIM, which stops at t = 0 (ᾱ_0 < 1, SD's setting).
    expected_last = NoiseSchedule.create("scaled_linear").sigmas[0].item() if sampler == "ddim" else 0.0
    assert records[-1].next_sigma == pytest.approx(expected_last)


@pytest.mark.parametrize("sampler", ["ddim", "euler", "heun", "dpmpp_2m"])
def test_blending_keeps_the_known_region_of_the_input_latent(tiny_pair, sampler):
    model, _ = tiny_pair
    picture = random_picture(3)
    repaint = np.zeros((SIZE, SIZE), np.float32)
    repaint[:, SIZE // 2:] = 1.0  # repaint the right half
    settings = GenerationSettings(prompt=PROMPT, steps=4, sampler=sampler, height=SIZE, width=SIZE, seed=4)
    final = generate(model, settings, init_image=picture, mask=repaint).latents[0]
    input_latent = encode_image(model, picture, torch.Generator().manual_seed(4))[0]  # the same first draw
    half = final.shape[-1] // 2
    assert torch.equal(final[..., :half], input_latent[..., :half])
    assert (final[..., half:] - input_latent[..., half:]).abs().mean() > 0.1


def test_mask_levels_are_thresholded_at_one_half(tiny_pair):
    model, _ = tiny_pair
    picture = random_picture(4)
    settings = GenerationSettings(prompt=PROMPT, steps=3, height=SIZE, width=SIZE)
    levels = np.linspace(0, 1, SIZE, dtype=np.float32)[None].repeat(SIZE, 0)  # a left-to-right ramp
    binary = (levels >= 0.5).astype(np.float32)
    from_levels = generate(model, settings, init_image=picture, mask=levels).latents
    assert torch.equal(from_levels, generate(model, settings, init_image=picture, mask=binary).latents)
    as_uint8 = generate(model, settings, init_image=picture, mask=(binary * 255).astype(np.uint8)).latents
    assert torch.equal(from_levels, as_uint8)


# ---------------------------------------------------------------------------------------------------
# Bad input


def test_empty_prompt_is_allowed(tiny_pair):
    model, _ = tiny_pair
    result = generate(model, GenerationSettings(prompt="", steps=2, height=SIZE, width=SIZE))
    assert result.images[0].shape == (SIZE, SIZE, 3) and result.images[0].dtype == np.uint8


def test_long_prompt_warns_with_the_cut_words(tiny_pair):
    model, _ = tiny_pair
    prompt = " ".join(["cube"] * 75 + ["finally", "sphere"])
    with pytest.warns(PromptTruncatedWarning, match="finally sphere"):
        generate(model, GenerationSettings(prompt=prompt, steps=1, height=SIZE, width=SIZE))


def test_image_and_mask_sizes_must_match_the_output(tiny_pair):
    model, _ = tiny_pair
    settings = GenerationSettings(prompt=PROMPT, steps=1, height=SIZE, width=SIZE)
    with pytest.raises(InputImageError, match="48x32 but the output is 32x32"):
        generate(model, settings, init_image=np.zeros((32, 48, 3), np.uint8))
    with pytest.raises(InputImageError, match="the mask is 16x16"):
        generate(model, settings, init_image=random_picture(0), mask=np.zeros((16, 16)))
    with pytest.raises(InvalidArgumentError, match="a mask needs an image"):
        generate(model, settings, mask=np.zeros((SIZE, SIZE)))


def test_truncation_warning_of_a_huge_prompt_is_short(tiny_pair):
    from diffx.pipeline.conditioning import tokenize

    model, _ = tiny_pair
    with pytest.warns(PromptTruncatedWarning) as caught:
        tokenize(model, "red circle " * 1000)
    message = str(caught[0].message)
    assert len(message) < 250 and "characters)" in message


@pytest.mark.parametrize("force_upcast", [False, True])
def test_an_fp16_vae_with_force_upcast_decodes_in_fp32(force_upcast):
    """SDXL's VAE overflows in fp16, so (as diffusers' SDXL pipeline) it decodes in fp32 when the model is fp16,
    and goes back to fp16 afterwards; other VAEs decode in the model's dtype."""
    config = tiny()
    config.vae.force_upcast = force_upcast
    model = build(config).to(dtype=torch.float16)
    seen = []
    hook = model.vae.decoder.conv_in.register_forward_hook(lambda module, inputs, out: seen.append(inputs[0].dtype))
    pictures = decode_latents(model, torch.randn(1, 4, 8, 8))
    hook.remove()
    assert seen == [torch.float32 if force_upcast else torch.float16]
    assert pictures[0].dtype == np.uint8 and next(model.vae.parameters()).dtype == torch.float16
