"""lab/flow.py: the straight path and its loss, SD3's shifted time grid, and flow Euler and Heun integrating a velocity
field whose exact flow is known (Gaussian data: the ODE carries ε to m + s ε along straight rays)."""

import math

import pytest
import torch
from torch import nn

from diffx.errors import InvalidArgumentError
from diffx.lab.data import get_distribution
from diffx.lab.flow import (
    FLOW_TIME_SCALE,
    flow_interpolate,
    flow_matching_loss,
    flow_times,
    run_flow,
    train_flow_model,
)
from diffx.lab.model import LabModel
from diffx.lab.train import LabTrainConfig
from diffx.sampling.parameterizations import eps_from_velocity, x0_from_velocity

MEAN, STD = torch.tensor([1.0, -0.5]), 0.5  # the Gaussian data N(m, s² I) of the exact velocity field


class GaussianVelocity(nn.Module):
    """The exact v(x, t) = E[ε − x_0 | x_t = x] for x_0 ~ N(m, s² I), x_t = (1 − t) x_0 + t ε: with
    V = (1 − t)² s² + t², E[x_0 | x] = m + (1 − t) s² (x − (1 − t) m) / V and E[ε | x] = t (x − (1 − t) m) / V.
    Called as the lab model is: (x (B, 2), time t · FLOW_TIME_SCALE)."""

    def forward(self, x, time):
        t = float(time) / FLOW_TIME_SCALE
        variance = (1 - t) ** 2 * STD**2 + t**2
        centred = x - (1 - t) * MEAN
        return t * centred / variance - (MEAN + (1 - t) * STD**2 * centred / variance)


def test_the_straight_path_and_the_two_estimates_it_gives():
    x0, noise = torch.randn(2, 8, 2, generator=torch.Generator().manual_seed(0)).unbind(0)
    t = torch.full((8,), 0.3)
    x_t = flow_interpolate(x0, noise, t)
    torch.testing.assert_close(x_t, 0.7 * x0 + 0.3 * noise)
    torch.testing.assert_close(flow_interpolate(x0, noise, torch.tensor(1.0)), noise)
    v = noise - x0  # the true velocity recovers both ends
    torch.testing.assert_close(x0_from_velocity(x_t, 0.3, v), x0)
    torch.testing.assert_close(eps_from_velocity(x_t, 0.3, v), noise)


def test_the_loss_regresses_the_velocity_at_uniform_times():
    """L_FM with the loss's own draws, repeated by hand: t ~ U[0, 1), ε ~ N(0, I), target ε − x_0, time t · 1000."""
    torch.manual_seed(0)
    model = LabModel(num_classes=2, width=16, depth=1)
    x0, labels = torch.randn(32, 2), torch.randint(0, 2, (32,))
    loss = flow_matching_loss(model, x0, labels, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    t = torch.rand(32, generator=generator)
    noise = torch.randn(32, 2, generator=generator)
    expected = ((model((1 - t[:, None]) * x0 + t[:, None] * noise, t * 1000, labels) - (noise - x0)) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    paired = flow_matching_loss(model, x0, labels, torch.Generator().manual_seed(5), noise=torch.zeros(32, 2))
    assert not torch.isclose(paired, loss)  # given noise replaces the fresh draw


def test_training_lowers_the_flow_loss_from_the_same_start_as_the_eps_model():
    config = LabTrainConfig(steps=120, batch=128, width=32, depth=1)
    flow = train_flow_model(get_distribution("gaussians"), config, seed=3)
    assert flow.losses == train_flow_model(get_distribution("gaussians"), config, seed=3).losses
    assert sum(flow.losses[-20:]) / 20 < 0.8 * sum(flow.losses[:20]) / 20
    assert not flow.model.training


def test_the_time_grid_runs_from_noise_to_data_and_shifts_towards_noise():
    plain = flow_times(4)
    torch.testing.assert_close(plain, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    shifted = flow_times(4, shift=3.0)
    assert shifted[0] == 1 and shifted[-1] == 0 and bool((shifted[1:] < shifted[:-1]).all())
    assert float(shifted[2]) == pytest.approx(3 * 0.5 / (1 + 2 * 0.5))  # SD3: s u / (1 + (s − 1) u)
    assert bool((shifted[1:-1] > plain[1:-1]).all())  # more of the steps at high noise


@pytest.mark.parametrize(("steps", "shift", "message"), [
    (0, 1.0, "at least 1"), (4, 0.0, "shift must be above 0"), (4, -1.0, "shift must be above 0"),
    (4, 1000.0, "at most 100"), (4, math.nan, "shift must be a finite number"), (4, math.inf, "finite"),
])
def test_bad_grids_are_refused(steps, shift, message):
    with pytest.raises(InvalidArgumentError, match=message):
        flow_times(steps, shift)


def test_euler_and_heun_reach_the_exact_flow_heun_faster():
    """The exact ODE of N(m, s² I) maps ε to m + s ε. Heun is second order: its error at 8 steps is far below
    Euler's, and both converge."""
    noise = torch.randn(200, 2, generator=torch.Generator().manual_seed(1)).double()
    exact = MEAN.double() + STD * noise
    errors = {}
    for sampler in ("flow_euler", "flow_heun"):
        for steps in (8, 64):
            run = run_flow(GaussianVelocity(), sampler, flow_times(steps), noise)
            errors[sampler, steps] = float((run.samples - exact).abs().max())
            assert run.path.shape == (steps + 1, 200, 2) and run.timesteps[0] == 1 and run.timesteps[-1] == 0
            assert run.nfe[-1] == steps * (1 if sampler == "flow_euler" else 2)
            torch.testing.assert_close(run.path[0], noise)
    print(errors)
    assert errors["flow_heun", 8] < 0.1 * errors["flow_euler", 8]
    assert errors["flow_euler", 64] < 0.25 * errors["flow_euler", 8]  # first order: 8x the steps, ~1/8 the error
    assert errors["flow_heun", 64] < errors["flow_heun", 8] / 20  # second order: ~1/64


def test_an_unknown_flow_sampler_is_refused():
    with pytest.raises(InvalidArgumentError, match="unknown flow sampler 'ddim'"):
        run_flow(GaussianVelocity(), "ddim", flow_times(2), torch.zeros(3, 2))
