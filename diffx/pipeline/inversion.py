"""Picture → x_T by DDIM inversion, and the round trip back: how well does DDIM find a picture's noise?

`invert` encodes the picture with the VAE (z_0, the scaled latent), then runs the DDIM sampler backwards
(`ddim_inversion.invert_ddim`, Song et al. 2021 eq. 12) with the prompt's classifier-free-guided
denoiser ε̂ = ε_u + w (ε_c − ε_u), up to x_T. `reconstruct` runs DDIM forwards from that x_T with the same
prompt, steps and guidance; `round_trip` does both and measures the error. At w = 1 the trip comes back
close to z_0 and closer as the steps grow; at w = 7.5 the guided ε̂ is far from the one the inverse step
assumed and the error compounds until the picture is lost (Mokady et al. 2023, "Null-text Inversion", §3).

The error is counted in pixels, as PSNR = 10 log10(255² / MSE) between the decode of the reconstructed
latent and the decode of z_0, so that the VAE's own loss (the decode of z_0 against the input, also
reported) is not charged to the inversion.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffx.errors import InvalidArgumentError, check_finite
from diffx.files import atomic_output
from diffx.pipeline.codec import decode_latents, encode_image
from diffx.pipeline.conditioning import tokenize
from diffx.pipeline.denoiser import grid_for, settings_denoiser
from diffx.pipeline.families import family_of
from diffx.pipeline.observers import ImageRun, Observe, Observer, chain_callbacks
from diffx.pipeline.settings import GenerationSettings, ResolvedSettings, resolve_settings
from diffx.sampling.ddim_inversion import invert_ddim
from diffx.sampling.flow import invert_flow
from diffx.sampling.samplers import StepCallback, StepRecord, sample

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

DEFAULT_STEPS = 50  # the usual DDIM inversion setting (Mokady et al. 2023)
DEFAULT_GUIDANCE = 1.0  # no guidance: the setting under which inversion works
PSNR_CAP = 100.0  # dB reported for identical pictures (MSE 0)
LATENT_FORMAT = "diffx-inversion/1"  # the "format" entry of a saved inversion


@dataclass
class Inversion:
    """The result of `invert`: the picture's latent, the x_T DDIM finds for it, and the way up."""

    settings: ResolvedSettings  # prompt, negative prompt, steps, guidance and its rescale, spacing, seed
    latent: Tensor  # (1, C, h, w) z_0, the VAE latent of the picture (scaled)
    x_T: Tensor  # (1, C, h, w) the state after the last inverse step
    timesteps: list[int]  # (N,) the timestep of each step, ascending
    trajectory: Tensor | None = None  # (N + 1, C, h, w) z_0, then the state after each step (not kept in files)


@dataclass
class RoundTrip:
    """Invert, then sample back: the pictures and the error."""

    inversion: Inversion
    reconstructed_latent: Tensor  # (1, C, h, w) ẑ_0, what DDIM returns from x_T
    image: np.ndarray  # (H, W, 3) uint8 the input picture
    encoded: np.ndarray  # (H, W, 3) uint8 the decode of z_0: the best any latent method can return
    reconstruction: np.ndarray  # (H, W, 3) uint8 the decode of ẑ_0
    psnr: float  # dB, reconstruction against `encoded`: the round trip's own error
    psnr_input: float  # dB, reconstruction against the input (the VAE's loss included)
    vae_psnr: float  # dB, `encoded` against the input: the VAE's loss alone
    latent_error: float  # max |ẑ_0 − z_0|


@dataclass
class RoundTripSweep:
    """Round trips of one picture over a grid of step counts and guidance weights."""

    steps: list[int]
    guidances: list[float]
    trips: dict[tuple[float, int], RoundTrip]  # (w, steps) → its round trip

    def psnr(self) -> np.ndarray:
        """(len(guidances), len(steps)) PSNR in dB of every round trip."""
        return np.array([[self.trips[w, n].psnr for n in self.steps] for w in self.guidances])


def psnr(picture: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 pictures, 10 log10(255² / MSE) dB (PSNR_CAP when identical)."""
    mse = float(np.mean((picture.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0**2 / mse))


def inversion_settings(model: StableDiffusion, image: Image.Image | np.ndarray, prompt: str = "",
                       steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE, *,
                       negative_prompt: str | None = None, spacing: str | None = None, schedule: str | None = None,
                       seed: int = 0, guidance_rescale: float = 0.0) -> ResolvedSettings:
    """The DDIM settings of an inversion of `image`, resolved and checked (its size must suit the model; the
    guidance rescale φ, as `generate` applies it, 0 to 1)."""
    height, width = np.asarray(image).shape[:2]
    check_finite("guidance", guidance)
    settings = GenerationSettings(prompt=prompt, negative_prompt=negative_prompt, height=height, width=width,
                                  steps=steps, guidance=guidance, sampler="ddim", schedule=schedule,
                                  spacing=spacing, seed=seed, guidance_rescale=guidance_rescale)
    return resolve_settings(model, settings)


def _observed_denoiser(model: StableDiffusion, settings: ResolvedSettings, mode: str, latent_shape: torch.Size,
                       observe: Observe | None) -> tuple[Callable[[Tensor, Tensor], Tensor], Observer]:
    """ε̂(x_t, t) for the settings' prompt and guidance (only ε_c at w = 1), as `generate` samples with it
    (SDXL's size conditioning included), and the observer `observe` gives this run."""
    tokens, negative_tokens = tokenize(model, settings.prompt), tokenize(model, settings.negative_prompt or "")
    observer = observe(ImageRun(0, settings, mode, tokens, negative_tokens, tuple(latent_shape))) \
        if observe is not None else Observer()
    conditioning = family_of(model).conditioning(model, [tokens], negative_tokens, settings.guided,
                                       (settings.height, settings.width), settings.negative_prompt is None)
    return settings_denoiser(model, settings, conditioning, observer), observer


@torch.no_grad()
def invert(model: StableDiffusion, image: Image.Image | np.ndarray, prompt: str = "", steps: int = DEFAULT_STEPS,
           guidance: float = DEFAULT_GUIDANCE, *, negative_prompt: str | None = None, spacing: str | None = None,
           schedule: str | None = None, seed: int = 0, guidance_rescale: float = 0.0, observe: Observe | None = None,
           progress: StepCallback | None = None) -> Inversion:
    """Find the x_T from which DDIM (η = 0, `steps` steps, guidance `guidance` with rescale φ =
    `guidance_rescale`) draws `image` (H, W, 3).

    The picture is encoded as a sample of the VAE posterior drawn with `seed` (as diffusers' inversion
    pipelines do); `observe(run)` gives the observer that listens to the denoiser and the steps, as in
    `generate` (its run's mode is "invert"); `progress` is called after each step.
    """
    settings = inversion_settings(model, image, prompt, steps, guidance, negative_prompt=negative_prompt,
                                  spacing=spacing, schedule=schedule, seed=seed, guidance_rescale=guidance_rescale)
    latent = encode_image(model, image, torch.Generator().manual_seed(settings.seed))  # (1, C, h, w)
    denoiser, observer = _observed_denoiser(model, settings, "invert", latent.shape, observe)
    states, timesteps = [latent[0].float().cpu()], []

    def keep(record: StepRecord) -> None:
        states.append(record.x_next[0].float().cpu())
        timesteps.append(round(record.timestep))  # a flow grid's are fractional (s · 1000)

    grid = grid_for(model, settings)
    climb = invert_ddim if grid.flow_sigmas is None else invert_flow  # a flow model's run backwards (SD3)
    x_T = climb(denoiser, latent, grid, callback=chain_callbacks(keep, observer.on_step, progress))
    return Inversion(settings=settings, latent=latent, x_T=x_T, timesteps=timesteps,
                     trajectory=torch.stack(states))


@torch.no_grad()
def reconstruct(model: StableDiffusion, inversion: Inversion, observe: Observe | None = None,
                progress: StepCallback | None = None) -> Tensor:
    """DDIM from the inversion's x_T with its own prompt, steps and guidance: ẑ_0 (1, C, h, w). `observe` as in
    `invert` (mode "reconstruct")."""
    settings = inversion.settings
    denoiser, observer = _observed_denoiser(model, settings, "reconstruct", inversion.x_T.shape, observe)
    return sample(denoiser, inversion.x_T, grid_for(model, settings),
                  callback=chain_callbacks(observer.on_step, progress))


def round_trip(model: StableDiffusion, image: Image.Image | np.ndarray, prompt: str = "",
               steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE, *, negative_prompt: str | None = None,
               spacing: str | None = None, schedule: str | None = None, seed: int = 0, guidance_rescale: float = 0.0,
               observe: Observe | None = None, progress: StepCallback | None = None) -> RoundTrip:
    """`invert` then `reconstruct` with the same settings, and the error of the trip (see `RoundTrip`).
    `observe` listens to the inversion only; `progress` to both halves."""
    inversion = invert(model, image, prompt, steps, guidance, negative_prompt=negative_prompt, spacing=spacing,
                       schedule=schedule, seed=seed, guidance_rescale=guidance_rescale, observe=observe,
                       progress=progress)
    latent = reconstruct(model, inversion, progress=progress)
    picture = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    encoded, reconstruction = decode_latents(model, torch.cat([inversion.latent, latent]))
    return RoundTrip(inversion=inversion, reconstructed_latent=latent, image=picture, encoded=encoded,
                     reconstruction=reconstruction, psnr=psnr(reconstruction, encoded),
                     psnr_input=psnr(reconstruction, picture), vae_psnr=psnr(encoded, picture),
                     latent_error=float((latent - inversion.latent).abs().max()))


def check_sweep(steps: Sequence[int], guidances: Sequence[float], num_train_timesteps: int) -> None:
    """Every step count of a sweep in 1 … T and every guidance weight finite and >= 0, before any work."""
    if not steps or not guidances:
        raise InvalidArgumentError("a round-trip sweep needs at least one step count and one guidance weight")
    for count in steps:
        if not 1 <= count <= num_train_timesteps:
            raise InvalidArgumentError(f"sweep steps {count} is out of range; pick 1 to {num_train_timesteps}")
    for w in guidances:
        if check_finite("sweep guidance", w) < 0:
            raise InvalidArgumentError(f"sweep guidance must be >= 0 (1 = none), got {w}")


def round_trip_sweep(model: StableDiffusion, image: Image.Image | np.ndarray, prompt: str = "",
                     steps: Sequence[int] = (10, 25, 50), guidances: Sequence[float] = (1.0, 3.0, 7.5), *,
                     negative_prompt: str | None = None, spacing: str | None = None, schedule: str | None = None,
                     seed: int = 0, guidance_rescale: float = 0.0,
                     progress: StepCallback | None = None) -> RoundTripSweep:
    """A `round_trip` of `image` at every (guidance, steps) pair, each with rescale φ = `guidance_rescale`: the
    error against both."""
    check_sweep(steps, guidances, model.config.scheduler.num_train_timesteps)
    trips = {(float(w), int(n)): round_trip(model, image, prompt, int(n), float(w), negative_prompt=negative_prompt,
                                            spacing=spacing, schedule=schedule, seed=seed,
                                            guidance_rescale=guidance_rescale, progress=progress)
             for w in guidances for n in steps}
    return RoundTripSweep(steps=[int(n) for n in steps], guidances=[float(w) for w in guidances], trips=trips)


def save_inversion(inversion: Inversion, path: str | os.PathLike, force: bool = False) -> Path:
    """Write x_T, z_0, the timesteps and the settings as a torch file (tensors and strings only, so
    `torch.load(weights_only=True)` reads it without running code); atomically, never over a file without `force`."""
    payload = {"format": LATENT_FORMAT, "x_T": inversion.x_T.detach().float().cpu(),
               "latent": inversion.latent.detach().float().cpu(),
               "timesteps": torch.tensor(inversion.timesteps, dtype=torch.int64),
               "settings": json.dumps(inversion.settings.as_dict())}
    with atomic_output(path, force) as tmp_path:
        torch.save(payload, tmp_path)
    return Path(path)


def load_inversion(path: str | os.PathLike) -> Inversion:
    """Read a file `save_inversion` wrote, checking everything in it: one clear error for anything else."""
    path = Path(path)
    fix = "write one with `diffx invert IMAGE --save-latent x_T.pt`"
    if not path.is_file():
        raise InvalidArgumentError(f"no inversion file at {path}; {fix}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a file that is not its own (pickle, zip, EOF, …)
        raise InvalidArgumentError(f"cannot read {path} as an inversion file ({type(err).__name__}); {fix}") from None
    if not isinstance(payload, dict) or payload.get("format") != LATENT_FORMAT:
        raise InvalidArgumentError(f"{path} is not a {LATENT_FORMAT} file; {fix}")
    x_T, latent, timesteps = (payload.get(key) for key in ("x_T", "latent", "timesteps"))
    for name, value in (("x_T", x_T), ("latent", latent)):
        if not isinstance(value, Tensor) or value.dtype != torch.float32 or value.ndim != 4 or value.shape[0] != 1:
            raise InvalidArgumentError(f"{path}: {name} is not a (1, C, h, w) float32 tensor; {fix}")
        if not torch.isfinite(value).all():
            raise InvalidArgumentError(f"{path}: {name} holds NaN or infinite values; {fix}")
    if x_T.shape != latent.shape:
        raise InvalidArgumentError(f"{path}: x_T {tuple(x_T.shape)} and z_0 {tuple(latent.shape)} differ in shape")
    try:
        settings = ResolvedSettings(**json.loads(payload.get("settings")))
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{path}: the settings are not those of a diffx inversion; {fix}") from None
    if not isinstance(timesteps, Tensor) or timesteps.ndim != 1 or len(timesteps) != settings.steps:
        raise InvalidArgumentError(f"{path}: expected {settings.steps} timesteps, one per step; {fix}")
    return Inversion(settings=settings, latent=latent, x_T=x_T, timesteps=timesteps.tolist())
