"""DDIM inversion: the deterministic DDIM sampler run backwards, clean latent → x_T.

DDIM with η = 0 (Song et al. 2021, eq. 12) maps x_t to the less noisy x_{t'} (t' = t − T/N):

    x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'}) ε_θ(x_t, t),   x̂_0 = (x_t − √(1 − ᾱ_t) ε_θ(x_t, t)) / √ᾱ_t.

It is an Euler step of an ODE (their §4.3), so it can be run the other way, from x_{t'} up to x_t. The
exact inverse would need ε_θ(x_t, t) at the very x_t being solved for; inversion uses the one point it
has, ε_θ(x_{t'}, t), and steps

    x_t = √ᾱ_t x̂_0 + √(1 − ᾱ_t) ε_θ(x_{t'}, t),   x̂_0 = (x_{t'} − √(1 − ᾱ_{t'}) ε_θ(x_{t'}, t)) / √ᾱ_{t'}.

The approximation ε_θ(x_{t'}, t) ≈ ε_θ(x_t, t) is what makes the round trip (invert, then sample) inexact:
each step errs by O(1/N²), the whole trip by O(1/N), so it vanishes as N grows, and not at all when ε_θ
does not depend on x. Classifier-free guidance at w > 1 amplifies the error step by step until the
round trip fails (Mokady et al. 2023, "Null-text Inversion", §3).

The grid is the DDIM sampler's (`sampling_grid` for "ddim", as `samplers.sample_ddim` walks it) visited
upwards; the model sees the step's target timestep t, as diffusers' `DDIMInverseScheduler` and the null-text
inversion code do, and the first step starts from ᾱ_0, where the DDIM sampler ends (SD's
`set_alpha_to_one=False`). Each step is reported to `callback` as a `StepRecord` (the state's σ is the one it is
lifted from), so the tracer and progress bars listen as they do to a sampler.
"""

from __future__ import annotations

import torch

from diffx.errors import InvalidArgumentError
from diffx.sampling.grids import Grid
from diffx.sampling.samplers import EpsModel, StepCallback, StepRecord


def invert_ddim(eps_model: EpsModel, latent: torch.Tensor, grid: Grid, *,
                callback: StepCallback | None = None) -> torch.Tensor:
    """Lift a clean latent (B, C, h, w) to the x_T from which `sample_ddim` (η = 0, the same `grid`) returns it.

    `eps_model(x_in, t) -> ε̂` is the same denoiser a sampler takes (with guidance inside it). The DDIM grid is
    visited upwards (1, 21, …, 981 for 50 leading steps); each step starts from the level the DDIM sampler would
    land on, t' = t − ⌊T/N⌋. Returns x at the grid's first (largest) timestep; every step is reported to `callback`.
    """
    if grid.sampler != "ddim" or grid.start_index:
        raise InvalidArgumentError("DDIM inversion walks a whole DDIM grid; make it with sampler 'ddim', no strength")
    schedule = grid.schedule
    alphas_cumprod = schedule.alphas_cumprod.to(latent.device)
    x = latent
    climb = zip(grid.timesteps.flip(0).tolist(), grid.prev_timesteps.flip(0).tolist(), strict=True)
    for i, (t, from_t) in enumerate(climb):
        # from_t: the level the state sits at, the DDIM sampler's "previous" timestep
        alpha_prod_from = alphas_cumprod[from_t] if from_t >= 0 else alphas_cumprod[0]
        alpha_prod_t = alphas_cumprod[t]

        eps_pred = eps_model(x, torch.tensor(t, dtype=torch.float32, device=x.device))  # ε_θ(x_{t'}, t)
        x0_pred = (x - (1 - alpha_prod_from) ** 0.5 * eps_pred) / alpha_prod_from**0.5
        x_next = alpha_prod_t**0.5 * x0_pred + (1 - alpha_prod_t) ** 0.5 * eps_pred  # (B, C, h, w) at level t
        if callback is not None:
            sigma = float(((1 - alpha_prod_from) / alpha_prod_from) ** 0.5)
            callback(StepRecord(index=i, num_steps=grid.steps, timestep=float(t), sigma=sigma,
                                alpha_cumprod=float(alpha_prod_from), x=x, state=x, eps_pred=eps_pred,
                                x0_pred=x0_pred, x_next=x_next, next_sigma=float(schedule.sigmas[t])))
        x = x_next
    return x
