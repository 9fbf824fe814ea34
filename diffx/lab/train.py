"""Training the lab model with the real training loss: `schedules.training_loss`, L_simple (DDPM Algorithm 1).

The loop is the embedded model's in miniature: draw x_0 from the data, t ~ U{0, …, T−1}, ε ~ N(0, I),
regress ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t, c) on ε. Labels are replaced by the null class with probability
`label_dropout`, so one network learns both ε_θ(·, c) and ε_θ(·, ∅) for classifier-free guidance (Ho &
Salimans 2022, Algorithm 1). Fresh points every step: the data distribution itself, not a finite set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffx.errors import InvalidArgumentError
from diffx.lab.data import PointDistribution
from diffx.lab.model import LabModel, one_thread
from diffx.sampling.schedules import NoiseSchedule, training_loss

TrainProgress = Callable[[int, int, float], None]  # (step done, total steps, running loss)
LabLoss = Callable[[LabModel, torch.Generator], Tensor]  # one batch's loss, its random numbers from the generator


@dataclass(frozen=True)
class LabTrainConfig:
    """How to train: `steps` Adam steps of `batch` fresh points, learning rate `lr` with a cosine decay."""

    steps: int = 750
    batch: int = 1024
    lr: float = 8e-3
    label_dropout: float = 0.15  # p(c → ∅); Ho & Salimans use 0.1-0.2
    width: int = 64
    depth: int = 3

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "width", "depth"):
            if not 1 <= getattr(self, name) <= 1_000_000:
                raise InvalidArgumentError(f"lab training {name} must be 1 to 1000000, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= 1):
            raise InvalidArgumentError(f"lab learning rate must be in (0, 1], got {self.lr}")
        if not 0 <= self.label_dropout < 1:
            raise InvalidArgumentError(f"label dropout must be in [0, 1), got {self.label_dropout}")


@dataclass
class TrainedLab:
    """A trained lab model with what it was trained on and its loss per step."""

    model: LabModel
    schedule: NoiseSchedule
    data: PointDistribution
    losses: list[float] = field(default_factory=list)


def train_lab_model(data: PointDistribution, schedule: NoiseSchedule, config: LabTrainConfig = LabTrainConfig(),
                    seed: int = 0, progress: TrainProgress | None = None) -> TrainedLab:
    """Train a `LabModel` on `data` under `schedule` with L_simple; deterministic given `seed`."""
    torch.manual_seed(seed)  # the initial weights
    generator = torch.Generator().manual_seed(seed)
    model = LabModel(data.num_classes, width=config.width, depth=config.depth)

    def l_simple(model: LabModel, generator: torch.Generator) -> Tensor:
        x0, labels = labelled_batch(data, config, model.null_class, generator)
        return training_loss(model, schedule, x0, labels, generator)

    losses = fit(model, l_simple, config, generator, progress)
    return TrainedLab(model=model, schedule=schedule, data=data, losses=losses)


def labelled_batch(data: PointDistribution, config: LabTrainConfig, null_class: int,
                   generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A fresh batch of the data, (batch, 2) points and (batch,) labels, each label dropped to ∅ with
    p = label_dropout (so one network also learns the unconditional branch)."""
    x0, labels = data.sample(config.batch, generator)
    dropped = torch.rand(config.batch, generator=generator) < config.label_dropout
    return x0, torch.where(dropped, torch.full_like(labels, null_class), labels)


def fit(model: LabModel, loss: LabLoss, config: LabTrainConfig, generator: torch.Generator,
        progress: TrainProgress | None = None) -> list[float]:
    """`config.steps` Adam steps on `loss(model, generator)`, the learning rate decayed on a cosine; returns the loss
    per step and leaves the model in eval mode. One loop for every network the lab trains (ε, flow, reflow, the noisy
    classifier, the learned-variance model)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, foreach=True)  # one kernel per step
    # Cosine decay to 5% of the peak: the last steps average out the noise of the small batches.
    decay = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / config.steps)))
    losses, running = [], None
    with one_thread():
        for step in range(config.steps):
            value = loss(model, generator)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            losses.append(value.item())
            decay.step()
            running = losses[-1] if running is None else 0.98 * running + 0.02 * losses[-1]
            if progress is not None:
                progress(step + 1, config.steps, running)
    model.eval()
    return losses
