"""Samplers: plain functions that turn noise into a latent by calling a denoiser (k-diffusion shape).

The denoiser contract, for every sampler:

    eps_model(x_in, t) -> eps_pred

`x_in` is the variance-preserving model input x_t = √ᾱ x_0 + √(1-ᾱ) ε, shape (B, C, H, W), and `t`
a 0-dim float32 timestep (fractional for Karras sigmas). Classifier-free guidance belongs to the
caller: wrap the U-Net in a function that runs both branches and mixes them.

Notation: σ is always the σ-space noise level √((1-ᾱ)/ᾱ) (Karras et al. 2022); the VP scales are written
√ᾱ and √(1-ᾱ) (the papers' α_t, σ_t), and a paper's other σ's get other letters.

Every sampler walks a `Grid` built once before the loop (`diffx.sampling.grids.sampling_grid`: the model's
timestep and the state's σ at every step). Two families, with the states diffusers keeps:

* VP samplers (DDPM, DDIM, DPM-Solver++(2M)) keep x_t itself.
* σ-space samplers (Euler, Euler a, Heun; Karras et al. 2022) keep x = x_t / √ᾱ = x_0 + σ ε, and feed
  the model x / √(σ² + 1), which is x_t again (diffusers' `scale_model_input`).

How x enters: `noise` is always ε ~ N(0, I) in VP units. Text-to-image starts from noise · init_noise_sigma
(`Grid.init_noise_sigma`). Image-to-image passes `init_latent` and a grid with a `start_index`, and each
sampler noises the latent to its own first step the way its diffusers scheduler's `add_noise` does. The result is the
sampler's final state: the clean latent for σ-space samplers and DPM-Solver++ (which end at σ = 0),
and x at t = 0 for DDPM/DDIM (ᾱ_0 ≈ 0.999, SD's `set_alpha_to_one=False`), ready for the VAE.

Every step (every model evaluation: Heun makes two per step) is reported to `callback` as a
`StepRecord`. Per-step noise is drawn with `torch.randn(shape, generator=generator)` on the generator's
device, in the order diffusers draws it, so a seed gives the same image as diffusers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffx.errors import InvalidArgumentError, check_choice
from diffx.sampling.flow import sample_flow_euler, sample_flow_heun
from diffx.sampling.grids import Grid
from diffx.sampling.records import StepCallback, StepRecord
from diffx.sampling.schedules import q_sample

VARIANCES = ("fixed_small", "fixed_large")

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]




def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """ε ~ N(0, I) shaped like `like`, drawn on the generator's device then moved (as randn_tensor)."""
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _predict_eps(eps_model: EpsModel, x_in: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    return eps_model(x_in, torch.as_tensor(t, dtype=torch.float32, device=x_in.device))


def _report(callback: StepCallback | None, index: int, num_steps: int, timestep: torch.Tensor | float,
            sigma: torch.Tensor | float, x: torch.Tensor, state: torch.Tensor, eps_pred: torch.Tensor,
            x0_pred: torch.Tensor, x_next: torch.Tensor, next_sigma: torch.Tensor | float) -> None:
    if callback is not None:
        sigma = float(sigma)
        callback(StepRecord(index=index, num_steps=num_steps, timestep=float(timestep), sigma=sigma,
                            alpha_cumprod=1.0 / (sigma**2 + 1.0), x=x, state=state, eps_pred=eps_pred,
                            x0_pred=x0_pred, x_next=x_next, next_sigma=float(next_sigma)))


# ---------------------------------------------------------------------------------------------
# VP samplers: the state is x_t


def _vp_start(grid: Grid, noise: torch.Tensor, init_latent: torch.Tensor | None) -> torch.Tensor:
    """x at the first timestep run: pure noise, or the init latent noised by q(x_t | x_0) (DDPM eq. 4)."""
    return noise if init_latent is None else q_sample(grid.schedule, init_latent, grid.timesteps[grid.start_index],
                                                      noise)


def ddpm_posterior(alpha_prod_t: torch.Tensor, alpha_prod_t_prev: torch.Tensor, x: torch.Tensor,
                   eps_pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One DDPM step t → t' on a subsequence of timesteps, from ᾱ_t and ᾱ_{t'} (1 past t = 0; scalars, or one per
    sample shaped to broadcast against x): x̂0 (DDPM eq. 15), the posterior mean μ̃(x_t, x̂0) (eq. 7) and the step's
    two variances, β = 1 − ᾱ_t/ᾱ_{t'} (the respaced β_t) and β̃ = (1 − ᾱ_{t'})/(1 − ᾱ_t) β (eq. 7), clamped at
    1e-20 as diffusers does (it is 0 at the last step)."""
    beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
    current_alpha_t = alpha_prod_t / alpha_prod_t_prev
    current_beta_t = 1 - current_alpha_t
    x0_pred = (x - beta_prod_t**0.5 * eps_pred) / alpha_prod_t**0.5
    mean = ((alpha_prod_t_prev**0.5 * current_beta_t) / beta_prod_t * x0_pred
            + current_alpha_t**0.5 * beta_prod_t_prev / beta_prod_t * x)
    beta_tilde = torch.clamp(beta_prod_t_prev / beta_prod_t * current_beta_t, min=1e-20)
    return x0_pred, mean, current_beta_t, beta_tilde


def sample_ddpm(eps_model: EpsModel, noise: torch.Tensor, grid: Grid, *, variance: str = "fixed_small",
                init_latent: torch.Tensor | None = None, generator: torch.Generator | None = None,
                callback: StepCallback | None = None) -> torch.Tensor:
    """Ancestral sampling, DDPM Algorithm 2, on a subsequence of timesteps t → t' (diffusers' DDPMScheduler).

    x_{t'} = μ̃(x_t, x̂_0) + √v z with μ̃ from DDPM eq. 7 using ᾱ_t / ᾱ_{t'} in place of α_t, and the step's
    variance v = β̃ ("fixed_small", eq. 7) or β ("fixed_large") (the paper's σ_t²). As in diffusers, noise is
    added whenever t > 0.
    """
    check_choice("variance", variance, VARIANCES)
    schedule = grid.schedule
    alphas_cumprod = schedule.alphas_cumprod.to(noise.device)
    x = _vp_start(grid, noise, init_latent)
    run = grid.timesteps[grid.start_index:].tolist()
    lands = grid.prev_timesteps[grid.start_index:].tolist()  # the next grid point, −1 after the last
    for i, (t, prev_t) in enumerate(zip(run, lands, strict=True)):
        alpha_prod_t_prev = alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0, device=x.device)
        eps_pred = _predict_eps(eps_model, x, t)
        x0_pred, x_next, beta, beta_tilde = ddpm_posterior(alphas_cumprod[t], alpha_prod_t_prev, x, eps_pred)
        if t > 0:
            z = _randn(eps_pred, generator)
            x_next = x_next + (beta_tilde if variance == "fixed_small" else beta) ** 0.5 * z
        next_sigma = schedule.sigmas[prev_t] if prev_t >= 0 else 0.0
        _report(callback, i, len(run), t, schedule.sigmas[t], x, x, eps_pred, x0_pred, x_next, next_sigma)
        x = x_next
    return x


def sample_ddim(eps_model: EpsModel, noise: torch.Tensor, grid: Grid, *, eta: float = 0.0,
                init_latent: torch.Tensor | None = None, generator: torch.Generator | None = None,
                callback: StepCallback | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12), stride T // steps as in diffusers' DDIMScheduler:

    x_{t'} = √ᾱ_{t'} x̂_0 + √(1 - ᾱ_{t'} - s_t²) ε_θ + s_t z,
    s_t = η √((1 - ᾱ_{t'}) / (1 - ᾱ_t)) √(1 - ᾱ_t / ᾱ_{t'})   (the paper's σ_t, eq. 16; η = 0 deterministic,
    η = 1 DDPM).
    """
    if eta < 0:
        raise InvalidArgumentError(f"eta must be >= 0, got {eta}")
    schedule = grid.schedule
    alphas_cumprod = schedule.alphas_cumprod.to(noise.device)
    x = _vp_start(grid, noise, init_latent)
    run = grid.timesteps[grid.start_index:].tolist()
    lands = grid.prev_timesteps[grid.start_index:].tolist()  # t − ⌊T/N⌋
    for i, (t, prev_t) in enumerate(zip(run, lands, strict=True)):
        alpha_prod_t = alphas_cumprod[t]
        # Past t = 0 the last step lands on ᾱ_0, not 1 (SD's set_alpha_to_one=False).
        alpha_prod_t_prev = alphas_cumprod[prev_t] if prev_t >= 0 else alphas_cumprod[0]
        beta_prod_t = 1 - alpha_prod_t

        eps_pred = _predict_eps(eps_model, x, t)
        x0_pred = (x - beta_prod_t**0.5 * eps_pred) / alpha_prod_t**0.5  # "predicted x_0", eq. 12
        step_variance = ((1 - alpha_prod_t_prev) / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = eta * step_variance**0.5
        direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 * eps_pred  # "direction pointing to x_t"
        x_next = alpha_prod_t_prev**0.5 * x0_pred + direction
        if eta > 0:
            x_next = x_next + std_dev_t * _randn(eps_pred, generator)
        _report(callback, i, len(run), t, schedule.sigmas[t], x, x, eps_pred, x0_pred, x_next,
                schedule.sigmas[max(prev_t, 0)])
        x = x_next
    return x


def _vp_scales(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """σ-space σ → the VP scales (√ᾱ, √(1-ᾱ)) = (1/√(σ² + 1), σ/√(σ² + 1)) of x_t = √ᾱ x_0 + √(1-ᾱ) ε."""
    signal = 1 / ((sigma**2 + 1) ** 0.5)
    return signal, sigma * signal


def sample_dpmpp_2m(eps_model: EpsModel, noise: torch.Tensor, grid: Grid, *,
                    init_latent: torch.Tensor | None = None,
                    callback: StepCallback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), multistep second order in the half log-SNR
    λ = log(√ᾱ/√(1-ᾱ)) = −log σ.

    With h = λ_{t'} - λ_t and D = x̂_0 (first step and last step: first order, which is DDIM),
    or D = x̂_0 + (x̂_0 - x̂_0^{prev}) / (2 r), r = h_prev / h (later steps), and n = √(1-ᾱ) (the paper's σ_t):
    x_{t'} = (n_{t'}/n_t) x_t - √ᾱ_{t'} (e^{-h} - 1) D.
    Matches diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2).
    """
    timesteps, sigmas = grid.timesteps, grid.sigmas.to(noise.device)
    steps, start_index = grid.steps, grid.start_index
    if init_latent is None:
        x = noise
    else:
        signal_t, noise_t = _vp_scales(sigmas[start_index])
        x = signal_t * init_latent + noise_t * noise
    x0_pred_prev = None
    for i in range(start_index, steps):
        signal_s0, noise_s0 = _vp_scales(sigmas[i])
        signal_t, noise_t = _vp_scales(sigmas[i + 1])
        lambda_s0 = torch.log(signal_s0) - torch.log(noise_s0)
        lambda_t = torch.log(signal_t) - torch.log(noise_t)  # +∞ at σ = 0: e^{-h} = 0, x_{t'} = D
        h = lambda_t - lambda_s0

        eps_pred = _predict_eps(eps_model, x, timesteps[i])
        x0_pred = (x - noise_s0 * eps_pred) / signal_s0
        if x0_pred_prev is None or i == steps - 1:
            x_next = (noise_t / noise_s0) * x - (signal_t * (torch.exp(-h) - 1.0)) * x0_pred
        else:
            signal_s1, noise_s1 = _vp_scales(sigmas[i - 1])
            h_0 = lambda_s0 - (torch.log(signal_s1) - torch.log(noise_s1))
            r0 = h_0 / h
            D0, D1 = x0_pred, (1.0 / r0) * (x0_pred - x0_pred_prev)
            x_next = ((noise_t / noise_s0) * x - (signal_t * (torch.exp(-h) - 1.0)) * D0
                      - 0.5 * (signal_t * (torch.exp(-h) - 1.0)) * D1)
        _report(callback, i - start_index, steps - start_index, timesteps[i], sigmas[i], x, x, eps_pred,
                x0_pred, x_next, sigmas[i + 1])
        x, x0_pred_prev = x_next, x0_pred
    return x


# ---------------------------------------------------------------------------------------------
# σ-space samplers: the state is x = x_0 + σ ε (Karras et al. 2022)


def _sigma_start(grid: Grid, noise: torch.Tensor, sigmas: torch.Tensor,
                 init_latent: torch.Tensor | None) -> torch.Tensor:
    """The first σ-space state: noise · init_noise_sigma, or x_0 + σ ε for image-to-image (diffusers)."""
    if init_latent is not None:
        return init_latent + noise * sigmas[grid.start_index]
    return noise * grid.init_noise_sigma


def _model_input(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_0 + σ ε  →  x_t = (x_0 + σ ε) / √(σ² + 1), the VP input the model was trained on."""
    return x / ((sigma**2 + 1) ** 0.5)


def _euler_derivative(x: torch.Tensor, sigma: torch.Tensor,
                      eps_pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x̂_0 = x - σ ε̂ and the probability-flow ODE slope dx/dσ = (x - x̂_0)/σ (Karras et al. 2022, eq. 4)."""
    x0_pred = x - sigma * eps_pred
    return x0_pred, (x - x0_pred) / sigma


def sample_euler(eps_model: EpsModel, noise: torch.Tensor, grid: Grid, *, init_latent: torch.Tensor | None = None,
                 callback: StepCallback | None = None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE in σ (Karras et al. 2022, Algorithm 1 without the
    Heun correction): x_{i+1} = x_i + (σ_{i+1} - σ_i) dx/dσ. diffusers' EulerDiscreteScheduler."""
    timesteps, sigmas = grid.timesteps, grid.sigmas.to(noise.device)
    steps, start_index = grid.steps, grid.start_index
    x = _sigma_start(grid, noise, sigmas, init_latent)
    for i in range(start_index, steps):
        x_in = _model_input(x, sigmas[i])
        eps_pred = _predict_eps(eps_model, x_in, timesteps[i])
        x0_pred, derivative = _euler_derivative(x, sigmas[i], eps_pred)
        x_next = x + derivative * (sigmas[i + 1] - sigmas[i])
        _report(callback, i - start_index, steps - start_index, timesteps[i], sigmas[i], x_in, x, eps_pred,
                x0_pred, x_next, sigmas[i + 1])
        x = x_next
    return x


def sample_euler_ancestral(eps_model: EpsModel, noise: torch.Tensor, grid: Grid, *,
                           init_latent: torch.Tensor | None = None, generator: torch.Generator | None = None,
                           callback: StepCallback | None = None) -> torch.Tensor:
    """Euler ancestral (k-diffusion `sample_euler_ancestral`, diffusers' EulerAncestralDiscreteScheduler):
    split σ_{i+1}² = σ_down² + σ_up², take an Euler step to σ_down, then add fresh noise σ_up z."""
    timesteps, sigmas = grid.timesteps, grid.sigmas.to(noise.device)
    steps, start_index = grid.steps, grid.start_index
    x = _sigma_start(grid, noise, sigmas, init_latent)
    for i in range(start_index, steps):
        sigma_from, sigma_to = sigmas[i], sigmas[i + 1]
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5

        x_in = _model_input(x, sigma_from)
        eps_pred = _predict_eps(eps_model, x_in, timesteps[i])
        x0_pred, derivative = _euler_derivative(x, sigma_from, eps_pred)
        # diffusers draws z on every step, the last (σ_up = 0) included: the generator stays in step.
        x_next = x + derivative * (sigma_down - sigma_from) + _randn(eps_pred, generator) * sigma_up
        _report(callback, i - start_index, steps - start_index, timesteps[i], sigma_from, x_in, x, eps_pred,
                x0_pred, x_next, sigma_to)
        x = x_next
    return x


def sample_heun(eps_model: EpsModel, noise: torch.Tensor, grid: Grid, *, init_latent: torch.Tensor | None = None,
                callback: StepCallback | None = None) -> torch.Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Algorithm 1 with γ = 0), diffusers' HeunDiscreteScheduler.

    An Euler predictor to σ_{i+1}, then the model again at t_{i+1} and the trapezoid average of the two
    slopes; the last step (to σ = 0) is plain Euler. So the model sees t_0, t_1, t_1, t_2, t_2, …, t_{N-1}:
    2 (N - start) - 1 evaluations, each reported as one record.
    """
    timesteps, sigmas = grid.timesteps, grid.sigmas.to(noise.device)
    steps, start_index = grid.steps, grid.start_index
    x = _sigma_start(grid, noise, sigmas, init_latent)
    num_evals, index = 2 * (steps - start_index) - 1, 0
    for i in range(start_index, steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        dt = sigma_next - sigma
        x_in = _model_input(x, sigma)
        eps_pred = _predict_eps(eps_model, x_in, timesteps[i])
        x0_pred, derivative = _euler_derivative(x, sigma, eps_pred)
        x_euler = x + derivative * dt
        _report(callback, index, num_evals, timesteps[i], sigma, x_in, x, eps_pred, x0_pred, x_euler, sigma_next)
        index += 1
        if i == steps - 1:  # σ_next = 0: the slope there is undefined, keep the Euler step
            x = x_euler
            break
        x_in = _model_input(x_euler, sigma_next)
        eps_pred = _predict_eps(eps_model, x_in, timesteps[i + 1])
        x0_pred, derivative_next = _euler_derivative(x_euler, sigma_next, eps_pred)
        x_next = x + (derivative + derivative_next) / 2 * dt
        _report(callback, index, num_evals, timesteps[i + 1], sigma_next, x_in, x_euler, eps_pred, x0_pred,
                x_next, sigma_next)
        index += 1
        x = x_next
    return x


# ---------------------------------------------------------------------------------------------
# One entry point


def sample(eps_model: EpsModel, noise: torch.Tensor, grid: Grid, *, eta: float = 0.0,
           variance: str = "fixed_small", init_latent: torch.Tensor | None = None,
           generator: torch.Generator | None = None, callback: StepCallback | None = None,
           post_step: StepCallback | None = None) -> torch.Tensor:
    """Run `grid.sampler` from `noise` (ε ~ N(0, I), (B, C, H, W)) over `grid` and return the final latent.

    Image-to-image: give `init_latent` (the VAE latent of the input image, same shape) and a grid made with a
    strength; the sampler runs from the grid's `start_index`, exactly like diffusers'
    StableDiffusionImg2ImgPipeline, and noises the latent to the first step it runs (a strength that runs no
    step returns `init_latent` unchanged). `eta` is DDIM's, `variance` DDPM's, `generator` feeds the ancestral
    samplers (ddpm, euler_a, ddim with eta > 0). `post_step(record)` runs after every step, before `callback`,
    and may edit `record.x_next` in place (inpainting blends the known region back in); callbacks only watch.
    On a flow grid (`grid.flow_sigmas`, `sampling.flow.flow_grid`) the model is a velocity model, (x_s, s·T) → v̂,
    and Euler and Heun take rectified flow's steps.
    """
    if init_latent is None and grid.start_index:
        raise InvalidArgumentError("the grid starts part-way (image-to-image) but no init_latent was given")
    if grid.start_index == grid.steps:
        return init_latent
    if post_step is not None:
        watch = callback

        def callback(record: StepRecord) -> None:
            post_step(record)
            if watch is not None:
                watch(record)

    if grid.flow_sigmas is not None:  # a rectified-flow grid: `eps_model` gives the velocity v̂ (sampling.flow)
        flow_sampler = sample_flow_heun if grid.sampler == "heun" else sample_flow_euler
        return flow_sampler(eps_model, noise, grid, init_latent=init_latent, callback=callback)
    if grid.sampler == "ddpm":
        return sample_ddpm(eps_model, noise, grid, variance=variance, init_latent=init_latent, generator=generator,
                           callback=callback)
    if grid.sampler == "ddim":
        return sample_ddim(eps_model, noise, grid, eta=eta, init_latent=init_latent, generator=generator,
                           callback=callback)
    if grid.sampler == "euler_a":
        return sample_euler_ancestral(eps_model, noise, grid, init_latent=init_latent, generator=generator,
                                      callback=callback)
    deterministic = {"euler": sample_euler, "heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m}[grid.sampler]
    return deterministic(eps_model, noise, grid, init_latent=init_latent, callback=callback)
