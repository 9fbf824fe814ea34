"""Schedules against diffusers (the reference) and against the DDPM math itself."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler

from diffx.errors import InvalidArgumentError
from diffx.models.configs import SchedulerConfig
from diffx.sampling.schedules import (
    SPACINGS,
    NoiseSchedule,
    img2img_start,
    karras_sigmas,
    log_snr,
    q_sample,
    sigma_to_t,
    spaced_timesteps,
    strength_for_timestep,
    training_loss,
)

# (diffx name, diffusers name, end points)
SCHEDULES = [
    ("linear", "linear", {"beta_start": 1e-4, "beta_end": 0.02}),
    ("scaled_linear", "scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}),
    ("cosine", "squaredcos_cap_v2", {}),
]


def q_step(schedule: NoiseSchedule, x_prev: torch.Tensor, t: torch.Tensor,
           noise: torch.Tensor) -> torch.Tensor:
    """x_t = √(1 - β_t) x_{t-1} + √β_t ε, one step of q(x_t | x_{t-1}) (DDPM eq. 2).

    Starting from the clean sample at t = 0 and stepping t = 0, 1, …, k gives x_k ~ q(x_k | x_0).
    """
    beta = schedule.betas[t].reshape(-1, *[1] * (x_prev.ndim - 1))
    return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise



@pytest.mark.parametrize("name, diffusers_name, ends", SCHEDULES)
def test_tables_equal_diffusers(name, diffusers_name, ends):
    schedule = NoiseSchedule.create(name, 1000, **ends)
    reference = DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name, **ends)
    assert torch.equal(schedule.betas, reference.betas)
    assert torch.equal(schedule.alphas_cumprod, reference.alphas_cumprod)
    a_bar = reference.alphas_cumprod.double()
    torch.testing.assert_close(schedule.sigmas.double(), ((1 - a_bar) / a_bar).sqrt(), rtol=1e-6, atol=0)
    torch.testing.assert_close(torch.from_numpy(log_snr(schedule.alphas_cumprod)), (a_bar / (1 - a_bar)).log(),
                               rtol=1e-6, atol=1e-6)


def test_cosine_is_clipped_and_defaults():
    schedule = NoiseSchedule.create("cosine")
    assert schedule.betas.max().item() == pytest.approx(0.999)
    linear = NoiseSchedule.create("linear")
    assert linear.betas[0].item() == pytest.approx(1e-4) and linear.betas[-1].item() == pytest.approx(0.02)


def test_from_config_is_sd15():
    schedule = NoiseSchedule.from_config(SchedulerConfig())
    assert schedule.num_train_timesteps == 1000
    assert schedule.betas[0].item() == pytest.approx(0.00085)
    assert schedule.betas[-1].item() == pytest.approx(0.012)


def test_q_sample_equals_diffusers_add_noise():
    schedule = NoiseSchedule.create("scaled_linear")
    reference = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 417, 999])
    assert torch.equal(q_sample(schedule, x0, t, noise), reference.add_noise(x0, noise, t))


def test_q_step_chain_has_q_sample_distribution():
    """x_0 → q_step t = 0…k has the law of q_sample(x_0, k): mean √ᾱ_k x_0, variance 1 - ᾱ_k (DDPM eq. 4)."""
    schedule = NoiseSchedule.create("linear")
    generator = torch.Generator().manual_seed(0)
    n, k = 8000, 300  # standard errors: mean ≈ 0.011, variance ≈ 0.016; tolerances are ~3.5 of them
    x0 = torch.linspace(-1, 1, 4).expand(n, 4)
    x = x0
    for t in range(k + 1):
        x = q_step(schedule, x, torch.tensor(t), torch.randn(x.shape, generator=generator))
    direct = q_sample(schedule, x0, torch.tensor(k), torch.randn(x0.shape, generator=generator))
    a_bar = schedule.alphas_cumprod[k]
    for samples in (x, direct):
        torch.testing.assert_close(samples.mean(0), a_bar.sqrt() * x0[0], atol=0.04, rtol=0)
        torch.testing.assert_close(samples.var(0), (1 - a_bar).expand(4), atol=0.05, rtol=0)
    # A wrong chain (e.g. skipping √(1-β) on x_{t-1}) would leave the mean at x_0: make sure it is not.
    assert (x.mean(0) - x0[0]).abs().max() > 0.3


def test_training_loss_is_l_simple():
    schedule = NoiseSchedule.create("scaled_linear")
    x0, context = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 16)
    seen = {}

    def eps_model(x_t, t, c):
        seen.update(x_t=x_t, t=t, c=c)
        return torch.zeros_like(x_t)

    loss = training_loss(eps_model, schedule, x0, context, generator=torch.Generator().manual_seed(1))
    # Replay the same draws: t first, then ε, from the same seed.
    generator = torch.Generator().manual_seed(1)
    t = torch.randint(0, 1000, (2,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    assert torch.equal(seen["t"], t) and seen["c"] is context
    torch.testing.assert_close(seen["x_t"], q_sample(schedule, x0, t, noise))
    torch.testing.assert_close(loss, (noise**2).mean())  # ε_θ = 0 → loss = mean ε²
    assert training_loss(lambda x_t, t, c: (x_t - q_sample(schedule, x0, t, torch.zeros_like(x0)))
                         / schedule.sqrt_one_minus_alphas_cumprod[t].reshape(-1, 1, 1, 1),
                         schedule, x0, context).item() < 1e-8  # the perfect ε-model has zero loss


def test_sd15_leading_timesteps():
    timesteps = spaced_timesteps(1000, 50, "leading", steps_offset=1)
    assert timesteps[:3].tolist() == [981, 961, 941] and timesteps[-1].item() == 1 and len(timesteps) == 50
    assert spaced_timesteps(1000, 10, "trailing").tolist()[:2] == [999, 899]


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [1, 7, 10, 25, 50, 999, 1000])
def test_spacing_equals_diffusers(spacing, steps):
    offset = 1 if spacing == "leading" else 0
    if spacing == "leading" and steps == 1000:
        return  # offset 1 would reach t = 1000: tested as an error below
    ddim = DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
    ddim.set_timesteps(steps)
    assert torch.equal(spaced_timesteps(1000, steps, spacing, offset), ddim.timesteps)
    euler = EulerDiscreteScheduler(timestep_spacing=spacing, steps_offset=offset)
    euler.set_timesteps(steps)
    assert torch.equal(spaced_timesteps(1000, steps, spacing, offset, discrete=False), euler.timesteps)


def test_trailing_never_gives_negative_timesteps():
    for steps in (61, 103, 121):  # np.arange yields one extra point here; diffusers keeps a t = -1
        timesteps = spaced_timesteps(1000, steps, "trailing")
        assert len(timesteps) == steps and timesteps.min() >= 0


def test_sigma_to_t_and_karras():
    schedule = NoiseSchedule.create("scaled_linear")
    # On-grid sigmas map back to their integer timesteps; between grid points t is fractional.
    t = torch.tensor([0, 1, 500, 998, 999])
    torch.testing.assert_close(sigma_to_t(schedule, schedule.sigmas[t].double()), t.double())
    midway = (schedule.sigmas[10].double().log() + schedule.sigmas[11].double().log()) / 2
    assert sigma_to_t(schedule, midway.exp()).item() == pytest.approx(10.5, abs=1e-4)
    sigmas = karras_sigmas(0.03, 14.6, 10)
    assert sigmas[0].item() == pytest.approx(14.6) and sigmas[-1].item() == pytest.approx(0.03)
    assert (sigmas.diff() < 0).all()


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"steps": 1001}, {"steps": 10, "spacing": "uniform"},
                                    {"steps": 1000, "spacing": "leading", "steps_offset": 1}])
def test_spacing_errors(kwargs):
    with pytest.raises(InvalidArgumentError) as error:
        spaced_timesteps(1000, **kwargs)
    if "spacing" in kwargs and kwargs["spacing"] == "uniform":
        assert "leading, trailing, linspace" in str(error.value)


def test_schedule_errors():
    with pytest.raises(InvalidArgumentError, match="linear, scaled_linear, cosine"):
        NoiseSchedule.create("squaredcos")


@pytest.mark.parametrize("steps, strength, start",
                         [(50, 0.8, 10), (50, 1.0, 0), (50, 0.0, 50), (25, 0.3, 18)])
def test_img2img_start(steps, strength, start):
    assert img2img_start(steps, strength) == start


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_img2img_strength_errors(strength):
    with pytest.raises(InvalidArgumentError, match="strength"):
        img2img_start(50, strength)


def test_strength_for_timestep():
    assert strength_for_timestep(999) == 1.0 and strength_for_timestep(499) == 0.5
    with pytest.raises(InvalidArgumentError):
        strength_for_timestep(1000)
