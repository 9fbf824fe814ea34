"""Reflow (Liu et al. 2022, "Flow Straight and Fast", the Reflow step of Algorithm 1): straighten a flow by training
it again on its own couplings.

A flow model trained on independent pairs (x_0 from the data, ε from the noise) learns an ODE whose paths bend: the
straight lines of the training pairs cross, and the learned velocity averages over every line through a point.
Reflow draws noise z, runs the flow to its sample x_0 = ODE(z), and trains on those pairs (x_0, z) with the same
loss, x_t = (1 − t) x_0 + t z and target z − x_0. Lines between ODE-coupled pairs do not cross (the ODE's paths
cannot), so the new flow's paths are nearly the straight lines themselves — and a straight path is integrated
exactly by one Euler step: x_0 = z − v̂(z, 1).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from diffx.lab.flow import TrainedFlow, flow_matching_loss, flow_times, run_flow
from diffx.lab.model import LabModel
from diffx.lab.sampling import initial_noise
from diffx.lab.train import LabTrainConfig, TrainProgress, fit

REFLOW_PAIRS = 10_000  # (z, ODE(z)) couplings the reflow trains on
REFLOW_PAIR_STEPS = 50  # Euler steps that make each coupling (the base flow's ODE, integrated finely)


@dataclass
class ReflowPairs:
    """The couplings of a flow's ODE: `noise` z (M, 2) and the sample `x0` (M, 2) the flow carries it to."""

    noise: Tensor
    x0: Tensor


def reflow_pairs(flow: TrainedFlow, count: int = REFLOW_PAIRS, steps: int = REFLOW_PAIR_STEPS,
                 seed: int = 0) -> ReflowPairs:
    """`count` fresh noises z and where the flow's ODE (flow Euler, `steps` uniform steps) carries each."""
    noise = initial_noise(count, seed)
    return ReflowPairs(noise=noise, x0=run_flow(flow.model, "flow_euler", flow_times(steps), noise).samples)


def train_reflow(flow: TrainedFlow, pairs: ReflowPairs, config: LabTrainConfig = LabTrainConfig(), seed: int = 0,
                 progress: TrainProgress | None = None) -> TrainedFlow:
    """One reflow round: a copy of the flow model trained again, `config.steps` steps of `config.batch` pairs drawn
    from `pairs`, with the flow-matching loss on the coupled (x_0, z) instead of independent ones. It starts from the
    flow's weights (a fine-tune: where the paths were already straight the velocity hardly changes) and learns the
    unconditional branch only, the one the couplings were drawn from."""
    model: LabModel = copy.deepcopy(flow.model).train()
    generator = torch.Generator().manual_seed(seed)

    def loss(model: LabModel, generator: torch.Generator) -> Tensor:
        pick = torch.randint(0, len(pairs.x0), (config.batch,), generator=generator)  # (batch,)
        return flow_matching_loss(model, pairs.x0[pick], None, generator, noise=pairs.noise[pick])

    return TrainedFlow(model=model, data=flow.data, losses=fit(model, loss, config, generator, progress))
