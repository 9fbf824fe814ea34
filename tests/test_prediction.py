"""What the model predicts (ε or v), zero-terminal-SNR schedules and guidance rescale, against diffusers.

A tiny random-weight model told it is a v-prediction model samples through diffx's denoiser (v̂ → ε̂) and
through diffusers' pipeline with the v-prediction scheduler config, same weights and seed: the images
agree to 1/255. The maths pieces are compared with diffusers' own functions.
"""

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_zero_snr

from diffx.errors import InvalidArgumentError
from diffx.models.configs import SchedulerConfig, tiny
from diffx.pipeline.denoiser import rescale_guidance
from diffx.pipeline.generation import generate
from diffx.pipeline.settings import GenerationSettings
from diffx.sampling.schedules import (
    ZERO_SNR_ALPHA_CUMPROD,
    NoiseSchedule,
    eps_from_prediction,
    q_sample,
    rescale_zero_terminal_snr,
    sigma_to_t,
    training_loss,
    v_from_eps,
    velocity,
    vp_scales,
    x0_from_eps,
)
from tests.pipeline.test_generation import (
    PROMPT,
    SD15_SCHEDULER,
    SIZE,
    assert_same_image,
    box_mask,
    diffusers_pipeline,
    random_model,
    random_picture,
    tokenizer_folder,  # noqa: F401 (a fixture)
)

V_SCHEDULER = {**SD15_SCHEDULER, "prediction_type": "v_prediction"}
SCHEDULERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}


def v_config(in_channels: int = 4):
    config = tiny()
    config.scheduler.prediction_type = "v_prediction"
    config.unet.in_channels = in_channels
    return config


@pytest.fixture(scope="module")
def v_pair(tokenizer_folder):  # noqa: F811
    model = random_model(v_config(), seed=3)
    return model, diffusers_pipeline(model, tokenizer_folder)


def run_v_diffusers(pipe, pipeline_class, sampler: str, seed: int, karras: bool = False, output_type: str = "np",
                    **kwargs) -> np.ndarray | torch.Tensor:
    """diffusers' image (H, W, 3) in [0, 1] (or its final latent) with the v-prediction scheduler config."""
    extra = {"use_karras_sigmas": True} if karras else {}
    scheduler = SCHEDULERS[sampler].from_config(V_SCHEDULER, timestep_spacing="leading", **extra)
    runner = pipeline_class(**{**pipe.components, "scheduler": scheduler})
    runner.set_progress_bar_config(disable=True)
    return runner(generator=torch.Generator().manual_seed(seed), output_type=output_type, **kwargs).images[0]


# ---------------------------------------------------------------------------------------------------
# v-prediction end to end


@pytest.mark.parametrize("sampler, karras, rescale", [("ddim", False, 0.0), ("euler", False, 0.7),
                                                      ("euler", True, 0.0)])
def test_v_prediction_text_to_image_matches_diffusers(v_pair, sampler, karras, rescale):
    """Karras σs give fractional timesteps: α, σ come from log σ interpolated as diffusers' σ grid."""
    model, pipe = v_pair
    ours = generate(model, GenerationSettings(prompt=PROMPT, steps=4, guidance=7.5, sampler=sampler, karras=karras,
                                              guidance_rescale=rescale, height=SIZE, width=SIZE, seed=5))
    options = dict(karras=karras, prompt=PROMPT, num_inference_steps=4, guidance_scale=7.5,
                   guidance_rescale=rescale, height=SIZE, width=SIZE)
    theirs = run_v_diffusers(pipe, StableDiffusionPipeline, sampler, 5, **options)
    assert_same_image(model, ours, theirs)
    their_latent = run_v_diffusers(pipe, StableDiffusionPipeline, sampler, 5, output_type="latent", **options)
    assert (ours.latents[0] - their_latent).abs().max() <= 1e-4
    as_epsilon = dataclasses.replace(model, config=tiny())  # the same weights read as an ε-model
    wrong = generate(as_epsilon, GenerationSettings(prompt=PROMPT, steps=4, guidance=7.5, sampler=sampler,
                                                    karras=karras, height=SIZE, width=SIZE, seed=5))
    assert np.abs(wrong.images[0] / 255.0 - theirs).max() > 0.05  # the prediction type mattered


def test_v_prediction_img2img_and_inpainting_match_diffusers(v_pair, tokenizer_folder):  # noqa: F811
    model, pipe = v_pair
    picture = random_picture(0)
    ours = generate(model, GenerationSettings(prompt=PROMPT, steps=5, guidance=7.5, sampler="ddim", strength=0.6,
                                              height=SIZE, width=SIZE, seed=3), init_image=picture)
    theirs = run_v_diffusers(pipe, StableDiffusionImg2ImgPipeline, "ddim", 3, prompt=PROMPT, image=picture,
                             strength=0.6, num_inference_steps=5, guidance_scale=7.5)
    assert_same_image(model, ours, theirs)

    inpainting = random_model(v_config(in_channels=9), seed=1)  # x_t is the first 4 of the 9 input channels
    inpaint_pipe = diffusers_pipeline(inpainting, tokenizer_folder)
    mask = box_mask()
    ours = generate(inpainting, GenerationSettings(prompt=PROMPT, steps=4, guidance=7.5, sampler="euler",
                                                   strength=1.0, height=SIZE, width=SIZE, seed=9),
                    init_image=picture, mask=mask)
    theirs = run_v_diffusers(inpaint_pipe, StableDiffusionInpaintPipeline, "euler", 9, prompt=PROMPT, image=picture,
                             mask_image=mask, strength=1.0, num_inference_steps=4, guidance_scale=7.5,
                             height=SIZE, width=SIZE)
    assert_same_image(inpainting, ours, theirs)


# ---------------------------------------------------------------------------------------------------
# The ε / v / x0 algebra and the training target


def test_eps_v_x0_are_one_rotation():
    schedule = NoiseSchedule.create("scaled_linear")
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    t = torch.tensor(700)
    x_t = q_sample(schedule, x0, t, eps)
    alpha, sigma = (float(s) for s in vp_scales(schedule, t))
    assert alpha == pytest.approx(schedule.sqrt_alphas_cumprod[700].item(), rel=1e-6)
    v = velocity(x0, eps, alpha, sigma)
    assert torch.allclose(eps_from_prediction(v, x_t, alpha, sigma, "v_prediction"), eps, atol=1e-5)
    assert torch.allclose(v_from_eps(eps, x_t, alpha, sigma), v, atol=1e-5)
    assert torch.allclose(x0_from_eps(eps, x_t, alpha, sigma), x0, atol=1e-5)
    assert eps_from_prediction(eps, x_t, alpha, sigma, "epsilon") is eps
    with pytest.raises(InvalidArgumentError, match="unknown prediction type 'sample'"):
        eps_from_prediction(v, x_t, alpha, sigma, "sample")
    # diffusers' DDIM gets the same v target
    reference = DDIMScheduler.from_config(V_SCHEDULER).get_velocity(x0, eps, torch.tensor([700, 700]))
    assert torch.allclose(v, reference, atol=1e-6)


def test_vp_scales_between_timesteps_invert_sigma_to_t():
    schedule = NoiseSchedule.create("scaled_linear")
    sigmas = torch.tensor([14.6, 3.3, 0.7, 0.03], dtype=torch.float64)
    alpha, sigma = vp_scales(schedule, sigma_to_t(schedule, sigmas))
    assert torch.allclose(sigma / alpha, sigmas, rtol=1e-6)  # σ_VP / α = the σ-space σ


def test_v_training_loss_targets_the_velocity():
    schedule = NoiseSchedule.create("scaled_linear")
    x0 = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(1))

    def true_v(x_t, t, context):  # knows x0, so it can return the exact velocity
        alpha = schedule.sqrt_alphas_cumprod[t].reshape(-1, 1, 1, 1)
        sigma = schedule.sqrt_one_minus_alphas_cumprod[t].reshape(-1, 1, 1, 1)
        return velocity(x0, (x_t - alpha * x0) / sigma, alpha, sigma)

    generator = torch.Generator().manual_seed(2)
    assert training_loss(true_v, schedule, x0, None, generator, prediction_type="v_prediction") < 1e-9
    generator = torch.Generator().manual_seed(2)
    assert training_loss(true_v, schedule, x0, None, generator) > 0.1  # as an ε target it is wrong


# ---------------------------------------------------------------------------------------------------
# Zero terminal SNR and guidance rescale (Lin et al. 2023)


def test_zero_terminal_snr_betas_equal_diffusers():
    betas = NoiseSchedule.create("scaled_linear").betas
    ours = rescale_zero_terminal_snr(betas)
    assert torch.equal(ours, diffusers_zero_snr(betas.clone()))
    assert ours[-1] == 1.0 and torch.allclose(torch.cumprod(1 - ours, 0)[0], torch.cumprod(1 - betas, 0)[0])
    schedule = NoiseSchedule.create("scaled_linear", zero_terminal_snr=True)
    # The samplers' table stops just short of zero (σ_T = 4096 finite), as diffusers' Euler does.
    assert schedule.alphas_cumprod[-1].item() == pytest.approx(ZERO_SNR_ALPHA_CUMPROD, rel=1e-3)
    assert torch.equal(schedule.betas[:-1], ours[:-1]) and torch.isfinite(schedule.sigmas).all()


def test_scheduler_trained_for_names_the_target_and_samples_zero_snr_from_t_max():
    base = SchedulerConfig()
    v = base.trained_for("v_prediction", zero_snr=True)
    assert (v.prediction_type, v.rescale_betas_zero_snr, v.timestep_spacing) == ("v_prediction", True, "trailing")
    eps = base.trained_for("epsilon", zero_snr=False)
    assert eps == base and eps is not base  # a new config; the spacing is the model's own without zero SNR
    assert base.prediction_type == "epsilon" and base.timestep_spacing == "leading"  # left as it was


def test_zero_snr_v_model_samples_finite_pictures():
    config = v_config()
    config.scheduler.rescale_betas_zero_snr = True
    model = random_model(config)
    for sampler in ("ddim", "euler"):
        result = generate(model, GenerationSettings(prompt=PROMPT, steps=3, sampler=sampler, spacing="trailing",
                                                    guidance_rescale=0.7, height=SIZE, width=SIZE))
        assert torch.isfinite(result.latents).all()


def test_guidance_rescale_equals_diffusers():
    generator = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    guided = uncond + 7.5 * (cond - uncond)
    for phi in (0.0, 0.7, 1.0):
        assert torch.allclose(rescale_guidance(guided, cond, phi), rescale_noise_cfg(guided, cond, phi), atol=1e-6)
    full = rescale_guidance(guided, cond, 1.0)
    assert torch.allclose(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)), rtol=1e-5)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_guidance_rescale_out_of_range_is_refused(v_pair, bad):
    model, _ = v_pair
    with pytest.raises(InvalidArgumentError, match="guidance_rescale"):
        GenerationSettings(prompt=PROMPT, guidance_rescale=bad).resolved(model)


# ---------------------------------------------------------------------------------------------------
# diffx train --prediction-type / --zero-snr


def test_train_passes_the_prediction_type_and_zero_snr_to_training(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from diffx.cli import app

    seen = []
    monkeypatch.setattr("diffx.embedded.train.train",
                        lambda config, preview: (seen.append(config), (None, "trained"))[1])
    result = CliRunner().invoke(app, ["train", "--out-dir", str(tmp_path / "run"), "--prediction-type", "v_prediction",
                                      "--zero-snr"])
    assert result.exit_code == 0, result.stderr
    scheduler = seen[0].model["scheduler"]
    assert (scheduler["prediction_type"], scheduler["rescale_betas_zero_snr"]) == ("v_prediction", True)
    assert scheduler["timestep_spacing"] == "trailing"  # its samplers start where x_T is pure noise
    refused = CliRunner().invoke(app, ["train", "--out-dir", str(tmp_path / "run2"), "--prediction-type", "sample"])
    lines = refused.stderr.strip().splitlines()
    assert refused.exit_code == 2 and len(lines) == 1
    assert lines[0] == "error: prediction type 'sample' is not one of: epsilon, v_prediction"
    assert not (tmp_path / "run2").exists()
    ill_posed = CliRunner().invoke(app, ["train", "--out-dir", str(tmp_path / "run3"), "--zero-snr"])
    assert ill_posed.exit_code == 2 and "needs --prediction-type v_prediction" in ill_posed.stderr
    assert not (tmp_path / "run3").exists()
