"""Flow matching in the lab: the same MLP trained to predict a velocity, and sampled by Euler and Heun steps in t.

Rectified flow (Liu et al. 2022, "Flow Straight and Fast", eq. 1) and flow matching (Lipman et al. 2023) join data
and noise by straight lines, the path SD3, SD3.5 and Flux are trained on (Esser et al. 2024, §2-3):

    x_t = (1 − t) x_0 + t ε,   t ∈ [0, 1],   dx_t/dt = v = ε − x_0

The network regresses that velocity, L_FM = E_{t, x_0, ε} ‖(ε − x_0) − v_θ(x_t, t, c)‖², and sampling integrates
dx/dt = v_θ from t = 1 (pure noise, x_1 = ε) down to t = 0. The network is told t · FLOW_TIME_SCALE, SD3's timestep
scale, so its sinusoidal embedding sees the range the diffusion model's timesteps have.

From one prediction come both of diffusion's estimates (x_t = (1 − t) x_0 + t ε and v = ε − x_0 solved for them):

    x̂_0 = x_t − t v̂,    ε̂ = x_t + (1 − t) v̂

which is how a flow model runs under diffx's ε-samplers (flow_ddim.py) — Gaussian flow matching is diffusion with
another schedule and another parameterisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from diffx.errors import InvalidArgumentError, check_choice
from diffx.lab.data import PointDistribution
from diffx.lab.model import LabModel, one_thread
from diffx.lab.sampling import LabRun
from diffx.lab.train import LabTrainConfig, TrainProgress, fit, labelled_batch
from diffx.sampling.flow import FLOW_TIME_SCALE, check_shift, shift_times
from diffx.sampling.flow_training import flow_interpolate

FLOW_SAMPLERS = ("flow_euler", "flow_heun")


@dataclass
class TrainedFlow:
    """A lab model trained with the flow-matching loss, what it was trained on, and its loss per step."""

    model: LabModel
    data: PointDistribution
    losses: list[float] = field(default_factory=list)


def flow_matching_loss(model: LabModel, x0: Tensor, labels: Tensor | None, generator: torch.Generator,
                       noise: Tensor | None = None) -> Tensor:
    """L_FM = E ‖(ε − x_0) − v_θ(x_t, t, c)‖² with t ~ U[0, 1] (Lipman et al. 2023: their optimal-transport
    path with σ_min = 0; Esser et al. 2024, §2, with t uniform rather than their logit-normal). `noise` None: fresh
    ε ~ N(0, I); given: the ε paired with each x_0 (reflow). Returns the scalar mean squared error."""
    t = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype)  # (B,)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    x_t = flow_interpolate(x0, noise, t)
    return F.mse_loss(model(x_t, t * FLOW_TIME_SCALE, labels), noise - x0)


def train_flow_model(data: PointDistribution, config: LabTrainConfig = LabTrainConfig(), seed: int = 0,
                     progress: TrainProgress | None = None) -> TrainedFlow:
    """Train a `LabModel` on `data` with the flow-matching loss: the same network, initial weights, batches, label
    dropout, optimiser and budget as `train_lab_model` gives the ε-model; only the regression target differs."""
    torch.manual_seed(seed)  # the initial weights: the ε-model's with the same seed
    generator = torch.Generator().manual_seed(seed)
    model = LabModel(data.num_classes, width=config.width, depth=config.depth)

    def loss(model: LabModel, generator: torch.Generator) -> Tensor:
        x0, labels = labelled_batch(data, config, model.null_class, generator)
        return flow_matching_loss(model, x0, labels, generator)

    return TrainedFlow(model=model, data=data, losses=fit(model, loss, config, generator, progress))


def flow_times(steps: int, shift: float = 1.0) -> Tensor:
    """The N + 1 times t_0 = 1 > t_1 > … > t_N = 0 of an N-step flow sampler, float64 (N + 1,).

    Evenly spaced u = 1 − i/N, then shifted: t = s u / (1 + (s − 1) u) (Esser et al. 2024, §5.3.2: s = √(m/n) for
    m pixels trained at n; diffusers' FlowMatchEulerDiscreteScheduler `shift`). s > 1 spends more of the steps at
    high noise, where a large picture still has its layout to settle; s = 1 is the plain uniform grid.
    """
    if steps < 1:
        raise InvalidArgumentError(f"flow steps must be at least 1, got {steps}")
    check_shift(shift)
    return shift_times(torch.linspace(1, 0, steps + 1, dtype=torch.float64), shift)


def velocity(model: LabModel, x: Tensor, t: Tensor | float) -> Tensor:
    """v̂ = v_θ(x_t, t, ∅) for one time t ∈ [0, 1] shared by the batch (the unconditional branch)."""
    return model(x, torch.as_tensor(t * FLOW_TIME_SCALE, dtype=torch.float64))


@torch.no_grad()
def run_flow(model: LabModel, sampler: str, times: Tensor, noise: Tensor) -> LabRun:
    """Integrate dx/dt = v_θ(x, t) over `times` (from `flow_times`) from x_1 = `noise` (N, 2), keeping the path.

    flow_euler: x_{i+1} = x_i + (t_{i+1} − t_i) v̂(x_i, t_i), one evaluation a step (SD3's sampler).
    flow_heun: that Euler step as a predictor x̃, then x_{i+1} = x_i + (t_{i+1} − t_i) (v̂(x_i, t_i) + v̂(x̃, t_{i+1}))/2,
    two evaluations a step, the last step included (v̂ is finite at t = 0, unlike an ε-model's slope at σ = 0).
    The run's `timesteps` are the times t_i ∈ [0, 1], its path the states x_{t_i} (N + 1, N, 2).
    """
    check_choice("flow sampler", sampler, FLOW_SAMPLERS)
    grid = times.tolist()
    states, nfe = [noise], [0]
    x = noise
    with one_thread():
        for t, t_next in zip(grid[:-1], grid[1:], strict=True):
            v = velocity(model, x, t)
            x_euler = x + (t_next - t) * v
            if sampler == "flow_euler":
                x = x_euler
            else:
                x = x + (t_next - t) * (v + velocity(model, x_euler, t_next)) / 2
            states.append(x)
            nfe.append(nfe[-1] + (1 if sampler == "flow_euler" else 2))
    return LabRun(sampler=sampler, path=torch.stack(states), timesteps=grid, nfe=nfe)
