"""The learned reverse variance Σ_θ (Nichol & Dhariwal 2021, "Improved DDPM", §3.1 and §4), in 2-D.

DDPM fixes the variance of its reverse step p(x_{t−1} | x_t) to one of two bounds: β_t ("fixed_large") or the
posterior's β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) β_t ("fixed_small"). Nichol & Dhariwal let the network choose between
them, per point and coordinate, in the log domain (eq. 15; seed 000, "Reverse process variance"):

    Σ_θ(x_t, t) = exp(v log β_t + (1 − v) log β̃_t)

with v = (o + 1)/2 from two more output channels o (their code: o = 0 is half-way). L_simple has no Σ in it, so
they train with the hybrid objective (eq. 16)

    L_hybrid = L_simple + λ L_vlb,   λ = 0.001,   L_vlb = Σ_t L_t ≈ T · E_t[L_t]

where L_t = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)) (bits per coordinate) sees the mean μ_θ through a
stop-gradient: L_simple alone trains the mean, L_vlb only Σ. At t = 0 the term is the decoder's −log p_θ(x_0 | x_1),
a Gaussian density here (the lab's points are continuous; images use a discretised one).

Few steps (§4): a respaced DDPM step t → t' has its own β = 1 − ᾱ_t/ᾱ_{t'} and β̃ = (1 − ᾱ_{t'})/(1 − ᾱ_t) β
(`samplers.ddpm_posterior`); v was only ever trained on the 1000-step chain. Two ways to carry it over (`MAPPINGS`):

- "log", Nichol & Dhariwal's: the network's v at t interpolates the respaced step's β and β̃ in the log domain,
  Σ = exp(v log β + (1 − v) log β̃); at the last step, which lands on x_0 (β̃ = 0), log β̃ is clipped to the step
  before's, as they clip log β̃_0 (their sampler adds no noise there; diffx's DDPM does whenever t > 0).
- "linear": the step's exact variance is Var(x_{t'} | x_t) = β̃ + a² Var(x_0 | x_t), a = √ᾱ_{t'} β/(1 − ᾱ_t) the
  x_0-weight of μ̃ (eq. 7). For x_0 ~ N(0, I) it is β, so a² (1 − ᾱ_t) = β − β̃, and for any data
  Σ = β̃ + r (β − β̃) with r = Var(x_0 | x_t)/(1 − ᾱ_t): one r per (x_t, t), whatever the spacing. The 1000-step
  Σ_θ gives r = (Σ_θ − β̃_t)/(β_t − β̃_t), and that r is used on the respaced step.
  Where β_t ≈ β̃_t (most t of the 1000-step chain) r ≈ v; they part where v leaves [0, 1]: r > 1 (a data
  coordinate wider than the unit Gaussian's 1 − ᾱ_t) read as v in the log domain overshoots β by (β/β̃)^(v − 1),
  and a respaced β/β̃ is large.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from diffx.errors import check_choice
from diffx.lab.data import PointDistribution
from diffx.lab.model import LabModel, one_thread
from diffx.lab.train import LabTrainConfig, TrainProgress, fit
from diffx.sampling.grids import GridSpec, sampling_grid
from diffx.sampling.samplers import EpsModel, ddpm_posterior
from diffx.sampling.schedules import NoiseSchedule, q_sample

VLB_WEIGHT = 0.001  # λ of eq. 16
MAPPINGS = ("log", "linear")  # how the learned variance is carried onto a respaced step
# One network call: x_t (B, 2) and t -> (B, 4), ε̂ in the first two columns and the raw v output o in the last two.
VarianceNetwork = Callable[[Tensor, Tensor], Tensor]


def split_output(output: Tensor) -> tuple[Tensor, Tensor]:
    """A variance model's (B, 4) output -> ε̂ (B, 2) and v = (o + 1)/2 (B, 2), 0 at β̃ and 1 at β."""
    eps, raw = output.chunk(2, dim=1)
    return eps, (raw + 1) / 2


def interpolated_log_variance(v: Tensor, beta: Tensor, beta_tilde: Tensor) -> Tensor:
    """log Σ_θ = v log β + (1 − v) log β̃ (Nichol & Dhariwal eq. 15), for any β, β̃ of one step."""
    return v * torch.log(beta) + (1 - v) * torch.log(beta_tilde)


def previous_alphas_cumprod(schedule: NoiseSchedule) -> Tensor:
    """ᾱ_{t−1} for t = 0 … T−1, (T,): 1 before the first step (x_0 is clean)."""
    return torch.cat([torch.ones(1), schedule.alphas_cumprod[:-1]])


def hybrid_loss(model: VarianceNetwork, schedule: NoiseSchedule, x0: Tensor, generator: torch.Generator) -> Tensor:
    """L_simple + λ T E_t[L_t] (Nichol & Dhariwal eq. 16) on a batch x0 (B, 2), one random t per point.

    L_t is the Gaussian KL from the true posterior N(μ̃(x_t, x_0), β̃_t) to N(μ_θ, Σ_θ) per coordinate,
    ½ (log Σ_θ − log β̃_t + β̃_t/Σ_θ + (μ̃ − μ_θ)²/Σ_θ − 1), with μ_θ from the detached ε̂; at t = 0 it is
    −log N(x_0; μ_θ, Σ_θ), with β̃_0 = 0 clipped at β̃_1 in Σ_θ (`training_variances`), as in their code."""
    batch = x0.shape[0]
    t = torch.randint(0, schedule.num_train_timesteps, (batch,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    x_t = q_sample(schedule, x0, t, noise)
    eps, v = split_output(model(x_t, t.float()))
    alpha_t = schedule.alphas_cumprod[t][:, None]  # (B, 1)
    alpha_prev = previous_alphas_cumprod(schedule)[t][:, None]
    _, true_mean, _, _ = ddpm_posterior(alpha_t, alpha_prev, x_t, noise)  # x̂0 from ε itself is x_0
    _, mean, _, _ = ddpm_posterior(alpha_t, alpha_prev, x_t, eps.detach())  # the stop-gradient on μ_θ
    betas, beta_tildes = training_variances(schedule)
    beta, beta_tilde = betas[t][:, None], beta_tildes[t][:, None]  # (B, 1)
    log_variance = interpolated_log_variance(v, beta, beta_tilde)  # (B, 2)
    kl = 0.5 * (log_variance - torch.log(beta_tilde) + (beta_tilde + (true_mean - mean) ** 2)
                * torch.exp(-log_variance) - 1)
    decoder_nll = 0.5 * (math.log(2 * math.pi) + log_variance + (x0 - mean) ** 2 * torch.exp(-log_variance))
    vlb = torch.where(t[:, None] == 0, decoder_nll, kl) / math.log(2)  # bits per coordinate, (B, 2)
    return F.mse_loss(eps, noise) + VLB_WEIGHT * schedule.num_train_timesteps * vlb.mean()


def training_variances(schedule: NoiseSchedule) -> tuple[Tensor, Tensor]:
    """β_t and β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) β_t of the 1000-step chain, (T,) each; β̃_0 = 0 (x_0 is known after
    the first step) is clipped at β̃_1, so its logarithm is finite, as Nichol & Dhariwal clip it."""
    beta_tilde = (1 - previous_alphas_cumprod(schedule)) / (1 - schedule.alphas_cumprod) * schedule.betas
    return schedule.betas, torch.cat([beta_tilde[1:2], beta_tilde[1:]])


def train_variance_model(data: PointDistribution, schedule: NoiseSchedule, config: LabTrainConfig = LabTrainConfig(),
                         seed: int = 0, progress: TrainProgress | None = None) -> LabModel:
    """An unconditional `LabModel` with outputs ε̂ and v, trained with `hybrid_loss` on fresh points every step;
    deterministic given `seed`. Returns it in eval mode."""
    torch.manual_seed(seed)  # the initial weights
    generator = torch.Generator().manual_seed(seed)
    model = LabModel(num_classes=0, width=config.width, depth=config.depth, outputs=4)

    def l_hybrid(model: LabModel, generator: torch.Generator) -> Tensor:
        return hybrid_loss(model, schedule, data.sample(config.batch, generator)[0], generator)

    fit(model, l_hybrid, config, generator, progress)
    return model


def eps_head(model: VarianceNetwork) -> EpsModel:
    """The ε̂ half of a variance model, as the samplers' `eps_model(x_t, t)`: DDPM with a fixed variance on it."""
    return lambda x_t, t: split_output(model(x_t, t))[0]


def learned_fraction(v: Tensor, schedule: NoiseSchedule, t: int) -> Tensor:
    """r = (Σ_θ − β̃_t)/(β_t − β̃_t): where the 1000-step Σ_θ = exp(v log β_t + (1 − v) log β̃_t) sits between β̃_t
    (r = 0) and β_t (r = 1), in variance; shaped like v. With L = log(β_t/β̃_t), Σ_θ = β̃_t e^{vL}, so
    r = (e^{vL} − 1)/(e^L − 1), computed so (expm1, float64): β_t ≈ β̃_t for most t, where r → v as L → 0 and the
    differences of the first form would be rounding error."""
    betas, beta_tildes = training_variances(schedule)
    log_ratio = betas[t].double().log() - beta_tildes[t].double().log()
    return (torch.expm1(v.double() * log_ratio) / torch.expm1(log_ratio)).to(v.dtype)


@dataclass(frozen=True)
class RespacedChain:
    """DDPM's steps t → t' at `steps` respaced steps (`sampling_grid`): the timesteps t (S,), each step's
    β = 1 − ᾱ_t/ᾱ_{t'} and β̃ = (1 − ᾱ_{t'})/(1 − ᾱ_t) β (S,), β̃ clamped at 1e-20 as `samplers.ddpm_posterior` does
    (it is 0 at the last step, which lands on x_0)."""

    timesteps: list[int]
    betas: Tensor
    beta_tildes: Tensor

    @classmethod
    def create(cls, schedule: NoiseSchedule, steps: int) -> RespacedChain:
        grid = sampling_grid(GridSpec("ddpm", steps), schedule)
        alpha = schedule.alphas_cumprod[grid.timesteps]
        alpha_prev = torch.cat([schedule.alphas_cumprod, torch.ones(1)])[grid.prev_timesteps]  # index −1: ᾱ = 1
        beta = 1 - alpha / alpha_prev
        return cls(grid.timesteps.tolist(), beta, ((1 - alpha_prev) / (1 - alpha) * beta).clamp(min=1e-20))

    def log_beta_tilde(self, index: int) -> Tensor:
        """log β̃ of step `index` for the log mapping: the last step's 0 is clipped to the step before's β̃ (a lone
        step's to its β), as Nichol & Dhariwal clip log β̃_0 to log β̃_1."""
        if index < len(self.timesteps) - 1:
            return self.beta_tildes[index].log()
        return (self.beta_tildes[-2] if len(self.timesteps) > 1 else self.betas[-1]).log()

    def variance(self, v: Tensor, schedule: NoiseSchedule, index: int, mapping: str) -> Tensor:
        """Σ_θ of step `index` from the network's v at its timestep (see the module docstring): "log"
        exp(v log β + (1 − v) log β̃), "linear" β̃ + r (β − β̃) with r = `learned_fraction` (at least 1e-20)."""
        check_choice("variance mapping", mapping, MAPPINGS)
        beta, beta_tilde = self.betas[index], self.beta_tildes[index]
        if mapping == "log":
            return torch.exp(v * beta.log() + (1 - v) * self.log_beta_tilde(index))
        return (beta_tilde + learned_fraction(v, schedule, self.timesteps[index]) * (beta - beta_tilde)).clamp(
            min=1e-20)


@torch.no_grad()
def sample_learned_variance(model: VarianceNetwork, schedule: NoiseSchedule, steps: int, noise: Tensor,
                            seed: int = 0, mapping: str = "log") -> Tensor:
    """DDPM (Algorithm 2) at `steps` respaced steps, the grid `samplers.sample_ddpm` walks, with the learned Σ_θ in
    place of a fixed variance: x_{t'} = μ̃(x_t, x̂0) + √Σ_θ z, Σ_θ mapped onto the respaced step by `mapping`
    (`RespacedChain.variance`); noise is added whenever t > 0, drawn in `sample_ddpm`'s order, so a v of 1
    everywhere is fixed_large and, with "linear", an r of 0 fixed_small. `noise` (N, 2) is x_T; returns (N, 2)."""
    check_choice("variance mapping", mapping, MAPPINGS)
    chain = RespacedChain.create(schedule, steps)
    grid = sampling_grid(GridSpec("ddpm", steps), schedule)
    generator = torch.Generator().manual_seed(seed)
    alphas_cumprod, x = schedule.alphas_cumprod, noise
    with one_thread():
        for index, (t, prev_t) in enumerate(zip(chain.timesteps, grid.prev_timesteps.tolist(), strict=True)):
            eps, v = split_output(model(x, torch.tensor(float(t))))
            alpha_prev = alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
            _, x, _, _ = ddpm_posterior(alphas_cumprod[t], alpha_prev, x, eps)
            if t > 0:
                z = torch.randn(eps.shape, generator=generator)
                x = x + chain.variance(v, schedule, index, mapping).sqrt() * z
    return x
