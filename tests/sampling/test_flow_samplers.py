"""Rectified-flow sampling (diffx.sampling.flow) step for step against diffusers' flow-matching schedulers."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

from diffx.errors import InvalidArgumentError
from diffx.sampling.flow import flow_grid, flow_schedule
from diffx.sampling.parameterizations import flow_alpha_cumprod
from diffx.sampling.samplers import sample

SHAPE = (2, 16, 8, 8)


def velocity_field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth, time-dependent stand-in for a network: v̂(x, t) = tanh(x) · (1 + t/1000) − 0.3 x."""
    return torch.tanh(x) * (1 + float(t) / 1000) - 0.3 * x


def diffusers_run(scheduler, steps: int, noise: torch.Tensor, begin: int = 0,
                  init: torch.Tensor | None = None) -> tuple[torch.Tensor, list[float]]:
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps[begin * scheduler.order:]
    scheduler.set_begin_index(begin * scheduler.order)
    x = noise if init is None else scheduler.scale_noise(init, timesteps[:1], noise)
    seen = []
    for t in timesteps:
        seen.append(float(t))
        x = scheduler.step(velocity_field(x, t), t, x).prev_sample
    return x, seen


@pytest.mark.parametrize("steps, shift", [(28, 3.0), (10, 1.0), (7, 6.0)])
def test_flow_grid_is_diffusers_grid(steps: int, shift: float) -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    grid = flow_grid("euler", steps, shift)
    assert torch.equal(grid.flow_sigmas, scheduler.sigmas)
    assert torch.equal(grid.timesteps, scheduler.timesteps)
    assert grid.init_noise_sigma == 1.0 and grid.model_timesteps() == [float(t) for t in scheduler.timesteps]


@pytest.mark.parametrize("sampler, scheduler_class", [("euler", FlowMatchEulerDiscreteScheduler),
                                                      ("heun", FlowMatchHeunDiscreteScheduler)])
def test_flow_samplers_equal_diffusers(sampler: str, scheduler_class) -> None:
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    expected, timesteps = diffusers_run(scheduler_class(shift=3.0), 12, noise)
    grid = flow_grid(sampler, 12, 3.0)
    records = []
    result = sample(velocity_field, noise, grid, callback=records.append)
    assert [r.timestep for r in records] == pytest.approx(timesteps) and len(records) == len(timesteps)
    torch.testing.assert_close(result, expected, atol=2e-6, rtol=0)


def test_flow_image_to_image_equals_diffusers() -> None:
    generator = torch.Generator().manual_seed(1)
    noise, init = torch.randn(SHAPE, generator=generator), torch.randn(SHAPE, generator=generator)
    steps, strength = 10, 0.75
    start = int(steps - steps * strength)  # 2: SD3's pipeline does not round N·strength first
    expected, _ = diffusers_run(FlowMatchEulerDiscreteScheduler(shift=3.0), steps, noise, begin=start, init=init)
    grid = flow_grid("euler", steps, 3.0, strength=strength)
    assert grid.start_index == start
    torch.testing.assert_close(sample(velocity_field, noise, grid, init_latent=init), expected, atol=2e-6, rtol=0)


def test_flow_records_hold_the_line_and_its_vp_scales() -> None:
    """Each record's x is x_s, its ε̂ and x̂0 are the line's ends, and x_s / n = √ᾱ x̂0 + √(1 − ᾱ) ε̂ with the
    record's ᾱ (n = √((1 − s)² + s²))."""
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    records = []
    sample(velocity_field, noise, flow_grid("euler", 6, 3.0), callback=records.append)
    first = records[0]
    assert first.alpha_cumprod == pytest.approx(2.0**-24) and first.sigma == pytest.approx(4096, rel=1e-6)
    torch.testing.assert_close(first.x0_pred, noise - velocity_field(noise, torch.tensor(1000.0)))
    torch.testing.assert_close(first.eps_pred, noise)  # at s = 1 the line's noise end is the state itself
    for record in records[1:]:
        a, s = record.alpha_cumprod, record.timestep / 1000
        torch.testing.assert_close(record.x, (1 - s) * record.x0_pred + s * record.eps_pred, atol=1e-5, rtol=1e-5)
        n = ((1 - s) ** 2 + s**2) ** 0.5
        torch.testing.assert_close(record.x / n, a**0.5 * record.x0_pred + (1 - a) ** 0.5 * record.eps_pred,
                                   atol=1e-5, rtol=1e-5)
    assert records[-1].next_sigma == 0.0


def test_flow_schedule_table() -> None:
    schedule = flow_schedule(1000)
    s = torch.tensor([0.001, 0.5, 0.999], dtype=torch.float64)
    torch.testing.assert_close(schedule.alphas_cumprod[[0, 499, 998]].double(), flow_alpha_cumprod(s), rtol=1e-6,
                               atol=0)
    assert float(schedule.alphas_cumprod[-1]) == pytest.approx(2.0**-24)
    assert schedule.alphas_cumprod[:-1].diff().le(0).all()  # noise only grows with t


@pytest.mark.parametrize("kwargs, message", [({"sampler": "ddpm"}, "euler, heun, ddim"),
                                             ({"shift": 0.0}, "shift"), ({"shift": float("nan")}, "shift"),
                                             ({"steps": 0}, "steps")])
def test_flow_grid_refuses(kwargs: dict, message: str) -> None:
    arguments = {"sampler": "euler", "steps": 10, "shift": 3.0, **kwargs}
    with pytest.raises(InvalidArgumentError, match=message):
        flow_grid(**arguments)


def test_ddim_on_a_flow_grid_is_flow_euler() -> None:
    """DDIM's deterministic step, √ᾱ' x̂0 + √(1 − ᾱ') ε̂, is in flow units (1 − s') x̂0 + s' ε̂: Euler's step."""
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    euler = sample(velocity_field, noise, flow_grid("euler", 8, 3.0))
    torch.testing.assert_close(sample(velocity_field, noise, flow_grid("ddim", 8, 3.0)), euler, atol=0, rtol=0)
    # The same endpoint from the VP view of each step: x' = n' (√ᾱ' x̂0 + √(1 − ᾱ') ε̂).
    records = []
    sample(velocity_field, noise, flow_grid("ddim", 8, 3.0), callback=records.append)
    for record in records:
        s_next = record.next_sigma / (1 + record.next_sigma)  # s = σ/(1 + σ)
        a = 1 / (1 + record.next_sigma**2)
        n = ((1 - s_next) ** 2 + s_next**2) ** 0.5
        torch.testing.assert_close(n * (a**0.5 * record.x0_pred + (1 - a) ** 0.5 * record.eps_pred), record.x_next,
                                   atol=1e-5, rtol=1e-5)
