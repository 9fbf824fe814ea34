"""Running `diffx.samplers` on the lab model, keeping every particle's path.

The samplers are called exactly as the pipeline calls them (`samplers.sample(name, eps_model, noise,
schedule, steps, …)`); the lab only listens to their per-step callback. Paths are kept in the VP
coordinates x_t = √ᾱ x_0 + √(1 − ᾱ) ε — the model input each `StepRecord.x` carries — so DDIM (whose
state is x_t) and Euler (whose state is x_0 + σ ε) are drawn on the same axes as q(x_t).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffx.lab.model import LabModel, guided_eps, one_thread
from diffx.sampling.grids import GridSpec, sampling_grid
from diffx.sampling.samplers import EpsModel, StepRecord, sample
from diffx.sampling.schedules import NoiseSchedule


@dataclass
class LabRun:
    """One sampler run on N particles.

    path       (S + 1, N, 2) the VP state x_t before each of the S steps, then the final sample
    timesteps  the S timesteps those states sit at (the sampler's own grid), then 0 for the sample
    nfe        model evaluations spent to reach each path point (Heun: two per step but the last)
    labels     (N,) the class each particle was guided to, or None (unconditional)
    """

    sampler: str
    path: Tensor
    timesteps: list[float]
    nfe: list[int]
    labels: Tensor | None = None

    @property
    def samples(self) -> Tensor:
        return self.path[-1]  # (N, 2)


def initial_noise(n: int, seed: int) -> Tensor:
    """x_T's ε ~ N(0, I), (n, 2): the same for every sampler with the same seed."""
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


def run_sampler(model: LabModel, schedule: NoiseSchedule, sampler: str, steps: int, noise: Tensor, *,
                labels: Tensor | None = None, guidance: float = 1.0, seed: int = 0) -> LabRun:
    """Sample from `noise` (N, 2) with one of `samplers.SAMPLERS` and record the path, guided by classifier-free
    guidance of weight `guidance` towards `labels` (N,) (None: unconditional). See `run_denoiser`."""
    return run_denoiser(guided_eps(model, labels, guidance), schedule, sampler, steps, noise, labels=labels,
                        seed=seed)


@torch.no_grad()
def run_denoiser(eps_model: EpsModel, schedule: NoiseSchedule, sampler: str, steps: int, noise: Tensor, *,
                 labels: Tensor | None = None, seed: int = 0, variance: str = "fixed_small") -> LabRun:
    """Sample from `noise` (N, 2) with one of `samplers.SAMPLERS` over the denoiser `eps_model(x_t, t)` (any
    guidance already inside it; `labels` only says what it was guided to) and record the path; `variance` is
    DDPM's (`samplers.VARIANCES`).

    The state at a timestep is the VP input of the *last* model evaluation there: Heun evaluates each
    inner timestep twice, first at its Euler predictor, then at the corrected state it keeps.
    `seed` drives the ancestral samplers' fresh noise (ddpm, euler_a).
    """
    states: dict[float, Tensor] = {}  # timestep -> (N, 2), in the order the sampler visits them
    calls: dict[float, int] = {}

    def record(step: StepRecord) -> None:
        states[step.timestep] = step.x.clone()
        calls[step.timestep] = step.index + 1

    with one_thread():
        grid = sampling_grid(GridSpec(sampler, steps), schedule)
        final = sample(eps_model, noise, grid, variance=variance, generator=torch.Generator().manual_seed(seed),
                       callback=record)
    timesteps = list(states)
    path = torch.stack([*states.values(), final])  # (S + 1, N, 2)
    nfe = [calls[t] - 1 for t in timesteps] + [max(calls.values())]
    return LabRun(sampler=sampler, path=path, timesteps=[*timesteps, 0.0], nfe=nfe, labels=labels)
