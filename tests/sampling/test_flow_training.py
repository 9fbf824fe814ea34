"""Rectified-flow training (sampling/flow_training.py): the straight path, SD3's logit-normal times and the
velocity loss's target."""

import pytest
import torch

from diffx.sampling.flow import shift_times
from diffx.sampling.flow_training import (
    FLOW_TIME_SCALE,
    flow_interpolate,
    flow_training_loss,
    logit_normal_times,
)


def test_the_path_runs_straight_from_data_to_noise():
    x0, noise = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    torch.testing.assert_close(flow_interpolate(x0, noise, torch.zeros(3)), x0)
    torch.testing.assert_close(flow_interpolate(x0, noise, torch.ones(3)), noise)
    s = torch.tensor([0.25, 0.5, 0.75])
    torch.testing.assert_close(flow_interpolate(x0, noise, s), (1 - s)[:, None, None, None] * x0
                               + s[:, None, None, None] * noise)


def test_logit_normal_times_have_a_standard_normal_logit():
    """s = sigmoid(u), u ~ N(0, 1) (Esser et al. 2024, eq. 19): logit(s) has mean 0 and std 1; s lies in (0, 1)."""
    s = logit_normal_times(20000, torch.Generator().manual_seed(0)).double()
    assert ((s > 0) & (s < 1)).all()
    logit = torch.log(s / (1 - s))
    assert abs(float(logit.mean())) < 0.03 and float(logit.std()) == pytest.approx(1.0, abs=0.03)
    # the density peaks in the middle: more draws in [0.4, 0.6] than in [0, 0.2] (a uniform law would give as many)
    assert ((s > 0.4) & (s < 0.6)).sum() > 2 * (s < 0.2).sum()


def test_logit_normal_times_follow_mean_std_and_shift():
    generator = torch.Generator().manual_seed(1)
    s = logit_normal_times(20000, generator, mean=1.0, std=0.5).double()
    assert float(torch.log(s / (1 - s)).median()) == pytest.approx(1.0, abs=0.03)
    shifted = logit_normal_times(20000, torch.Generator().manual_seed(2), shift=3.0)
    # the shift is monotone, so the median moves from sigmoid(0) = 0.5 to shift_times(0.5, 3) = 0.75
    assert float(shifted.median()) == pytest.approx(shift_times(0.5, 3.0), abs=0.01)
    assert torch.equal(logit_normal_times(8, torch.Generator().manual_seed(3)),
                       logit_normal_times(8, torch.Generator().manual_seed(3)))  # seeded: reproducible


def test_the_loss_target_is_noise_minus_data():
    """A network that returns the true velocity ε − x0 (solved from x_s and s, knowing x0) has zero loss; one that
    returns 0 has the loss E‖ε − x0‖²; the network is told s · 1000."""
    x0 = torch.randn(64, 4, 4, 4)
    seen = []

    def oracle(x_s, t):
        seen.append(t)
        s = (t / FLOW_TIME_SCALE)[:, None, None, None]
        return (x_s - x0) / s  # x_s = x0 + s (ε − x0)

    assert flow_training_loss(oracle, x0, torch.Generator().manual_seed(0)).item() == pytest.approx(0.0, abs=1e-8)
    assert ((seen[0] > 0) & (seen[0] < FLOW_TIME_SCALE)).all() and seen[0].shape == (64,)
    generator = torch.Generator().manual_seed(5)
    zero = flow_training_loss(lambda x, t: torch.zeros_like(x), x0, generator).item()
    generator = torch.Generator().manual_seed(5)
    logit_normal_times(64, generator)  # the loss draws the times first, then ε
    noise = torch.randn(x0.shape, generator=generator)
    assert zero == pytest.approx(float(((noise - x0) ** 2).mean()), rel=1e-5)
