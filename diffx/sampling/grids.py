"""The sampling grid: where a sampler evaluates the model, built once, before the loop.

k-diffusion's shape: a sampler is a plain function over a precomputed grid of noise levels. `sampling_grid`
makes the grid each of diffusers' schedulers makes in `set_timesteps`, so a seed gives diffusers' picture:

* DDPM, DDIM (VP samplers, state x_t): the spaced timesteps t_i (Lin et al. 2024, Table 2) and the t' each step
  lands on — DDPM the next grid point, DDIM t − ⌊T/N⌋ (the two agree for "leading" spacing).
* DPM-Solver++(2M): N + 1 timesteps with the last dropped (or Karras σ mapped back to whole timesteps), and σ
  ending in 0.
* Euler, Euler a, Heun (σ-space, state x_0 + σ ε): σ interpolated linearly in t between the training σ's, or
  Karras et al. 2022's σ (eq. 5) with fractional timesteps; σ ends in 0.

Image-to-image runs only the last steps of the same grid: `start_index` (diffusers' `get_timesteps`).
Editing, the experiments, inversion, the views and the embedded benchmarks read a run's timesteps from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from diffx.errors import InvalidArgumentError, check_choice
from diffx.sampling.schedules import (
    NoiseSchedule,
    check_steps,
    img2img_start,
    karras_sigmas,
    sigma_to_t,
    spaced_timesteps,
)

SAMPLERS = ("ddpm", "ddim", "euler", "euler_a", "heun", "dpmpp_2m")
KARRAS_SAMPLERS = ("euler", "euler_a", "heun", "dpmpp_2m")
VP_SAMPLERS = ("ddpm", "ddim")  # keep x_t itself
SIGMA_SAMPLERS = ("euler", "euler_a", "heun")  # keep x = x_t / √ᾱ = x_0 + σ ε


class GridSettings(Protocol):
    """What a grid is made from: `diffx.pipeline.settings.ResolvedSettings` has these, and so has `GridSpec`."""

    sampler: str
    steps: int
    spacing: str
    karras: bool


@dataclass(frozen=True)
class GridSpec:
    """The grid settings alone, for callers without a generation's settings (the 2-D lab, scripts)."""

    sampler: str
    steps: int
    spacing: str = "leading"
    karras: bool = False


@dataclass(frozen=True)
class Grid:
    """One run's grid: the model's timestep and the state's σ at every step.

    `timesteps` (N,): the t the model sees at step i (int64 for DDPM, DDIM and DPM-Solver++, float32 for the
    σ-space samplers); `sigmas` (N + 1,) float32: σ = √((1 − ᾱ)/ᾱ) of the state at step i, and last the σ of the
    result (0 where the sampler ends clean; DDPM/DDIM end at their last t'); `prev_timesteps` (N,) int64, DDPM
    and DDIM only: the t' step i lands on (< 0: past t = 0). A run takes steps `start_index` … N − 1.
    `flow_sigmas` (N + 1,) float32, rectified-flow grids only (`diffx.sampling.flow.flow_grid`): the flow time
    s_i ∈ [0, 1] of the state x_s = (1 − s) x_0 + s ε at step i, ending in 0; `sigmas` then holds the VP σ of each.
    """

    sampler: str
    schedule: NoiseSchedule
    spacing: str
    karras: bool
    timesteps: torch.Tensor
    sigmas: torch.Tensor
    prev_timesteps: torch.Tensor | None = None
    start_index: int = 0
    flow_sigmas: torch.Tensor | None = None

    @property
    def steps(self) -> int:
        """N, the grid's steps (a run from `start_index` takes the last N − start_index of them)."""
        return len(self.timesteps)

    @property
    def init_noise_sigma(self) -> float:
        """How much the unit noise ε is scaled to start a σ-space sampler (1 for VP and flow samplers): σ_max with
        linspace or trailing spacing, √(σ_max² + 1) with leading spacing — diffusers' choice."""
        if self.sampler not in SIGMA_SAMPLERS or self.flow_sigmas is not None:  # a flow run starts at x_1 = ε
            return 1.0
        sigma_max = self.sigmas.max()
        return float(sigma_max if self.spacing in ("linspace", "trailing") else (sigma_max**2 + 1) ** 0.5)

    def model_timesteps(self) -> list[float]:
        """The timesteps at which the sampler calls the model, in order: one per step run; Heun evaluates t_0,
        t_1, t_1, t_2, t_2, …, t_{N-1} (2N − 1 calls). These are the `StepRecord.timestep`s a run reports."""
        timesteps = [float(t) for t in self.timesteps[self.start_index:]]
        if self.sampler != "heun":
            return timesteps
        calls = []
        for i, t in enumerate(timesteps):
            calls.append(t)
            if i + 1 < len(timesteps):  # the Heun correction evaluates again at the next timestep
                calls.append(timesteps[i + 1])
        return calls


def sampling_grid(settings: GridSettings, schedule: NoiseSchedule, *, steps_offset: int = 1,
                  strength: float | None = None) -> Grid:
    """The grid of `settings.sampler` with `settings.steps` steps over `schedule` (see the module docstring).

    `steps_offset`: the model's scheduler config's (SD: 1). `strength` (image-to-image, 0 to 1): the run skips the
    first (1 − strength) of the steps, as diffusers' StableDiffusionImg2ImgPipeline.
    """
    sampler, steps, spacing, karras = settings.sampler, settings.steps, settings.spacing, settings.karras
    check_choice("sampler", sampler, SAMPLERS)
    check_steps(steps, schedule.num_train_timesteps)
    if karras and sampler not in KARRAS_SAMPLERS:
        raise InvalidArgumentError(f"Karras sigmas apply to {', '.join(KARRAS_SAMPLERS)}, not {sampler}; "
                                   "drop karras or pick one of those samplers")
    start_index = 0 if strength is None else img2img_start(steps, strength)
    common = {"sampler": sampler, "schedule": schedule, "spacing": spacing, "karras": karras,
              "start_index": start_index}
    if sampler in VP_SAMPLERS:
        timesteps, prev_timesteps = _vp_grid(schedule, sampler, steps, spacing, steps_offset)
        last = int(prev_timesteps[-1])
        # Past t = 0 DDPM reaches the clean latent (ᾱ = 1); DDIM stops at ᾱ_0 (SD's set_alpha_to_one=False).
        after = schedule.sigmas[max(last, 0)] if last >= 0 or sampler == "ddim" else torch.tensor(0.0)
        sigmas = torch.cat([schedule.sigmas[timesteps], after[None]]).float()
        return Grid(timesteps=timesteps, sigmas=sigmas, prev_timesteps=prev_timesteps, **common)
    if sampler == "dpmpp_2m":
        timesteps, sigmas = _dpm_grid(schedule, steps, spacing, steps_offset, karras)
    else:
        timesteps, sigmas = _sigma_grid(schedule, steps, spacing, steps_offset, karras)
    return Grid(timesteps=timesteps, sigmas=sigmas, **common)


def _vp_grid(schedule: NoiseSchedule, sampler: str, steps: int, spacing: str,
             steps_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps (N,) int64 and the t' (N,) int64 each step lands on: DDPM the next grid point (−1 after the
    last: ᾱ = 1), DDIM t − ⌊T/N⌋ (diffusers' DDIMScheduler; past 0 it uses ᾱ_0, `set_alpha_to_one=False`)."""
    T = schedule.num_train_timesteps
    timesteps = spaced_timesteps(T, steps, spacing, steps_offset)
    if sampler == "ddim":
        return timesteps, timesteps - T // steps
    return timesteps, torch.cat([timesteps[1:], timesteps.new_full((1,), -1)])


def _dpm_grid(schedule: NoiseSchedule, steps: int, spacing: str, steps_offset: int,
              karras: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps (N,) int64 and σ (N + 1,) float32 ending in 0, as diffusers' DPMSolverMultistepScheduler.

    Its leading/linspace grids are N + 1 points ending at t = 0 with that last point dropped; with
    Karras sigmas the whole training range σ_0 … σ_{T-1} is respaced and mapped back to timesteps.
    """
    T = schedule.num_train_timesteps
    if spacing == "trailing":
        timesteps = spaced_timesteps(T, steps, spacing, steps_offset)
    else:
        check_steps(steps, T - 1)  # the grid has steps + 1 points
        timesteps = spaced_timesteps(T, steps + 1, spacing, steps_offset)[:-1]
    if karras:
        sigmas = karras_sigmas(schedule.sigmas[0].item(), schedule.sigmas[-1].item(), steps)
        fractional = sigma_to_t(schedule, sigmas)
        # diffusers rounds to whole timesteps except for the cosine schedule, then truncates to int64.
        timesteps = (fractional if schedule.beta_schedule == "cosine" else fractional.round()).long()
    else:
        sigmas = schedule.sigmas[timesteps].double()
    return timesteps, torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def _sigma_grid(schedule: NoiseSchedule, steps: int, spacing: str, steps_offset: int,
                karras: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps (N,) float32 and σ (N + 1,) float32 ending in 0, as diffusers' Euler/Heun schedulers.

    σ is interpolated linearly in t between training sigmas; Karras sigmas (eq. 5) respace the
    range σ(t_0) … σ(t_{N-1}) and get fractional timesteps by log-σ interpolation.
    """
    timesteps = spaced_timesteps(schedule.num_train_timesteps, steps, spacing, steps_offset, discrete=False)
    table = schedule.sigmas.numpy()
    sigmas = torch.from_numpy(np.interp(timesteps.numpy(), np.arange(len(table)), table))  # float64
    if karras:
        sigmas = karras_sigmas(sigmas[-1].item(), sigmas[0].item(), steps)
        timesteps = sigma_to_t(schedule, sigmas).float()
    return timesteps, torch.cat([sigmas, sigmas.new_zeros(1)]).float()
