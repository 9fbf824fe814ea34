"""What a sampler reports at every model evaluation: the `StepRecord` every observer (tracer, progress, views) reads.

One record type for every sampler, VP, σ-space or flow (`diffx.sampling.samplers`, `diffx.sampling.flow`), so
whatever watches a run needs to know nothing of how the sampler keeps its state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class StepRecord:
    """What one model evaluation saw and produced.

    `x` is the model input, the VP-space x_t (a rectified-flow sampler's x_s); `state` is the sampler's own variable
    (x_t for VP samplers, x_0 + σ ε for σ-space samplers, x_s for flow samplers) and `x_next` is the state after
    the step, i.e. the next record's `state` (after the last step: the returned latent). `x_next` is the very tensor
    the sampler continues from, so a callback may edit it in place (inpainting blends the known region back in).
    """

    index: int  # 0-based model evaluation
    num_steps: int  # model evaluations in this run
    timestep: float  # t given to the model
    sigma: float  # σ = √((1 - ᾱ) / ᾱ) of the state
    alpha_cumprod: float  # ᾱ = 1 / (σ² + 1)
    x: torch.Tensor  # (B, C, H, W) the model input: VP x_t, or a flow sampler's x_s = (1 − s) x_0 + s ε
    state: torch.Tensor  # (B, C, H, W) the sampler's state before the step
    eps_pred: torch.Tensor  # ε_θ(x_t, t)
    x0_pred: torch.Tensor  # the x_0 estimate this step implies
    x_next: torch.Tensor  # the state after the step
    next_sigma: float  # σ of x_next (0 once the sampler has reached the clean latent)


StepCallback = Callable[[StepRecord], None]
