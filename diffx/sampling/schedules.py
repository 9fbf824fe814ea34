"""Noise schedules: β_t, ᾱ_t, σ_t, the forward process q, what the model predicts (ε or v), the training
loss and timestep spacing.

Indexing follows diffusers and the LDM code: timesteps are 0-based, t = 0 … T-1, and
ᾱ_t = ∏_{s≤t} (1 - β_s), so the clean sample x_0 sits *before* index 0 ("ᾱ_{-1} = 1").

Every table is computed the way diffusers computes it (β in float32, ᾱ by a float32 cumprod), so
a sampler that reads these tables reproduces diffusers' schedulers number for number.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from diffx.errors import InvalidArgumentError, check_choice

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
SPACINGS = ("leading", "trailing", "linspace")


class ScheduleSettings(Protocol):
    """What `NoiseSchedule.from_config` reads: a model's `SchedulerConfig` (diffx.models.configs) has these."""

    num_train_timesteps: int
    beta_schedule: str
    beta_start: float
    beta_end: float
    rescale_betas_zero_snr: bool


# ---------------------------------------------------------------------------------------------
# β schedules


def linear_betas(num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """β_t linear in t (Ho et al. 2020, DDPM §4: 1e-4 → 0.02 over T = 1000)."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)


def scaled_linear_betas(num_train_timesteps: int, beta_start: float = 0.00085,
                        beta_end: float = 0.012) -> torch.Tensor:
    """√β_t linear in t, then squared: the latent-diffusion schedule (Rombach et al. 2022, SD1.x)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2


def cosine_betas(num_train_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2).

    β_t = 1 - ᾱ(t+1)/ᾱ(t), clipped at `max_beta` so the last steps stay invertible (their §3.2).
    This is diffusers' `squaredcos_cap_v2`, computed in Python floats then stored as float32.
    """

    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    T = num_train_timesteps
    betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(beta_schedule: str, num_train_timesteps: int = 1000, beta_start: float | None = None,
               beta_end: float | None = None) -> torch.Tensor:
    """β_1 … β_T for one of `BETA_SCHEDULES` (the cosine schedule ignores beta_start/beta_end)."""
    check_choice("beta schedule", beta_schedule, BETA_SCHEDULES)
    if beta_schedule == "cosine":
        return cosine_betas(num_train_timesteps)
    make: Callable[..., torch.Tensor] = linear_betas if beta_schedule == "linear" else scaled_linear_betas
    ends = {k: v for k, v in (("beta_start", beta_start), ("beta_end", beta_end)) if v is not None}
    return make(num_train_timesteps, **ends)


# ᾱ_T of a zero-terminal-SNR schedule as the samplers see it: 2⁻²⁴ rather than 0 (diffusers' Euler does the same),
# so σ_T = √((1 − ᾱ_T)/ᾱ_T) ≈ 4096 stays finite and x̂0 = (x_t − √(1 − ᾱ) ε̂)/√ᾱ never divides by zero.
ZERO_SNR_ALPHA_CUMPROD = 2.0**-24


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """β rescaled so the last timestep has zero signal-to-noise ratio (Lin et al. 2023, "Common Diffusion
    Noise Schedules and Sample Steps are Flawed", Algorithm 1).

    SD's schedules end at ᾱ_T ≈ 0.0047: the noisiest x_T still holds a little of the image (its mean
    brightness above all), which training learns to expect and sampling from pure noise never gives —
    hence SD's mid-grey pictures. Shifting √ᾱ so √ᾱ_T = 0, then scaling it so √ᾱ_1 is unchanged, fixes
    that: √ᾱ'_t = (√ᾱ_t − √ᾱ_T) · √ᾱ_1 / (√ᾱ_1 − √ᾱ_T); then β'_t = 1 − ᾱ'_t / ᾱ'_{t−1}, β'_T = 1.
    """
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1.0 - alphas


# ---------------------------------------------------------------------------------------------
# The schedule and its derived tables


@dataclass
class NoiseSchedule:
    """All per-timestep quantities of a variance-preserving diffusion, each a float32 tensor of shape (T,).

    betas                         β_t
    alphas                        α_t = 1 - β_t
    alphas_cumprod                ᾱ_t = ∏_{s≤t} α_s                          (DDPM eq. 4)
    sqrt_alphas_cumprod           √ᾱ_t           — the signal scale of x_t
    sqrt_one_minus_alphas_cumprod √(1 - ᾱ_t)     — the noise scale of x_t
    sigmas                        σ_t = √((1 - ᾱ_t) / ᾱ_t): x_t / √ᾱ_t = x_0 + σ_t ε (Karras et al. 2022)
    """

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sigmas: torch.Tensor
    beta_schedule: str = "custom"

    @property
    def num_train_timesteps(self) -> int:
        return self.betas.shape[0]

    @classmethod
    def from_betas(cls, betas: torch.Tensor, beta_schedule: str = "custom") -> NoiseSchedule:
        """Derive every table from β. ᾱ is a float32 cumprod and σ is float32 arithmetic (as in diffusers);
        the rest is computed in float64 from that ᾱ and stored as float32."""
        betas = betas.to(torch.float32)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)

        a_bar = alphas_cumprod.double()
        tables = {
            "sqrt_alphas_cumprod": a_bar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - a_bar).sqrt(),
        }
        # σ in float32 arithmetic, exactly as diffusers' σ-space schedulers build their tables.
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        return cls(betas=betas, alphas=alphas, alphas_cumprod=alphas_cumprod, sigmas=sigmas,
                   beta_schedule=beta_schedule, **{name: value.float() for name, value in tables.items()})

    @classmethod
    def create(cls, beta_schedule: str = "scaled_linear", num_train_timesteps: int = 1000,
               beta_start: float | None = None, beta_end: float | None = None,
               zero_terminal_snr: bool = False) -> NoiseSchedule:
        """A schedule from its name (one of `BETA_SCHEDULES`) and, for the linear ones, its end points;
        `zero_terminal_snr`: rescaled by `rescale_zero_terminal_snr`, with ᾱ_T = ZERO_SNR_ALPHA_CUMPROD."""
        if num_train_timesteps < 2:
            raise InvalidArgumentError(f"num_train_timesteps must be at least 2, got {num_train_timesteps}")
        betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
            # β_T = 1 would make ᾱ_T exactly 0: choose β_T so that ᾱ_T = ᾱ_{T-1} (1 − β_T) = 2⁻²⁴.
            betas[-1] = 1.0 - ZERO_SNR_ALPHA_CUMPROD / torch.cumprod(1.0 - betas[:-1], dim=0)[-1]
        return cls.from_betas(betas, beta_schedule)

    @classmethod
    def from_config(cls, config: ScheduleSettings) -> NoiseSchedule:
        """The training schedule a model config names (SD1.5: scaled_linear, 0.00085 → 0.012, T = 1000)."""
        return cls.create(config.beta_schedule, config.num_train_timesteps, config.beta_start,
                          config.beta_end, config.rescale_betas_zero_snr)


def sigma_to_t(schedule: NoiseSchedule, sigma: torch.Tensor) -> torch.Tensor:
    """The (fractional) timestep whose σ_t equals `sigma`, by linear interpolation in log σ.

    This is diffusers' / k-diffusion's `_sigma_to_t`, used to give the model a timestep for σ values
    that are not on the training grid (Karras sigmas). numpy, as in diffusers, so the timesteps agree
    bit for bit. Returns float64, same shape as `sigma`.
    """
    log_sigmas = np.log(schedule.sigmas.numpy())  # (T,) float32, increasing in t
    log_sigma = np.log(np.maximum(sigma.double().numpy(), 1e-10)).reshape(-1)  # (N,)
    dists = log_sigma - log_sigmas[:, None]  # (T, N)
    # Index of the last table entry with log σ_t ≤ log σ, kept one short of the end for `high`.
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return torch.from_numpy((1 - w) * low_idx + w * high_idx).reshape(sigma.shape)


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> torch.Tensor:
    """σ_i = (σ_max^{1/ρ} + i/(N-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ (Karras et al. 2022, eq. 5), float64."""
    ramp = np.linspace(0, 1, steps)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.from_numpy((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


# ---------------------------------------------------------------------------------------------
# Forward process and training loss


def _per_sample(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """table[t] reshaped to broadcast against `like`: (B,) -> (B, 1, 1, 1)."""
    values = table.to(like.device)[t.to(like.device)].to(like.dtype)
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε, a sample of q(x_t | x_0) in closed form (DDPM eq. 4).

    `t` is an int tensor, 0-dim or (B,); the arithmetic is diffusers' `add_noise`.
    """
    alphas_cumprod = schedule.alphas_cumprod.to(x0.device, x0.dtype)
    sqrt_alpha_prod = _per_sample(alphas_cumprod**0.5, t, x0)
    sqrt_one_minus_alpha_prod = _per_sample((1 - alphas_cumprod) ** 0.5, t, x0)
    return sqrt_alpha_prod * x0 + sqrt_one_minus_alpha_prod * noise


# ---------------------------------------------------------------------------------------------
# What the model predicts: ε or v (Salimans & Ho 2022, "Progressive Distillation", sec. 4 and appendix D)
#
# x_t = √ᾱ x_0 + √(1 − ᾱ) ε, and the velocity is v = √ᾱ ε − √(1 − ᾱ) x_0 (the paper's α_t, σ_t are our √ᾱ_t,
# √(1 − ᾱ_t); in diffx σ always means √((1 − ᾱ)/ᾱ), the σ-space noise level). The scales' squares sum to 1, so
# the three are one rotation apart: x_0 = √ᾱ x_t − √(1 − ᾱ) v, ε = √(1 − ᾱ) x_t + √ᾱ v. An ε-model's
# x̂0 = (x_t − √(1 − ᾱ) ε̂)/√ᾱ blows up as ᾱ → 0; a v-model's does not, which is why zero-terminal-SNR
# schedules need v.


def vp_scales(schedule: NoiseSchedule, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VP scales (√ᾱ_t, √(1 − ᾱ_t)) of x_t = √ᾱ x_0 + √(1 − ᾱ) ε at timestep(s) t, float64 of t's shape.

    At a whole t, ᾱ_t from the table; between (Karras sigmas give fractional t) ᾱ = 1/(σ_t² + 1) with
    log σ_t interpolated linearly — the inverse of `sigma_to_t`, so a σ-space sampler's σ comes back
    (σ = √((1 − ᾱ)/ᾱ), the ratio of the two scales).
    """
    t = t.detach().double().cpu()
    log_sigmas = schedule.sigmas.double().log()
    low = t.floor().long().clamp(0, schedule.num_train_timesteps - 1)
    high = (low + 1).clamp(max=schedule.num_train_timesteps - 1)
    log_sigma = torch.lerp(log_sigmas[low], log_sigmas[high], t - low)
    alpha_cumprod = torch.where(t == low, schedule.alphas_cumprod.double()[low], 1 / (log_sigma.exp() ** 2 + 1))
    return alpha_cumprod.sqrt(), (1 - alpha_cumprod).sqrt()


def _unknown_prediction(prediction_type: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"unknown prediction type {prediction_type!r}; choose epsilon or v_prediction")


def velocity(x0: torch.Tensor, eps: torch.Tensor, signal_scale: float | torch.Tensor,
             noise_scale: float | torch.Tensor) -> torch.Tensor:
    """v = √ᾱ ε − √(1 − ᾱ) x_0: the velocity of x_t along the circle x_t = √ᾱ x_0 + √(1 − ᾱ) ε (Salimans & Ho
    2022, eq. 11), given `signal_scale` √ᾱ and `noise_scale` √(1 − ᾱ)."""
    return signal_scale * eps - noise_scale * x0


def eps_from_prediction(output: torch.Tensor, x_t: torch.Tensor, signal_scale: float, noise_scale: float,
                        prediction_type: str) -> torch.Tensor:
    """The noise estimate ε̂ a model's output stands for: itself for "epsilon", √(1 − ᾱ) x_t + √ᾱ v̂ for
    "v_prediction" (`signal_scale` √ᾱ, `noise_scale` √(1 − ᾱ))."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return noise_scale * x_t + signal_scale * output
    raise _unknown_prediction(prediction_type)


def x0_from_eps(eps: torch.Tensor, x_t: torch.Tensor, signal_scale: float, noise_scale: float) -> torch.Tensor:
    """x̂0 = (x_t − √(1 − ᾱ) ε̂) / √ᾱ (DDPM eq. 15), `signal_scale` √ᾱ, `noise_scale` √(1 − ᾱ)."""
    return (x_t - noise_scale * eps) / signal_scale


def v_from_eps(eps: torch.Tensor, x_t: torch.Tensor, signal_scale: float, noise_scale: float) -> torch.Tensor:
    """v̂ = √ᾱ ε̂ − √(1 − ᾱ) x̂0 with x̂0 = (x_t − √(1 − ᾱ) ε̂)/√ᾱ, i.e. (ε̂ − √(1 − ᾱ) x_t)/√ᾱ."""
    return velocity(x0_from_eps(eps, x_t, signal_scale, noise_scale), eps, signal_scale, noise_scale)


def training_loss(eps_model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                  schedule: NoiseSchedule, x0: torch.Tensor, context: torch.Tensor,
                  generator: torch.Generator | None = None, prediction_type: str = "epsilon") -> torch.Tensor:
    """L_simple = E_{t, ε} ‖ε - ε_θ(x_t, t, c)‖² (DDPM Algorithm 1 and eq. 14), or for a v-model
    E ‖v − v_θ(x_t, t, c)‖² with v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022, eq. 11's target).

    t ~ U{0, …, T-1} per sample, ε ~ N(0, I), x_t from `q_sample`; `eps_model(x_t, t, context)` returns
    what the model predicts. Random numbers are drawn on the generator's device (CPU by default) and
    moved, so a seed means the same thing on every device. Returns the scalar mean squared error.
    """
    draw_device = generator.device if generator is not None else x0.device
    batch = x0.shape[0]
    t = torch.randint(0, schedule.num_train_timesteps, (batch,), generator=generator, device=draw_device)
    noise = torch.randn(x0.shape, generator=generator, device=draw_device, dtype=x0.dtype)
    t, noise = t.to(x0.device), noise.to(x0.device)
    x_t = q_sample(schedule, x0, t, noise)
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":  # diffusers' get_velocity
        alphas_cumprod = schedule.alphas_cumprod.to(x0.device, x0.dtype)
        target = velocity(x0, noise, _per_sample(alphas_cumprod**0.5, t, x0),
                          _per_sample((1 - alphas_cumprod) ** 0.5, t, x0))
    else:
        raise _unknown_prediction(prediction_type)
    return F.mse_loss(eps_model(x_t, t, context).float(), target.float())


# ---------------------------------------------------------------------------------------------
# Timesteps for sampling


def check_steps(steps: int, num_train_timesteps: int) -> None:
    """Raise a clear error unless 1 ≤ steps ≤ T."""
    if not 1 <= steps <= num_train_timesteps:
        raise InvalidArgumentError(
            f"steps must be between 1 and {num_train_timesteps} (the training timesteps), got {steps}")


def spaced_timesteps(num_train_timesteps: int, steps: int, spacing: str = "leading", steps_offset: int = 0,
                     *, discrete: bool = True) -> torch.Tensor:
    """The descending timesteps a sampler visits (Lin et al. 2024, "Common Diffusion Noise Schedules
    and Sample Steps are Flawed", Table 2), exactly as diffusers' `set_timesteps` makes them:

    leading   t_i = i · ⌊T/N⌋ + steps_offset           (SD1.5, N = 50, offset 1: 981, 961, …, 1)
    trailing  t_i = round(T - i · T/N) - 1             (always starts at T - 1)
    linspace  N points from 0 to T - 1, evenly spaced

    `discrete=True` (DDPM, DDIM, DPM-Solver) gives int64 with linspace rounded; `discrete=False`
    (Euler, Heun) gives float32 and keeps linspace's fractional timesteps.
    """
    check_choice("timestep spacing", spacing, SPACINGS)
    check_steps(steps, num_train_timesteps)
    T = num_train_timesteps
    # numpy on purpose: its arange/linspace round differently from torch's, and diffusers uses numpy.
    if spacing == "leading":
        grid = np.arange(0, steps)[::-1] * (T // steps) + steps_offset
    elif spacing == "trailing":
        # [:steps]: for some N (61, 103, …) float error gives np.arange one extra point, which diffusers
        # keeps as a bogus timestep -1; dropping it is the only deviation from diffusers here.
        grid = np.round(np.arange(T, 0, -T / steps))[:steps] - 1
    else:
        grid = np.linspace(0, T - 1, steps)[::-1]
        grid = grid.round() if discrete else grid
    timesteps = torch.from_numpy(grid.copy())
    if timesteps.max() > T - 1:
        raise InvalidArgumentError(
            f"steps_offset {steps_offset} pushes the {spacing} timesteps past {T - 1}; use a smaller offset")
    return timesteps.long() if discrete else timesteps.float()


def img2img_start(steps: int, strength: float) -> int:
    """How many of the `steps` sampling steps image-to-image skips: strength 1 skips none (pure noise),
    strength 0 skips all (the input comes back). As diffusers' StableDiffusionImg2ImgPipeline.get_timesteps.
    """
    if not 0.0 <= strength <= 1.0:
        raise InvalidArgumentError(f"strength must be between 0 and 1, got {strength}")
    init_timestep = min(int(steps * strength), steps)
    return max(steps - init_timestep, 0)


def strength_for_timestep(t: int, num_train_timesteps: int = 1000) -> float:
    """The image-to-image strength that starts denoising near timestep `t` (SDEdit, Meng et al. 2022):
    strength s runs the last ⌊s·N⌋ of N steps, whose first timestep is about s·T."""
    if not 0 <= t < num_train_timesteps:
        raise InvalidArgumentError(f"timestep {t} is out of range; pick 0 to {num_train_timesteps - 1}")
    return (t + 1) / num_train_timesteps


def log_snr(alphas_cumprod: torch.Tensor | np.ndarray) -> np.ndarray:
    """λ_t = log(ᾱ_t / (1 − ᾱ_t)), the log signal-to-noise ratio (Kingma et al. 2021, "Variational Diffusion
    Models"), in float64. ᾱ is clipped to [1e-12, 1 − 1e-12] so a zero-terminal-SNR schedule stays finite."""
    abar = alphas_cumprod.detach().double().cpu().numpy() if isinstance(alphas_cumprod, torch.Tensor) \
        else np.asarray(alphas_cumprod, dtype=np.float64)
    clipped = np.clip(abar, 1e-12, 1 - 1e-12)
    return np.log(clipped) - np.log1p(-clipped)
