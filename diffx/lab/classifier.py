"""Classifier guidance beside classifier-free guidance: the lesson that CFG is classifier guidance with an
implicit classifier, drawn in 2-D.

Classifier guidance (Dhariwal & Nichol 2021, §4) trains a noisy classifier f_φ(y | x_t, t) on the forward
process's samples x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε at every t, and steers an unconditional ε-model with its
gradient (seed 000, "Classifier-guided diffusion"):

    ε̄ = ε_θ(x_t, t) − √(1 − ᾱ_t) w ∇_{x_t} log f_φ(y | x_t, t)

Classifier-free guidance needs no f_φ: Bayes' rule p(y | x_t) ∝ p(x_t | y) / p(x_t) and the ε-model's scores
∇ log p(x_t | ·) = −ε_θ(x_t, ·)/√(1 − ᾱ_t) give an implicit classifier (seed 000, "Classifier-free guidance")

    ∇_{x_t} log p(y | x_t) = −(ε_θ(x_t, t, y) − ε_θ(x_t, t, ∅)) / √(1 − ᾱ_t),

and the same formula with it is ε̄ = ε_∅ + w (ε_c − ε_∅), `model.guided_eps`, with the same w: 0 is the
unconditional model, 1 the conditional one (for a perfect classifier), more sharpens. Here both guide one ε-model's
unconditional branch ε_∅, so the only difference between the two is the classifier.

The classifier is the lab's MLP trunk with K class logits (`LabModel(num_classes=0, outputs=K)`: it is told no
class), trained with cross-entropy by the same loop as the ε-model (`train.fit`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from diffx.errors import InvalidArgumentError, check_finite
from diffx.lab.data import PointDistribution
from diffx.lab.model import LabModel
from diffx.lab.train import LabTrainConfig, TrainProgress, fit
from diffx.sampling.samplers import EpsModel
from diffx.sampling.schedules import NoiseSchedule, q_sample, vp_scales


def train_classifier(data: PointDistribution, schedule: NoiseSchedule, config: LabTrainConfig = LabTrainConfig(),
                     seed: int = 0, progress: TrainProgress | None = None) -> LabModel:
    """f_φ(y | x_t, t): a `LabModel` with data.num_classes logits, trained by cross-entropy on x_t ~ q(x_t | x_0)
    with t ~ U{0, …, T−1} (fresh points every step); deterministic given `seed`. Returns it in eval mode."""
    if data.num_classes < 2:
        raise InvalidArgumentError(f"a classifier needs two classes or more; {data.name} has one "
                                   "(use moons, spiral or gaussians)")
    torch.manual_seed(seed)  # the initial weights
    generator = torch.Generator().manual_seed(seed)
    classifier = LabModel(num_classes=0, width=config.width, depth=config.depth, outputs=data.num_classes)

    def cross_entropy(classifier: LabModel, generator: torch.Generator) -> Tensor:
        x0, labels = data.sample(config.batch, generator)  # (batch, 2), (batch,)
        t = torch.randint(0, schedule.num_train_timesteps, (config.batch,), generator=generator)
        x_t = q_sample(schedule, x0, t, torch.randn(x0.shape, generator=generator))
        return F.cross_entropy(classifier(x_t, t.float()), labels)  # −log f_φ(y | x_t, t), averaged

    fit(classifier, cross_entropy, config, generator, progress)
    return classifier


def noise_scale(schedule: NoiseSchedule, t: Tensor) -> Tensor:
    """√(1 − ᾱ_t) at the (0-dim, possibly fractional) timestep t, float32: what turns a score into an ε."""
    return vp_scales(schedule, t)[1].float()


def classifier_gradient(classifier: LabModel, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
    """∇_{x_t} log f_φ(y | x_t, t) for points x_t (B, 2) and classes y = `labels` (B,), by autograd: (B, 2).

    Each point's log-probability depends on that point alone, so the gradient of their sum is every point's own."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        log_probs = F.log_softmax(classifier(x, t), dim=1)  # (B, K)
        chosen = log_probs.gather(1, labels[:, None]).sum()
        (gradient,) = torch.autograd.grad(chosen, x)
    return gradient


@torch.no_grad()
def implicit_gradient(model: LabModel, schedule: NoiseSchedule, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
    """CFG's implicit classifier ∇_{x_t} log p(y | x_t) = −(ε_θ(x_t, t, y) − ε_θ(x_t, t, ∅)) / √(1 − ᾱ_t): (B, 2)."""
    eps_cond, eps_null = model(x_t, t, labels), model(x_t, t)
    return -(eps_cond - eps_null) / noise_scale(schedule, t)


def classifier_guided_eps(model: LabModel, classifier: LabModel, schedule: NoiseSchedule, labels: Tensor,
                          guidance: float) -> EpsModel:
    """The denoiser `eps_model(x_t, t)` the samplers call, with classifier guidance towards `labels` (B,):
    ε̄ = ε_θ(x_t, t, ∅) − √(1 − ᾱ_t) w ∇ log f_φ(y | x_t, t), w = `guidance` (0: the unconditional model)."""
    check_finite("guidance", guidance)
    if not 0 <= int(labels.min()) <= int(labels.max()) < model.num_classes:
        raise InvalidArgumentError(f"labels must be classes 0 to {model.num_classes - 1} of the lab model")

    def eps_model(x_t: Tensor, t: Tensor) -> Tensor:
        eps_null = model(x_t, t)
        if guidance == 0:
            return eps_null
        return eps_null - noise_scale(schedule, t) * guidance * classifier_gradient(classifier, x_t, t, labels)

    return eps_model


def mean_cosine(first: Tensor, second: Tensor) -> float:
    """The mean cosine similarity of two vector fields sampled at the same points, (N, 2) each: 1 = same direction
    everywhere, 0 = unrelated."""
    return float(F.cosine_similarity(first, second, dim=1, eps=1e-12).mean())
