"""Rectified-flow sampling: SD3's grid and its Euler and Heun steps, in the flow's own units.

A rectified-flow model (Liu et al. 2022; Esser et al. 2024, "Scaling Rectified Flow Transformers", §2-3) is trained
on the straight line between data and noise and predicts its velocity:

    x_s = (1 − s) x_0 + s ε,   s ∈ [0, 1],   v = dx_s/ds = ε − x_0

(s is what SD3's scheduler calls σ; the network is told s · T, T = 1000.) Sampling integrates dx/ds = v̂ from
s = 1, pure noise, to s = 0. The state is x_s itself, so unlike the VP samplers nothing here divides by √ᾱ, which
is 0 at s = 1: x̂0 = x_s − s v̂ and ε̂ = x_s + (1 − s) v̂ (`sampling.parameterizations`) hold at every s.

The grid is diffusers' `FlowMatchEulerDiscreteScheduler.set_timesteps` number for number: N times evenly spaced
from the largest to the smallest training σ, then shifted, s ↦ shift·s / (1 + (shift − 1)·s) (Esser et al. 2024,
§5.3.2: more steps at high noise for large pictures; SD3 uses shift 3), then a final 0. diffusers' smallest σ is
itself the shifted 1/T, so it is shifted twice; this is kept, since a seed must give diffusers' picture.

The per-step record (`StepRecord`) holds what the network was given, x_s (its `x`, `state`), the line's two ends
ε̂ and x̂0, and the step's σ and ᾱ in the samplers' common VP terms: x_s is the VP state scaled by
n = √((1 − s)² + s²), whose ᾱ = (1 − s)²/n² (held at 2⁻²⁴ at s = 1, like a zero-terminal-SNR schedule). So the
tracer records a flow run unchanged; views that draw the state say x_s (`views.steps.is_flow`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from diffx.errors import InvalidArgumentError, check_finite
from diffx.sampling.grids import Grid
from diffx.sampling.parameterizations import eps_from_velocity, flow_alpha_cumprod, x0_from_velocity
from diffx.sampling.records import StepCallback, StepRecord
from diffx.sampling.schedules import NoiseSchedule, check_steps

FLOW_TIME_SCALE = 1000.0  # a flow network is told s · 1000, as SD3's transformer is (its timesteps' range)
FLOW_SCHEDULE = "flow"  # the schedule name of a rectified-flow model (its SchedulerConfig's beta_schedule)
# What a flow grid can be walked with: SD3's two schedulers, and DDIM, whose deterministic step rebuilds the state
# from its x̂0 and ε̂ as √ᾱ' x̂0 + √(1 − ᾱ') ε̂ — in flow units (1 − s') x̂0 + s' ε̂, exactly the Euler step (the
# 2-D lab's `flow_ddim` shows the two agree to rounding). The stochastic samplers have no flow counterpart here.
FLOW_SAMPLERS = ("euler", "heun", "ddim")
MAX_SHIFT = 100.0

# (x_s (B, C, h, w), s · T as a 0-dim float32) -> v̂ (B, C, h, w), classifier-free guidance applied by the caller
VelocityModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_shift(shift: float) -> float:
    """`shift` if it is a usable time shift (finite, 0 < shift ≤ MAX_SHIFT), else a one-line error."""
    if not 0 < check_finite("shift", shift) <= MAX_SHIFT:
        raise InvalidArgumentError(f"shift must be above 0 and at most {MAX_SHIFT:g} (SD3 uses 3), got {shift:g}")
    return shift


def shift_times(s: np.ndarray | torch.Tensor, shift: float) -> np.ndarray | torch.Tensor:
    """s ↦ shift·s / (1 + (shift − 1)·s): the time shift (Esser et al. 2024, eq. 23); 1 and 0 stay put."""
    return shift * s / (1 + (shift - 1) * s)


def flow_schedule(num_train_timesteps: int = 1000) -> NoiseSchedule:
    """The flow path as a table of T training timesteps, for what reads one (charts of ᾱ and log-SNR against t):
    timestep k holds s = (k + 1)/T, diffusers' training table (its `sigmas = timesteps / T` for t = 1 … T), and
    ᾱ(s) = (1 − s)²/((1 − s)² + s²), the VP ᾱ of the same point, held at 2⁻²⁴ at s = 1."""
    s = torch.arange(1, num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    alphas_cumprod = flow_alpha_cumprod(s)
    alphas = alphas_cumprod / torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])  # ᾱ_k / ᾱ_{k−1}
    return NoiseSchedule(betas=(1 - alphas).float(), alphas=alphas.float(), alphas_cumprod=alphas_cumprod.float(),
                         sqrt_alphas_cumprod=alphas_cumprod.sqrt().float(),
                         sqrt_one_minus_alphas_cumprod=(1 - alphas_cumprod).sqrt().float(),
                         sigmas=((1 - alphas_cumprod) / alphas_cumprod).sqrt().float(), beta_schedule=FLOW_SCHEDULE)


def flow_grid(sampler: str, steps: int, shift: float = 1.0, num_train_timesteps: int = 1000,
              strength: float | None = None) -> Grid:
    """The grid of an N-step flow run: `flow_sigmas` s_0 = 1 > … > s_{N−1} > s_N = 0 (float32, N + 1), the
    network's timesteps s_i · T (float32, N) and the VP σ of each s; `strength` (image-to-image) starts the run
    at step ⌊N (1 − strength)⌋, as diffusers' SD3 image-to-image pipeline."""
    if sampler not in FLOW_SAMPLERS:
        raise InvalidArgumentError(f"a flow model samples with {', '.join(FLOW_SAMPLERS)} (rectified flow), "
                                   f"not {sampler}; pass --sampler euler")
    check_steps(steps, num_train_timesteps)
    check_shift(shift)
    T = num_train_timesteps
    sigma_max, sigma_min = shift_times(1.0, shift), shift_times(1.0 / T, shift)  # the training table's ends
    # np.linspace in float64, then float32 tensors: diffusers' arithmetic, so the grids agree bit for bit.
    s = shift_times(np.linspace(sigma_max * T, sigma_min * T, steps) / T, shift)
    flow_sigmas = torch.cat([torch.from_numpy(s).float(), torch.zeros(1)])
    alpha_cumprod = flow_alpha_cumprod(flow_sigmas.double()).clamp(max=1.0)
    vp_sigmas = ((1 - alpha_cumprod) / alpha_cumprod).sqrt().float()
    # SD3's image-to-image start: int(N − min(N·strength, N)), strength not rounded first as SD's pipelines do.
    start_index = 0 if strength is None else int(max(steps - min(steps * strength, steps), 0))
    return Grid(sampler=sampler, schedule=flow_schedule(T), spacing="trailing", karras=False,
                timesteps=flow_sigmas[:-1] * T, sigmas=vp_sigmas, start_index=start_index, flow_sigmas=flow_sigmas)


def _report(callback: StepCallback | None, index: int, num_steps: int, s: float, s_next: float,
            timestep: torch.Tensor, x: torch.Tensor, v: torch.Tensor, x_next: torch.Tensor) -> None:
    """One model evaluation as a `StepRecord` (module docstring): x_s, its ε̂ and x̂0, the VP σ and ᾱ of s."""
    if callback is None:
        return
    alpha_cumprod, alpha_next = (float(flow_alpha_cumprod(time)) for time in (s, s_next))
    sigma, next_sigma = (((1 - a) / a) ** 0.5 for a in (alpha_cumprod, alpha_next))
    callback(StepRecord(index=index, num_steps=num_steps, timestep=float(timestep), sigma=sigma,
        alpha_cumprod=alpha_cumprod, x=x, state=x, eps_pred=eps_from_velocity(x, s, v),
                        x0_pred=x0_from_velocity(x, s, v), x_next=x_next, next_sigma=next_sigma))


def flow_start(grid: Grid, noise: torch.Tensor, init_latent: torch.Tensor | None) -> torch.Tensor:
    """x at the first step run: the noise (s_0 = 1), or the init latent on the line to it, (1 − s) x_0 + s ε
    (diffusers' `scale_noise`)."""
    if init_latent is None:
        return noise.float()
    s = float(grid.flow_sigmas[grid.start_index])
    return (1 - s) * init_latent.float() + s * noise.float()


def _times(grid: Grid) -> list[float]:
    return [float(s) for s in grid.flow_sigmas]


def sample_flow_euler(velocity_model: VelocityModel, noise: torch.Tensor, grid: Grid, *,
                      init_latent: torch.Tensor | None = None, callback: StepCallback | None = None) -> torch.Tensor:
    """x_{i+1} = x_i + (s_{i+1} − s_i) v̂(x_i, s_i) (Esser et al. 2024, eq. 1 discretised; diffusers'
    FlowMatchEulerDiscreteScheduler.step, in float32). One evaluation a step."""
    s = _times(grid)
    x = flow_start(grid, noise, init_latent)
    run = range(grid.start_index, grid.steps)
    for index, i in enumerate(run):
        v = velocity_model(x, grid.timesteps[i]).float()
        x_next = x + (s[i + 1] - s[i]) * v
        _report(callback, index, len(run), s[i], s[i + 1], grid.timesteps[i], x, v, x_next)
        x = x_next
    return x


def sample_flow_heun(velocity_model: VelocityModel, noise: torch.Tensor, grid: Grid, *,
                     init_latent: torch.Tensor | None = None, callback: StepCallback | None = None) -> torch.Tensor:
    """Heun's method (Karras et al. 2022, Alg. 1) on dx/ds = v̂: the Euler step as a predictor x̃, then
    x_{i+1} = x_i + (s_{i+1} − s_i) (v̂(x_i, s_i) + v̂(x̃, s_{i+1}))/2 — except the last step, which lands on s = 0
    by Euler alone (diffusers' FlowMatchHeunDiscreteScheduler). 2N − 1 evaluations; each is reported, the
    correction's with the Euler predictor as its state, as the σ-space Heun's are."""
    s = _times(grid)
    x = flow_start(grid, noise, init_latent)
    run = range(grid.start_index, grid.steps)
    evaluations = 2 * len(run) - 1
    index = 0
    for i in run:
        dt = s[i + 1] - s[i]
        v = velocity_model(x, grid.timesteps[i]).float()
        x_euler = x + dt * v
        _report(callback, index, evaluations, s[i], s[i + 1], grid.timesteps[i], x, v, x_euler)
        index += 1
        if s[i + 1] == 0:  # the last step: the slope at s = 0 is not needed, Euler lands on x̂0
            x = x_euler
            continue
        v_next = velocity_model(x_euler, grid.timesteps[i + 1]).float()
        x_next = x + dt * (v + v_next) / 2
        _report(callback, index, evaluations, s[i + 1], s[i + 1], grid.timesteps[i + 1], x_euler, v_next, x_next)
        index += 1
        x = x_next
    return x



def invert_flow(velocity_model: VelocityModel, latent: torch.Tensor, grid: Grid, *,
                callback: StepCallback | None = None) -> torch.Tensor:
    """The flow run backwards: lift a clean latent (s = 0) to the x_1 from which the Euler sampler (the same
    `grid`) returns it. Each step climbs from s_{i+1} to s_i along the velocity the sampler will evaluate there,
    x_{s_i} = x_{s_{i+1}} + (s_i − s_{i+1}) v̂(x_{s_{i+1}}, s_i) — the flow form of DDIM inversion (Song et al. 2021,
    sec. 4.3; diffusers' DDIMInverseScheduler likewise uses the higher level's time). Every step is reported to
    `callback`; returns x at s_0 = 1."""
    if grid.flow_sigmas is None or grid.start_index:
        raise InvalidArgumentError("flow inversion walks a whole flow grid; make it with flow_grid, no strength")
    s = _times(grid)
    x = latent.float()
    for index, i in enumerate(reversed(range(grid.steps))):  # i = N − 1, …, 0: from s_{i+1} up to s_i
        v = velocity_model(x, grid.timesteps[i]).float()
        x_next = x + (s[i] - s[i + 1]) * v
        _report(callback, index, grid.steps, s[i + 1], s[i], grid.timesteps[i], x, v, x_next)
        x = x_next
    return x


def flow_sample(x0: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor,
                num_train_timesteps: int = 1000) -> torch.Tensor:
    """x_s = (1 − s) x_0 + s ε at training timesteps `timesteps` (B,) of `flow_schedule`'s table (s = (t + 1)/T):
    the flow path's forward process, the counterpart of `schedules.q_sample`. x0, noise (B or 1, C, h, w)."""
    s = ((timesteps.double() + 1) / num_train_timesteps).to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise
