"""The denoiser a sampler calls: ε̂(x_t, t) with classifier-free guidance, from the model and a prompt's conditioning.

ε̂ = ε_u + w (ε_c − ε_u)  (classifier-free guidance, Ho & Salimans 2022 eq. 6), with guidance rescale φ (Lin et al.
2023) and the model's prediction (ε or v) turned into ε̂, so every sampler, the tracer and the views see ε̂.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from diffx.errors import InvalidArgumentError
from diffx.models.attention import observe_attention
from diffx.pipeline.conditioning import Conditioning
from diffx.pipeline.families import family_of
from diffx.pipeline.observers import Observer
from diffx.pipeline.settings import ResolvedSettings
from diffx.sampling.flow import FLOW_SCHEDULE, flow_grid, flow_schedule
from diffx.sampling.grids import Grid, sampling_grid
from diffx.sampling.parameterizations import eps_from_velocity
from diffx.sampling.schedules import NoiseSchedule, vp_scales

if TYPE_CHECKING:
    from diffx.models.configs import SchedulerConfig
    from diffx.models.stable_diffusion import StableDiffusion


def schedule_for(model: StableDiffusion, name: str) -> NoiseSchedule:
    """The model's training schedule, or another β schedule by name (with that schedule's defaults)."""
    return schedule_from_config(model.config.scheduler, name)


def schedule_from_config(config: SchedulerConfig, name: str) -> NoiseSchedule:
    """`schedule_for` from the scheduler config alone (e.g. the one a trace file records)."""
    if name == FLOW_SCHEDULE:
        return flow_schedule(config.num_train_timesteps)
    if name == config.beta_schedule:
        return NoiseSchedule.from_config(config)
    return NoiseSchedule.create(name, config.num_train_timesteps, zero_terminal_snr=config.rescale_betas_zero_snr)


def grid_for(model: StableDiffusion, settings: ResolvedSettings, strength: float | None = None) -> Grid:
    """The sampling grid of `settings` on the model's scheduler (its schedule by name, its steps_offset);
    `strength`: image-to-image's, which starts the run part-way. A rectified-flow model's schedule ("flow") gives
    the flow grid with the model's time shift (`sampling.flow.flow_grid`)."""
    scheduler = model.config.scheduler
    if settings.schedule == FLOW_SCHEDULE:
        return flow_grid(settings.sampler, settings.steps, scheduler.shift, scheduler.num_train_timesteps, strength)
    return sampling_grid(settings, schedule_for(model, settings.schedule), steps_offset=scheduler.steps_offset,
                         strength=strength)


def rescale_guidance(guided: Tensor, cond: Tensor, rescale: float) -> Tensor:
    """Guidance rescale φ (Lin et al. 2023, eq. 15-16): the guided prediction scaled to the conditional one's
    standard deviation (per image), mixed with it by φ (paper: 0.7); large w over-exposes pictures without it."""
    if rescale == 0.0:
        return guided
    dims = list(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1 - rescale) * guided


def settings_denoiser(model: StableDiffusion, settings: ResolvedSettings, conditioning: Conditioning,
                      observer: Observer | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """`make_denoiser` for a prompt's `conditioning` at the settings' guidance, its prediction exchanged into ε̂ on
    the settings' schedule (the one the sampler's grid is made on): what generate and inversion use."""
    return make_denoiser(model, conditioning.context_cond, conditioning.context_uncond, settings.guidance, observer,
                         schedule=schedule_for(model, settings.schedule), guidance_rescale=settings.guidance_rescale,
                         added_cond=conditioning.added_cond, added_uncond=conditioning.added_uncond,
                         flow=settings.schedule == FLOW_SCHEDULE)


def make_denoiser(model: StableDiffusion, context_cond: Tensor, context_uncond: Tensor | None,
                  guidance: float, observer: Observer | None = None, *, schedule: NoiseSchedule | None = None,
                  guidance_rescale: float = 0.0, added_cond: Tensor | None = None, added_uncond: Tensor | None = None,
                  flow: bool = False) -> Callable[[Tensor, Tensor], Tensor]:
    """ε̂(x_t, t) with classifier-free guidance: ε_u + w (ε_c − ε_u)  (Ho & Salimans 2022, eq. 6).

    Without an unconditional context (guidance exactly 1) only ε_c is computed.
    Both halves run as one batch [uncond; cond], as diffusers does. The network and what it predicts come from
    the model's family (`diffx.pipeline.families`). Guidance (and its rescale φ, `rescale_guidance`) works on what
    the network predicts; its parameterization then turns that into ε̂ at t's scales √ᾱ, √(1 − ᾱ) in `schedule`
    (default: the model's own) — a v-prediction model's v̂ becomes ε̂ = √(1 − ᾱ) x_t + √ᾱ v̂ — so every sampler, the
    tracer and the views see ε̂ whatever the model predicts. `observer` hears both (as ε̂) and watches the network's
    attention.
    `added_*`: SDXL's vector y of each branch (`diffx.pipeline.conditioning`), SD3's pooled text.
    `flow`: for a rectified-flow sampler (`sampling.flow`), which keeps x_s = (1 − s) x_0 + s ε itself: the
    network is given x_s and t = s·T as they come and the guided velocity v̂ is returned unexchanged (at s = 1 an ε̂
    could not carry it); the observer still hears ε̂ = x_s + (1 − s) v̂.
    """
    dtype = model.dtype
    observer = observer or Observer()
    family = family_of(model)
    parameterization = family.parameterization(model)
    schedule = schedule or schedule_for(model, model.config.scheduler.beta_schedule)
    latent_channels = model.config.vae.embed_dim  # an inpainting U-Net's input is [x_t, mask, image]

    if flow and parameterization.name != "flow":
        raise InvalidArgumentError(f"{model.config.name} predicts {parameterization.name}, not a flow velocity; "
                                   "the flow schedule is for rectified-flow models (SD3)")

    def eps_model(x_in: Tensor, t: Tensor) -> Tensor:
        batch = x_in.shape[0]
        if flow:  # x_in is x_s, t is s·T: the network's own input and time
            s = float(t) / parameterization.num_train_timesteps
            x_net, t_net = x_in, t
        else:
            signal_scale, noise_scale = (float(s) for s in vp_scales(schedule, t))  # √ᾱ, √(1 − ᾱ)
            x_net, t_net = parameterization.network_input(x_in, t, signal_scale, noise_scale)  # flow: x_s, s·T
        if context_uncond is None:
            out_uncond, out_cond = None, family.network(model, x_net.to(dtype), t_net, context_cond, added_cond).float()
            out = out_cond
        else:
            y = None if added_cond is None else torch.cat([added_uncond, added_cond])
            out_both = family.network(model, torch.cat([x_net, x_net]).to(dtype), t_net,
                                      torch.cat([context_uncond, context_cond]), y).float()
            out_uncond, out_cond = out_both[:batch], out_both[batch:]
            out = rescale_guidance(out_uncond + guidance * (out_cond - out_uncond), out_cond, guidance_rescale)
        x_t = x_in[:, :latent_channels].float()

        def to_eps(output: Tensor | None) -> Tensor | None:
            if output is None:
                return None
            if flow:
                return eps_from_velocity(x_t, s, output)
            return parameterization.to_eps(output, x_t, signal_scale, noise_scale)

        if observer.on_guidance is not None:
            observer.on_guidance(to_eps(out_uncond), to_eps(out_cond))
        return out if flow else to_eps(out)

    if observer.attention is None:
        return eps_model

    def observed_eps_model(x_in: Tensor, t: Tensor) -> Tensor:
        with observe_attention(observer.attention):
            return eps_model(x_in, t)

    return observed_eps_model

