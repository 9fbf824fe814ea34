"""What a network predicts → the sampler's ε̂ (diffx/sampling/parameterizations.py): each exchange is exact on
known x_0 and ε, at any noise level."""

import pytest
import torch

from diffx.errors import InvalidArgumentError
from diffx.sampling.parameterizations import Parameterization
from diffx.sampling.schedules import velocity

X0, EPS = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)).unbind(0)
T = torch.tensor(500.0)


@pytest.mark.parametrize("alpha", [0.999, 0.7, 0.05])
def test_each_parameterization_returns_the_true_noise(alpha):
    sigma = (1 - alpha**2) ** 0.5
    x_t = alpha * X0 + sigma * EPS  # the VP state
    exact = {"epsilon": EPS, "v_prediction": velocity(X0, EPS, alpha, sigma), "flow": EPS - X0}
    for name, output in exact.items():
        eps = Parameterization(name).to_eps(output, x_t, alpha, sigma)
        assert torch.allclose(eps, EPS, atol=1e-4), name


@pytest.mark.parametrize("alpha", [0.999, 0.7, 0.05])
def test_a_flow_network_sees_the_straight_line_mix_at_time_s(alpha):
    """x_s = (1 − s) x_0 + s ε with s = σ / (α + σ), at time s·T (Esser et al. 2024, eq. 2)."""
    sigma = (1 - alpha**2) ** 0.5
    s = sigma / (alpha + sigma)
    x_in, time = Parameterization("flow", 1000).network_input(alpha * X0 + sigma * EPS, T, alpha, sigma)
    assert torch.allclose(x_in, (1 - s) * X0 + s * EPS, atol=1e-5)
    assert float(time) == pytest.approx(1000 * s, rel=1e-6)


def test_eps_and_v_networks_see_the_state_itself():
    x_t = 0.6 * X0 + 0.8 * EPS
    for name in ("epsilon", "v_prediction"):
        x_in, time = Parameterization(name).network_input(x_t, T, 0.6, 0.8)
        assert x_in is x_t and time is T


def test_unknown_parameterization():
    with pytest.raises(InvalidArgumentError, match="epsilon, v_prediction, flow"):
        Parameterization("sample")
