"""Schedule and loss plots: values plotted, and pictures produced off-screen."""

import numpy as np
import pytest
import torch

from diffx.errors import InvalidArgumentError
from diffx.render.plots import ema_smooth, plot_loss_curve, plot_schedules, schedule_curves


def _scaled_linear(steps=100):
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, steps) ** 2
    return torch.cumprod(1 - betas, dim=0)


def test_schedule_curves_values():
    alphas_cumprod = torch.tensor([1.0, 0.75, 0.5, 0.0])
    signal, noise, log_snr = list(schedule_curves(alphas_cumprod).values())[1:]
    np.testing.assert_allclose(signal[1] ** 2 + noise[1] ** 2, 1.0)
    assert log_snr[2] == pytest.approx(0.0)  # ᾱ = 1/2: as much signal as noise
    assert log_snr[1] == pytest.approx(np.log(3.0))
    assert np.isfinite(log_snr).all()  # ᾱ = 1 and ᾱ = 0 stay plottable
    assert np.all(np.diff(log_snr) < 0)


def test_plot_schedules_draws_marks():
    linear = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 100), dim=0)
    schedules = {"scaled_linear": _scaled_linear(), "linear": linear}
    plain = plot_schedules(schedules)
    marked = plot_schedules(schedules, marked_timesteps=[99, 66, 33, 0])
    assert plain.mode == "RGB" and plain.size == marked.size == (1000, 700)
    assert not np.array_equal(np.asarray(plain), np.asarray(marked))
    with pytest.raises(InvalidArgumentError):
        plot_schedules({})


def test_ema_smooth_is_bias_corrected():
    np.testing.assert_allclose(ema_smooth(np.full(10, 3.0), 0.9), 3.0)
    values = np.array([1.0, 5.0, 2.0])
    np.testing.assert_allclose(ema_smooth(values, 0.0), values)
    assert ema_smooth(values, 0.5)[1] == pytest.approx((0.25 * 1 + 0.5 * 5) / 0.75)


def test_plot_loss_curve():
    steps = np.arange(50)
    image = plot_loss_curve(steps, np.exp(-steps / 10) + 0.01)
    assert image.mode == "RGB" and image.size == (700, 400)
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 10
    with pytest.raises(InvalidArgumentError):
        plot_loss_curve([1, 2], [0.1])
