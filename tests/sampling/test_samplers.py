"""Every sampler against its diffusers scheduler, step for step, with SD1.5's scheduler config.

diffusers runs its own pipeline loop (latents *= init_noise_sigma, scale_model_input, step) on the same
fake ε-model, the same initial noise and, for ancestral samplers, a generator with the same seed.
Every model input, ε, x̂_0 and next state, and every timestep visited, must agree.
"""

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)

from diffx.errors import InvalidArgumentError
from diffx.sampling.grids import KARRAS_SAMPLERS, SAMPLERS, GridSpec, sampling_grid
from diffx.sampling.samplers import StepRecord, sample
from diffx.sampling.schedules import NoiseSchedule, img2img_start

SD15 = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "timestep_spacing": "leading", "steps_offset": 1,
        "set_alpha_to_one": False, "clip_sample": False}
SHAPE = (1, 4, 8, 8)
TOLERANCE = 1e-5


def fake_eps(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed nonlinear ε-model that depends on both the input and the timestep."""
    t = torch.as_tensor(t).float()
    return 0.5 * torch.tanh(x_in) + 0.01 * t / 1000 * torch.sin(x_in) + 0.02 * x_in * (t / 1000) ** 2


def make_scheduler(sampler: str, spacing: str, karras: bool, variance: str, schedule: NoiseSchedule | None = None):
    config = dict(SD15, timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    if schedule is not None:  # another schedule's β, e.g. rescaled to zero terminal SNR
        config["trained_betas"] = schedule.betas.tolist()
    if sampler == "ddpm":
        return DDPMScheduler.from_config(dict(config, variance_type=variance))
    if sampler == "ddim":
        return DDIMScheduler.from_config(config)
    if sampler == "dpmpp_2m":
        return DPMSolverMultistepScheduler.from_config(
            dict(config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=karras))
    cls = {"euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler,
           "heun": HeunDiscreteScheduler}[sampler]
    return cls.from_config(dict(config, use_karras_sigmas=karras))


def run_diffusers(sampler, steps, noise, *, spacing="leading", karras=False, eta=0.0, variance="fixed_small",
                  init_latent=None, strength=None, seed=None, schedule=None):
    """diffusers' StableDiffusion(Img2Img)Pipeline denoising loop; returns per-step records and the result."""
    scheduler = make_scheduler(sampler, spacing, karras, variance, schedule)
    scheduler.set_timesteps(steps)
    if sampler == "euler_a" and karras:
        # EulerAncestralDiscreteScheduler has no Karras option: give it EulerDiscrete's Karras grid.
        grid = make_scheduler("euler", spacing, True, variance)
        grid.set_timesteps(steps)
        scheduler.sigmas, scheduler.timesteps = grid.sigmas, grid.timesteps
    timesteps = scheduler.timesteps
    if init_latent is None:
        latents = noise * scheduler.init_noise_sigma
    else:  # StableDiffusionImg2ImgPipeline.get_timesteps + prepare_latents
        t_start = img2img_start(steps, strength)
        timesteps = timesteps[t_start * scheduler.order:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
        latents = scheduler.add_noise(init_latent, noise, timesteps[:1])
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    kwargs = {"eta": eta} if sampler == "ddim" else {}
    if sampler in ("ddpm", "ddim", "euler_a"):
        kwargs["generator"] = generator
    records = []
    for t in timesteps:
        x_in = scheduler.scale_model_input(latents, t)
        eps = fake_eps(x_in, t)
        out = scheduler.step(eps, t, latents, **kwargs)
        x0_pred = getattr(out, "pred_original_sample", None)
        records.append({"timestep": float(t), "x": x_in, "eps_pred": eps, "x0_pred": x0_pred,
                        "x_next": out.prev_sample})
        latents = out.prev_sample
    return latents, records


def make_grid(sampler, steps, *, spacing="leading", karras=False, strength=None, schedule=None):
    """diffx's grid for the settings (SD1.5's scheduler: steps_offset 1)."""
    return sampling_grid(GridSpec(sampler, steps, spacing, karras), schedule or NoiseSchedule.create("scaled_linear"),
                         strength=strength)


def run_diffx(sampler, steps, noise, *, seed=None, spacing="leading", karras=False, strength=None, schedule=None,
              **kwargs):
    records: list[StepRecord] = []
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    grid = make_grid(sampler, steps, spacing=spacing, karras=karras, strength=strength, schedule=schedule)
    result = sample(fake_eps, noise, grid, generator=generator, callback=records.append, **kwargs)
    return result, records


def assert_same_trajectory(sampler, steps, *, seed=None, **kwargs):
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    if kwargs.get("strength") is not None:
        kwargs["init_latent"] = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    ours, records = run_diffx(sampler, steps, noise, seed=seed, **kwargs)
    theirs, reference = run_diffusers(sampler, steps, noise, seed=seed, **kwargs)

    assert [r.timestep for r in records] == [r["timestep"] for r in reference]
    assert len(records) == len(reference) and records[0].num_steps == len(reference)
    worst = 0.0
    for record, expected in zip(records, reference, strict=True):
        for name in ("x", "eps_pred", "x0_pred", "x_next"):
            if expected[name] is not None:
                worst = max(worst, (getattr(record, name) - expected[name]).abs().max().item())
    worst = max(worst, (ours - theirs).abs().max().item())
    assert worst < TOLERANCE, f"{sampler}: max abs diff {worst:.2e}"
    # The states chain: each record's x_next is the next record's state, the last one is the result.
    for record, following in zip(records, records[1:], strict=False):
        assert torch.equal(record.x_next, following.state)
    assert torch.equal(records[-1].x_next, ours)
    return records


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm(steps, variance):
    assert_same_trajectory("ddpm", steps, variance=variance, seed=3)


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim(steps, eta):
    assert_same_trajectory("ddim", steps, eta=eta, seed=4)


@pytest.mark.parametrize("sampler", ["euler", "euler_a", "heun", "dpmpp_2m"])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("steps", [10, 25])
def test_sigma_samplers(sampler, karras, steps):
    records = assert_same_trajectory(sampler, steps, karras=karras, seed=5 if sampler == "euler_a" else None)
    if karras and sampler != "dpmpp_2m":
        assert any(r.timestep != int(r.timestep) for r in records)  # Karras timesteps are fractional


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_other_spacings(sampler, spacing):
    assert_same_trajectory(sampler, 10, spacing=spacing, seed=6)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_img2img(sampler, strength):
    records = assert_same_trajectory(sampler, 10, strength=strength, seed=7)
    assert len(records) == (2 * int(10 * strength) - 1 if sampler == "heun" else int(10 * strength))


@pytest.mark.parametrize("sampler", ["euler", "heun"])
@pytest.mark.parametrize("steps", [5, 25])
def test_sigma_samplers_on_the_zero_terminal_snr_grid(sampler, steps):
    """The embedded model's grid: β rescaled to zero terminal SNR, trailing, so the first step starts at σ = 4096
    (ᾱ_T clipped to 2⁻²⁴) and falls to σ = 7.4 (5 steps) or 51.6 (25). diffusers' Heun, given the same β, takes
    the same steps: its trapezoid correction over that first step is Heun's method, not a diffx bug."""
    schedule = NoiseSchedule.create("scaled_linear", zero_terminal_snr=True)
    records = assert_same_trajectory(sampler, steps, spacing="trailing", schedule=schedule)
    assert records[0].timestep == 999 and records[0].sigma == pytest.approx(4096, rel=1e-4)


def test_sd15_ddim_visits_leading_timesteps():
    _, records = run_diffx("ddim", 50, torch.randn(SHAPE))
    timesteps = [r.timestep for r in records]
    assert timesteps[:2] == [981.0, 961.0] and timesteps[-1] == 1.0 and len(timesteps) == 50
    assert [r.index for r in records] == list(range(50))


def test_heun_duplicates_timesteps():
    _, records = run_diffx("heun", 3, torch.randn(SHAPE))
    assert [r.timestep for r in records] == [667.0, 334.0, 334.0, 1.0, 1.0]


def test_sigma_records_are_vp():
    """For σ-space samplers the reported x is state / √(σ²+1) and ᾱ = 1/(σ²+1)."""
    _, records = run_diffx("euler", 10, torch.randn(SHAPE))
    for record in records:
        torch.testing.assert_close(record.x, record.state / (record.sigma**2 + 1) ** 0.5)
        assert record.alpha_cumprod == pytest.approx(1 / (record.sigma**2 + 1))
    assert records[0].state.std() > 10 * records[0].x.std() / 2  # σ_max ≈ 14.6: the raw state is large


def test_ancestral_samplers_depend_on_the_seed():
    noise = torch.randn(SHAPE)
    for sampler in ("ddpm", "euler_a"):
        first, _ = run_diffx(sampler, 10, noise, seed=1)
        again, _ = run_diffx(sampler, 10, noise, seed=1)
        other, _ = run_diffx(sampler, 10, noise, seed=2)
        assert torch.equal(first, again) and not torch.allclose(first, other)


def test_strength_zero_returns_the_input():
    init = torch.randn(SHAPE)
    result, records = run_diffx("ddim", 10, torch.randn(SHAPE), init_latent=init, strength=0.0)
    assert result is init and records == []


@pytest.mark.parametrize("kwargs, message", [
    ({"sampler": "plms"}, "ddpm, ddim, euler, euler_a, heun, dpmpp_2m"),
    ({"steps": 0}, "steps must be between 1 and 1000"),
    ({"steps": 1001}, "steps must be between 1 and 1000"),
    ({"spacing": "uniform"}, "leading, trailing, linspace"),
    ({"variance": "learned", "sampler": "ddpm"}, "fixed_small, fixed_large"),
    ({"strength": 1.5, "init_latent": torch.zeros(SHAPE)}, "strength must be between 0 and 1"),
    ({"strength": -0.1, "init_latent": torch.zeros(SHAPE)}, "strength must be between 0 and 1"),
    ({"strength": 0.5}, "no init_latent was given"),
    ({"karras": True, "sampler": "ddim"}, "Karras sigmas apply to"),
    ({"eta": -1.0}, "eta must be >= 0"),
])
def test_errors(kwargs, message):
    arguments = {"sampler": "ddim", "steps": 10} | kwargs
    grid_keys = ("sampler", "steps", "spacing", "karras", "strength")
    with pytest.raises(InvalidArgumentError, match=message):
        grid = make_grid(**{key: arguments.pop(key) for key in grid_keys if key in arguments})
        sample(fake_eps, torch.randn(SHAPE), grid, **arguments)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(("spacing", "karras"), [("leading", False), ("trailing", False), ("linspace", True)])
def test_model_timesteps_are_the_timesteps_the_sampler_calls(sampler, spacing, karras):
    schedule = NoiseSchedule.create("scaled_linear")
    karras = karras and sampler in KARRAS_SAMPLERS
    called: list[float] = []
    grid = make_grid(sampler, 7, spacing=spacing, karras=karras, schedule=schedule)
    sample(lambda x, t: torch.zeros_like(x), torch.zeros(1, 1, 1, 1), grid, generator=torch.Generator().manual_seed(0),
           callback=lambda r: called.append(r.timestep))
    assert grid.model_timesteps() == called
