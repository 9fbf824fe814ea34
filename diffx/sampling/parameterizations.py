"""What a network predicts, and how that becomes the ε̂ every sampler walks with.

The samplers (and the tracer and the views) work in one currency: the variance-preserving state
x_t = √ᾱ x_0 + √(1 − ᾱ) ε and the noise estimate ε̂. A *parameterization* is the exchange rate between that
and what a network was trained on:

* ε-prediction (Ho et al. 2020): the network sees x_t and t and predicts ε; ε̂ is its output.
* v-prediction (Salimans & Ho 2022, eq. 11): it predicts v = √ᾱ ε − √(1 − ᾱ) x_0; ε̂ = √(1 − ᾱ) x_t + √ᾱ v̂.
* rectified flow (Liu et al. 2022; Esser et al. 2024, "Scaling Rectified Flow Transformers", eq. 2-3): the
  network sees the straight-line mix x_s = (1 − s) x_0 + s ε at time s ∈ [0, 1] and predicts the velocity
  v = ε − x_0. The same point of the same path is the VP state scaled by k = 1/(√ᾱ + √(1 − ᾱ)):
  s = k √(1 − ᾱ) = σ / (1 + σ) with σ = √((1 − ᾱ)/ᾱ), and x_s = k x_t, so the network is given k x_t at
  time s·T, and ε̂ = x_s + (1 − s) v̂.

Because every parameterization is exchanged into ε̂ at the VP state, any sampler runs any network: a flow model
on a DDIM grid, an ε-model on Euler's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffx.errors import check_choice
from diffx.sampling.schedules import ZERO_SNR_ALPHA_CUMPROD, eps_from_prediction

PARAMETERIZATIONS = ("epsilon", "v_prediction", "flow")


@dataclass(frozen=True)
class Parameterization:
    """The exchange between the sampler's (x_t, t, ε̂) and a network's input, time and output.

    `name`: one of PARAMETERIZATIONS; `num_train_timesteps`: T, what a flow network's time s ∈ [0, 1] is scaled by
    (SD3 feeds it s · 1000).
    """

    name: str
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        check_choice("prediction type", self.name, PARAMETERIZATIONS)

    def network_input(self, x_t: torch.Tensor, t: torch.Tensor, signal_scale: float,
                      noise_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """What the network is given for the VP state x_t at timestep t (its scales √ᾱ, √(1 − ᾱ)): (input, time).

        ε and v networks see x_t and t themselves; a flow network sees x_s = x_t / (√ᾱ + √(1 − ᾱ)) at time s·T.
        """
        if self.name != "flow":
            return x_t, t
        s = noise_scale / (signal_scale + noise_scale)
        return (x_t / (signal_scale + noise_scale),
                torch.as_tensor(s * self.num_train_timesteps, dtype=t.dtype, device=t.device))

    def to_eps(self, output: torch.Tensor, x_t: torch.Tensor, signal_scale: float,
               noise_scale: float) -> torch.Tensor:
        """The ε̂ the network's `output` stands for, at the VP state x_t (its scales √ᾱ, √(1 − ᾱ))."""
        if self.name != "flow":
            return eps_from_prediction(output, x_t, signal_scale, noise_scale, self.name)
        s = noise_scale / (signal_scale + noise_scale)
        return eps_from_velocity(x_t / (signal_scale + noise_scale), s, output)


# ---------------------------------------------------------------------------------------------
# Rectified flow in its own units: x_s = (1 − s) x_0 + s ε, v = ε − x_0 (Esser et al. 2024, eq. 2-3 with
# SD3's naming: s is the flow's σ ∈ [0, 1]). Two estimates follow from one v̂, with no division, so they hold
# at s = 1 (pure noise), where the VP exchange's x̂0 = (x_t − √(1 − ᾱ) ε̂)/√ᾱ would be 0/0.


def eps_from_velocity(x_s: torch.Tensor, s: float, v: torch.Tensor) -> torch.Tensor:
    """ε̂ = x_s + (1 − s) v̂: the noise end of the straight line through x_s with direction v̂."""
    return x_s + (1 - s) * v


def x0_from_velocity(x_s: torch.Tensor, s: float, v: torch.Tensor) -> torch.Tensor:
    """x̂0 = x_s − s v̂: the clean end of the same line (what SD3's scheduler calls `denoised`)."""
    return x_s - s * v


def flow_alpha_cumprod(s: torch.Tensor | float) -> torch.Tensor:
    """ᾱ of the VP state x_s / n, n = √((1 − s)² + s²): (1 − s)² / ((1 − s)² + s²), float64.

    x_s / n = √ᾱ x_0 + √(1 − ᾱ) ε is the same point of the same path in variance-preserving units. At s = 1
    ᾱ would be 0 (σ = ∞); like a zero-terminal-SNR schedule it is held at ZERO_SNR_ALPHA_CUMPROD (σ ≈ 4096),
    so the per-step records stay finite."""
    s = torch.as_tensor(s, dtype=torch.float64)
    alpha_cumprod = (1 - s) ** 2 / ((1 - s) ** 2 + s**2)
    return alpha_cumprod.clamp(min=ZERO_SNR_ALPHA_CUMPROD)
