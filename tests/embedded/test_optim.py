"""The learning-rate schedule, the EMA decay's warm-up, and lending the EMA weights to the live parameters."""

import pytest
import torch

from diffx.embedded.optim import ema_decay, learning_rate, swapped_in


def test_learning_rate_warms_up_linearly_then_decays_to_a_tenth():
    assert learning_rate(0, 1.0, 10, 110) == pytest.approx(0.1)
    assert learning_rate(9, 1.0, 10, 110) == pytest.approx(1.0)
    assert learning_rate(60, 1.0, 10, 110) == pytest.approx(0.55)  # half-way through the cosine: (1 + 0.1) / 2
    assert learning_rate(110, 1.0, 10, 110) == pytest.approx(0.1)
    assert learning_rate(500, 1.0, 10, 110) == pytest.approx(0.1)  # resumed past the end: stays at the floor


def test_ema_decay_warms_up_then_stays_at_the_configured_decay():
    assert ema_decay(0, 0.999) == pytest.approx(0.1)
    assert ema_decay(10, 0.999) == pytest.approx(11 / 20)
    assert ema_decay(8990, 0.999) == 0.999  # (1 + n) / (10 + n) reaches 0.999 at n = 8990
    assert ema_decay(8989, 0.999) < 0.999


def test_the_ema_weights_are_lent_for_the_block_and_the_live_ones_come_back():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.ones(2))]
    ema = [torch.full((3,), 5.0), torch.full((2,), 7.0)]
    with swapped_in(params, ema):
        assert all(torch.equal(p, shadow) for p, shadow in zip(params, ema, strict=True))
    assert torch.equal(params[0], torch.zeros(3)) and torch.equal(params[1], torch.ones(2))
    with pytest.raises(RuntimeError, match="preview failed"), swapped_in(params, ema):
        raise RuntimeError("preview failed")
    assert torch.equal(params[0], torch.zeros(3)), "a failed preview must not leave the EMA weights in"
