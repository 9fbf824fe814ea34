"""The schedule charts: ᾱ_t and log-SNR for a diffusion schedule; 1 − s, the share of x₀ in a flow model's x_s, in
place of ᾱ for a rectified-flow path (recovered exactly from the VP ᾱ the flow path is tabulated in)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from diffx.render.charts import Chart, flow_signal_share, schedule_charts
from diffx.sampling.flow import flow_schedule
from diffx.sampling.parameterizations import flow_alpha_cumprod
from diffx.sampling.schedules import NoiseSchedule


def titles(svg: str) -> list[str]:
    return re.findall(r'<text class="title"[^>]*>([^<]*)</text>', svg)


@pytest.mark.parametrize("s", [0.0, 1e-3, 0.25, 0.5, 0.9, 0.999])
def test_the_signal_share_inverts_the_flow_path_s_alpha_bar(s) -> None:
    abar = flow_alpha_cumprod(s).numpy()
    assert flow_signal_share(abar) == pytest.approx(1 - s, abs=1e-12)


def test_the_signal_share_is_finite_at_both_ends() -> None:
    shares = flow_signal_share(np.array([0.0, 1.0]))
    assert shares.tolist() == [0.0, 1.0]


def test_a_flow_chart_plots_one_minus_s_against_t() -> None:
    abar = flow_schedule().alphas_cumprod.double().numpy()  # timestep k holds s = (k + 1) / 1000
    timesteps = np.array([999.0, 499.0, 0.0])
    svg, (markers,) = schedule_charts({"flow": abar}, [(timesteps, abar[[999, 499, 0]])], ["#123456"], flow=True)
    assert titles(svg) == ["1 − s — the share of x₀ in x_s", "log-SNR λ = 2 log((1 − s) / s)"]
    assert "timestep t = 1000 s" in svg and "ᾱ" not in svg
    chart = Chart(999, 0.0, 1.0)
    assert [y for _, y in markers["abar"]] == [chart.y(v) for v in (0.0, 0.5, 0.999)]


def test_a_diffusion_chart_plots_alpha_bar() -> None:
    abar = NoiseSchedule.create("scaled_linear", 1000).alphas_cumprod.double().numpy()
    timesteps = np.array([999.0, 0.0])
    svg, (markers,) = schedule_charts({"scaled_linear": abar}, [(timesteps, abar[[999, 0]])], ["#123456"])
    assert titles(svg) == ["ᾱ_t — how much signal is left", "log-SNR λ_t = log(ᾱ_t / (1 − ᾱ_t))"]
    assert [y for _, y in markers["abar"]] == [Chart(999, 0.0, 1.0).y(v) for v in abar[[999, 0]]]
