"""Training a rectified-flow model: the straight path, SD3's logit-normal times and the velocity loss.

Esser et al. 2024 ("Scaling Rectified Flow Transformers for High-Resolution Image Synthesis"):

    x_s = (1 − s) x_0 + s ε                         the straight line from data (s = 0) to noise (s = 1), eq. 1/§2
    L = E_{s, x_0, ε} ‖(ε − x_0) − v_θ(x_s, s)‖²    the conditional flow-matching loss, eq. 3 with v = ε − x_0
    s = sigmoid(u),  u ~ N(m, σ²)                   logit-normal times (§3.1, eq. 19; m = 0, σ = 1 best, tab. 1)
    s ↦ shift·s / (1 + (shift − 1)·s)               the time shift (§5.3.2, eq. 23), `sampling.flow.shift_times`

Logit-normal sampling spends the steps on the middle times, where the velocity is hardest to predict (at s → 0 it
is ε − x_0 ≈ ε − x_s, at s → 1 ≈ x_s − E[x_0]); the shift moves them towards noise for pictures with many
tokens. The network is told s · T (T = 1000), as SD3's transformer is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from diffx.sampling.flow import FLOW_TIME_SCALE, shift_times


def flow_interpolate(x0: Tensor, noise: Tensor, s: Tensor) -> Tensor:
    """x_s = (1 − s) x_0 + s ε, the straight line from data to noise (Liu et al. 2022, eq. 1); s (B,) or 0-dim."""
    s = s.reshape(-1, *([1] * (x0.dim() - 1))) if s.dim() else s  # (B,) -> (B, 1, ...)
    return (1 - s) * x0 + s * noise


def logit_normal_times(batch: int, generator: torch.Generator | None = None, mean: float = 0.0, std: float = 1.0,
                       shift: float = 1.0) -> Tensor:
    """(batch,) times s = sigmoid(u), u ~ N(mean, std²) (Esser et al. 2024, eq. 19), then shifted (eq. 23)."""
    u = torch.randn(batch, generator=generator) * std + mean
    return shift_times(torch.sigmoid(u), shift)


def flow_training_loss(velocity_model: Callable[[Tensor, Tensor], Tensor], x0: Tensor,
                       generator: torch.Generator | None = None, shift: float = 1.0) -> Tensor:
    """L = E ‖(ε − x_0) − v_θ(x_s, s · T)‖² with s logit-normal (m = 0, σ = 1) and shifted, ε ~ N(0, I).

    `velocity_model(x_s, s · T)` returns the predicted velocity. Random numbers are drawn on the generator's device
    (the CPU by default) and moved, so a seed means the same thing on every device. Returns the scalar mean
    squared error, in fp32."""
    s = logit_normal_times(x0.shape[0], generator, shift=shift).to(x0.device, x0.dtype)  # (B,)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x_s = flow_interpolate(x0, noise, s)
    return F.mse_loss(velocity_model(x_s, s * FLOW_TIME_SCALE).float(), (noise - x0).float())
