"""Noise schedules, the sampling grid, the samplers and DDIM inversion: the math of diffusion, no model.

- schedules.py: β schedules, ᾱ, σ, q(x_t | x_0), ε / v / x̂0 conversions, timestep spacing, the training loss
- grids.py: `sampling_grid` → `Grid`, the timesteps and σ a sampler visits, built once before the loop
- samplers.py: DDPM, DDIM, Euler, Euler a, Heun, DPM-Solver++(2M) as plain functions over a grid, with a callback
- parameterizations.py: what a network predicts (ε, v, rectified-flow velocity) → the ε̂ samplers walk with
- ddim_inversion.py: DDIM run backwards over the same grid, clean latent → x_T
"""

from diffx.sampling.ddim_inversion import invert_ddim
from diffx.sampling.grids import KARRAS_SAMPLERS, SAMPLERS, Grid, GridSettings, GridSpec, sampling_grid
from diffx.sampling.parameterizations import PARAMETERIZATIONS, Parameterization
from diffx.sampling.samplers import (
    EpsModel,
    StepCallback,
    StepRecord,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
)
from diffx.sampling.schedules import (
    BETA_SCHEDULES,
    SPACINGS,
    NoiseSchedule,
    eps_from_prediction,
    log_snr,
    q_sample,
    training_loss,
    v_from_eps,
    x0_from_eps,
)

__all__ = [
    "BETA_SCHEDULES",
    "KARRAS_SAMPLERS",
    "PARAMETERIZATIONS",
    "SAMPLERS",
    "SPACINGS",
    "EpsModel",
    "Grid",
    "GridSettings",
    "GridSpec",
    "NoiseSchedule",
    "Parameterization",
    "StepCallback",
    "StepRecord",
    "eps_from_prediction",
    "invert_ddim",
    "log_snr",
    "q_sample",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sampling_grid",
    "training_loss",
    "v_from_eps",
    "x0_from_eps",
]
