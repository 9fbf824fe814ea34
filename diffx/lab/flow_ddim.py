"""A flow model is a diffusion model: exchanged into ε̂, diffx's own DDIM over the flow's t grid walks flow Euler's path.

The straight path x_t = (1 − t) x_0 + t ε is a variance-preserving state rescaled: divide by n = √((1 − t)² + t²)
and x_t / n = √ᾱ x_0 + √(1 − ᾱ) ε with

    √ᾱ = (1 − t)/n,  √(1 − ᾱ) = t/n,  i.e. ᾱ(t) = (1 − t)² / ((1 − t)² + t²),  σ = √((1 − ᾱ)/ᾱ) = t / (1 − t)

(so x_t / (1 − t) = x_0 + σ ε, the σ-space state). `sampling.parameterizations.Parameterization("flow")` makes that
exchange for any sampler: it hands the network x_t = (VP state) · n at time t · T and returns ε̂ = x_t + (1 − t) v̂.

DDIM's deterministic step (Song et al. 2021, eq. 12) from t to t' rebuilds the state from its two estimates,
x' = √ᾱ' x̂_0 + √(1 − ᾱ') ε̂; in flow units (× n') that is (1 − t') x̂_0 + t' ε̂ = x + (t' − t) v̂ with
x̂_0 = x − t v̂ and ε̂ = x + (1 − t) v̂ — exactly flow Euler's step. So the two samplers agree to rounding, step by
step, when DDIM walks the flow's own grid: a `NoiseSchedule` whose timestep k is the flow time t_{N−k} (timestep 0
is t = 0, ᾱ = 1, where DDIM's last step lands on x̂_0), run by `samplers.sample_ddim` unchanged.

One point needs care: at t = 1, ᾱ = 0 and DDIM's x̂_0 = (x_t − √(1 − ᾱ) ε̂)/√ᾱ is 0/0. The table starts DDIM a
hair below, at t = 1 − T_BELOW_ONE (ᾱ ≈ 1e-16), from the same noise: the first step then differs from flow
Euler's by about T_BELOW_ONE · |x̂_0|, and in float64 the cancellation in x̂_0 costs about 1e-16 / 1e-8. Both are
far below float32's resolution of the particles, which is why the comparison runs in float64.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from diffx.lab.flow import FLOW_TIME_SCALE, run_flow
from diffx.lab.model import LabModel, one_thread
from diffx.lab.sampling import LabRun
from diffx.sampling.grids import Grid
from diffx.sampling.parameterizations import Parameterization
from diffx.sampling.samplers import EpsModel, sample_ddim
from diffx.sampling.schedules import NoiseSchedule, vp_scales

T_BELOW_ONE = 1e-8  # DDIM's first time is 1 − T_BELOW_ONE: at t = 1 its x̂_0 would be 0/0


def flow_schedule(times: Tensor) -> NoiseSchedule:
    """The VP schedule of the flow's grid `times` (t_0 = 1 > … > t_N = 0, from `flow.flow_times`), float64:
    timestep k holds ᾱ(t_{N−k}) = (1 − t)² / ((1 − t)² + t²), so timestep 0 is the clean end (ᾱ = 1, β = 0)."""
    t = times.double().flip(0).clamp(max=1 - T_BELOW_ONE)  # (N + 1,) increasing: timestep k ↔ t_{N−k}
    alphas_cumprod = (1 - t) ** 2 / ((1 - t) ** 2 + t**2)
    alphas = alphas_cumprod / torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])  # ᾱ_k / ᾱ_{k−1}
    return NoiseSchedule(betas=1 - alphas, alphas=alphas, alphas_cumprod=alphas_cumprod,
                         sqrt_alphas_cumprod=alphas_cumprod.sqrt(),
                         sqrt_one_minus_alphas_cumprod=(1 - alphas_cumprod).sqrt(),
                         sigmas=((1 - alphas_cumprod) / alphas_cumprod).sqrt(), beta_schedule="flow")


def flow_ddim_grid(times: Tensor) -> Grid:
    """DDIM's grid over the flow's `times`: timesteps N, N − 1, …, 1, each landing on the next (the last on 0)."""
    schedule = flow_schedule(times)
    steps = len(times) - 1
    timesteps = torch.arange(steps, 0, -1)  # (N,) int64
    # "trailing": the grid starts at the table's top, as a flow sampler starts at t = 1.
    return Grid(sampler="ddim", schedule=schedule, spacing="trailing", karras=False, timesteps=timesteps,
                sigmas=schedule.sigmas[torch.cat([timesteps, timesteps.new_zeros(1)])].float(),
                prev_timesteps=timesteps - 1)


def flow_as_eps(model: LabModel, schedule: NoiseSchedule) -> EpsModel:
    """The samplers' `eps_model(x_t, t)` for a flow model on `schedule` (from `flow_schedule`): the VP state and
    timestep exchanged into the network's x_t and time, its velocity into ε̂, by `Parameterization("flow")`."""
    parameterization = Parameterization("flow", int(FLOW_TIME_SCALE))

    def eps_model(x_t: Tensor, t: Tensor) -> Tensor:
        index = int(t)
        signal, noise = schedule.sqrt_alphas_cumprod[index], schedule.sqrt_one_minus_alphas_cumprod[index]
        x_in, time = parameterization.network_input(x_t, t, signal, noise)
        return parameterization.to_eps(model(x_in, time), x_t, signal, noise)

    return eps_model


@torch.no_grad()
def flow_by_ddim(model: LabModel, times: Tensor, noise: Tensor) -> Tensor:
    """The samples (N, 2) of diffx's DDIM (η = 0) run on the flow model over its own grid `times`, from `noise`."""
    grid = flow_ddim_grid(times)
    with one_thread():
        return sample_ddim(flow_as_eps(model, grid.schedule), noise, grid)


def equivalence_gap(model: LabModel, times: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, float]:
    """Flow Euler's and DDIM's samples from `noise` over `times`, both in float64 on a float64 copy of the model,
    and the largest coordinate difference between them: ((N, 2), (N, 2), max |Δ|)."""
    model64 = copy.deepcopy(model).double()
    noise64 = noise.double()
    euler = run_flow(model64, "flow_euler", times, noise64).samples
    ddim = flow_by_ddim(model64, times, noise64)
    return euler, ddim, float((euler - ddim).abs().max())


def straight_line_path(run: LabRun, schedule: NoiseSchedule) -> Tensor:
    """A diffusion run's path (S + 1, N, 2) in the flow's units: each VP state x_t / (√ᾱ + √(1 − ᾱ)) =
    (1 − s) x_0 + s ε with s = √(1 − ᾱ)/(√ᾱ + √(1 − ᾱ)), so diffusion's and flow's paths are measured alike.
    The sample sits at timestep 0, where DDIM ends (ᾱ_0); a σ-space sampler's ends at ᾱ = 1, 1% away."""
    signal, noise = vp_scales(schedule, torch.tensor(run.timesteps, dtype=torch.float64))  # (S + 1,) each
    return run.path / (signal + noise).to(run.path.dtype)[:, None, None]
