"""Text → image, image → image and inpainting with classifier-free guidance, any sampler, any schedule.

One path for the data (Rombach et al. 2022, fig. 3):
prompt → tokenizer → text encoder → context;  seed → initial latent;
sampler loop over the denoiser ε̂ = ε_u + w (ε_c − ε_u)  (classifier-free guidance, Ho & Salimans 2022
eq. 6) → final latent → VAE decoder → image.

Random numbers are drawn like diffusers' pipelines (a CPU `torch.Generator` seeded with the seed; for
image-to-image the VAE posterior sample first, then the noise), so a seed gives the same picture.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

import diffx
from diffx.errors import InputImageError, InvalidArgumentError, check_choice
from diffx.models.attention import observe_attention
from diffx.models.tokenizer import TokenizedPrompt
from diffx.render.io import MASK_THRESHOLD
from diffx.render.latents import tensor_to_image
from diffx.samplers import SAMPLERS, StepRecord, sample
from diffx.schedules import BETA_SCHEDULES, SPACINGS, NoiseSchedule
from diffx.trace import Trace, TraceOptions, Tracer

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion


class PromptTruncatedWarning(UserWarning):
    """The prompt had more than 77 tokens; the message says which words were cut."""


@dataclass
class GenerationSettings:
    """All the knobs of one generation (the model's defaults fill the `None`s)."""

    prompt: str = ""
    negative_prompt: str = ""
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None
    sampler: str | None = None
    schedule: str | None = None  # β schedule: None = the one the model was trained with
    spacing: str | None = None
    karras: bool = False
    eta: float = 0.0
    seed: int = 0
    strength: float = 0.8  # image-to-image and inpainting: how much of the schedule to run

    def resolved(self, model: StableDiffusion) -> GenerationSettings:
        """A copy with every default filled in from the model and every value checked."""
        config = model.config
        size = config.image_size
        settings = GenerationSettings(**{**self.__dict__})
        settings.height = self.height or size
        settings.width = self.width or size
        settings.steps = config.default_steps if self.steps is None else self.steps
        settings.guidance = config.default_guidance if self.guidance is None else self.guidance
        settings.sampler = self.sampler or config.default_sampler
        settings.schedule = self.schedule or config.scheduler.beta_schedule
        settings.spacing = self.spacing or config.scheduler.timestep_spacing
        check_choice("sampler", settings.sampler, SAMPLERS)
        check_choice("schedule", settings.schedule, BETA_SCHEDULES)
        check_choice("spacing", settings.spacing, SPACINGS)
        if settings.steps < 1:
            raise InvalidArgumentError(f"steps must be at least 1, got {settings.steps}")
        if settings.guidance < 0:
            raise InvalidArgumentError(f"guidance must be >= 0 (1 = no guidance), got {settings.guidance}")
        if not 0.0 <= settings.strength <= 1.0:
            raise InvalidArgumentError(f"strength must be between 0 and 1, got {settings.strength}")
        multiple = size_multiple(model)
        for name, value in (("height", settings.height), ("width", settings.width)):
            if value <= 0 or value % multiple:
                raise InvalidArgumentError(
                    f"{name} {value} is not a positive multiple of {multiple}; "
                    f"try {max(multiple, round(value / multiple) * multiple)}")
        return settings


@dataclass
class Generation:
    """The result of `generate`: one entry per seed."""

    images: list[np.ndarray]  # (H, W, 3) uint8
    latents: Tensor  # (N, 4, h, w) final scaled latents
    settings: list[GenerationSettings]
    traces: list[Trace] = field(default_factory=list)

    def pil(self) -> list[Image.Image]:
        return [Image.fromarray(image) for image in self.images]


def size_multiple(model: StableDiffusion) -> int:
    """Image sides must be multiples of this: VAE factor × the U-Net's total downsampling."""
    return model.config.vae.downsample_factor * 2 ** (len(model.config.unet.channel_mult) - 1)


def tokenize(model: StableDiffusion, prompt: str) -> TokenizedPrompt:
    """Tokenize, warning (not failing) when the 77-token window cuts words off."""
    tokens = model.tokenizer.encode(prompt)
    if tokens.truncated_text:
        warnings.warn(PromptTruncatedWarning(
            f"prompt is longer than 77 tokens; cut off: {tokens.truncated_text!r}"), stacklevel=3)
    return tokens


@torch.no_grad()
def encode_text(model: StableDiffusion, prompts: Sequence[TokenizedPrompt]) -> Tensor:
    """Context for cross-attention: CLIP's last hidden state, (B, 77, width)."""
    ids = torch.tensor([p.ids for p in prompts], device=_device(model))
    return model.text_encoder(ids)


def _device(model: StableDiffusion) -> torch.device:
    return next(model.unet.parameters()).device


def _dtype(model: StableDiffusion) -> torch.dtype:
    return next(model.unet.parameters()).dtype


def schedule_for(model: StableDiffusion, name: str) -> NoiseSchedule:
    """The model's training schedule, or another β schedule by name (with that schedule's defaults)."""
    config = model.config.scheduler
    if name == config.beta_schedule:
        return NoiseSchedule.from_config(config)
    return NoiseSchedule.create(name, config.num_train_timesteps)


def make_denoiser(model: StableDiffusion, context_cond: Tensor, context_uncond: Tensor | None,
                  guidance: float, tracer: Tracer | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """ε̂(x_t, t) with classifier-free guidance: ε_u + w (ε_c − ε_u)  (Ho & Salimans 2022, eq. 6).

    Without an unconditional context (guidance exactly 1) only ε_c is computed.
    Both halves run as one batch [uncond; cond], as diffusers does.
    """
    dtype = _dtype(model)

    def eps_model(x_in: Tensor, t: Tensor) -> Tensor:
        batch = x_in.shape[0]
        if context_uncond is None:
            eps_uncond, eps_cond = None, model.unet(x_in.to(dtype), t, context_cond).float()
            eps = eps_cond
        else:
            eps_both = model.unet(torch.cat([x_in, x_in]).to(dtype), t,
                                  torch.cat([context_uncond, context_cond])).float()
            eps_uncond, eps_cond = eps_both[:batch], eps_both[batch:]
            eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        if tracer is not None:
            tracer.on_guidance(eps_uncond, eps_cond)
        return eps

    if tracer is None:
        return eps_model

    def traced_eps_model(x_in: Tensor, t: Tensor) -> Tensor:
        tracer.latent_shape = tuple(x_in.shape[-2:])
        with observe_attention(tracer):
            return eps_model(x_in, t)

    return traced_eps_model


@torch.no_grad()
def encode_image(model: StableDiffusion, image: Image.Image | np.ndarray | Tensor,
                 generator: torch.Generator | None) -> Tensor:
    """Picture → scaled latent z = scaling_factor · sample of q(z | x)  (image (H, W, 3) uint8 or PIL)."""
    x = image_to_tensor(image).to(_device(model), _dtype(model))
    posterior = model.vae.encode(x)
    return posterior.sample(generator).float() * model.config.vae.scaling_factor


@torch.no_grad()
def decode_latents(model: StableDiffusion, latents: Tensor) -> list[np.ndarray]:
    """Scaled latents (N, 4, h, w) → pictures (H, W, 3) uint8."""
    images = model.vae.decode((latents / model.config.vae.scaling_factor).to(_dtype(model))).float()
    return [tensor_to_image(image.clamp(-1, 1)) for image in images]


def image_to_tensor(image: Image.Image | np.ndarray | Tensor) -> Tensor:
    """(H, W, 3) uint8 or PIL → (1, 3, H, W) float in [-1, 1]; a (3, H, W) tensor in [-1, 1] passes through."""
    if isinstance(image, Tensor):
        return image[None] if image.ndim == 3 else image
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def _check_image_size(image: Image.Image | np.ndarray | Tensor, settings: GenerationSettings, what: str) -> None:
    height, width = (image.shape[-2:] if isinstance(image, Tensor) else np.asarray(image).shape[:2])
    if (height, width) != (settings.height, settings.width):
        raise InputImageError(
            f"{what} is {width}x{height} but the output is {settings.width}x{settings.height}; "
            f"resize it or pass --size {width}x{height}")


def _trace_meta(model: StableDiffusion, settings: GenerationSettings, tokens: TokenizedPrompt,
                negative_tokens: TokenizedPrompt, mode: str) -> dict:
    def token_info(t: TokenizedPrompt) -> dict:
        return {"words": t.words, "tokens": t.tokens[: t.num_tokens], "ids": t.ids[: t.num_tokens],
                "word_ids": t.word_ids[: t.num_tokens], "num_tokens": t.num_tokens,
                "truncated_text": t.truncated_text}

    vae = model.config.vae
    meta = {
        "mode": mode, "prompt": settings.prompt, "negative_prompt": settings.negative_prompt,
        "tokens": token_info(tokens), "negative_tokens": token_info(negative_tokens),
        "model": {"name": model.config.name, "source": model.source,
                  "config": model.config.to_dict()},
        "settings": dict(settings.__dict__),
        "latent_scaling_factor": vae.scaling_factor,
        # C rows of (R, G, B) weights then the bias row, as `views.latent_preview` reads them.
        "latent_rgb_factors": (None if vae.latent_rgb_factors is None
                               else [*map(list, vae.latent_rgb_factors), list(vae.latent_rgb_bias or (0, 0, 0))]),
        "versions": {"diffx": diffx.__version__, "torch": torch.__version__},
    }
    return json.loads(json.dumps(meta))  # JSON-native (tuples → lists), so a saved trace loads back equal


@torch.no_grad()
def generate(model: StableDiffusion, settings: GenerationSettings, *, seeds: Sequence[int] | None = None,
             init_image: Image.Image | np.ndarray | None = None,
             mask: Image.Image | np.ndarray | Tensor | None = None,
             trace: TraceOptions | bool | None = None, decode_every: int = 0,
             progress: Callable[[StepRecord], None] | None = None) -> Generation:
    """Generate one image per seed (default: `settings.seed`).

    - text → image: only `settings`;
    - image → image (SDEdit, Meng et al. 2022): `init_image` (H, W, 3) and `settings.strength`;
    - inpainting: `init_image` and `mask` (H, W), 1 = repaint; grey levels are thresholded at 0.5
      (>= 0.5 repaints). A 9-channel inpainting U-Net is conditioned on the mask and the masked image;
      any other SD1.x model blends the known region back in after every step (latent blending).
      Strength 1 starts from pure noise, as diffusers' inpainting pipeline.
    `trace`: record every step (True for the default `TraceOptions`). `decode_every`: also VAE-decode
    the predicted x̂0 every N steps into the trace. `progress` is called after each model evaluation.
    """
    settings = settings.resolved(model)
    if mask is not None and init_image is None:
        raise InvalidArgumentError("a mask needs an image to inpaint; pass --image too")
    if init_image is not None:
        _check_image_size(init_image, settings, "the input image")
    if mask is not None:
        _check_image_size(mask, settings, "the mask")
    trace_options = TraceOptions() if trace is True else (trace or None)
    tokens = tokenize(model, settings.prompt)
    negative_tokens = tokenize(model, settings.negative_prompt)
    context_cond = encode_text(model, [tokens])
    # Guidance 1 is ε_c alone: the unconditional branch is skipped, traced or not (tracing never changes numbers).
    context_uncond = encode_text(model, [negative_tokens]) if settings.guidance != 1.0 else None
    schedule = schedule_for(model, settings.schedule)
    factor = model.config.vae.downsample_factor
    latent_shape = (1, 4, settings.height // factor, settings.width // factor)
    device = _device(model)
    mode = "text2img" if init_image is None else ("inpaint" if mask is not None else "img2img")

    inpainting_unet = mask is not None and model.config.unet.in_channels == 9
    # diffusers' inpainting starts from pure noise at strength 1, and its 9-channel U-Net then needs no latent
    # of the unmasked image (only of the masked one).
    from_noise = mask is not None and settings.strength == 1.0
    repaint = _repaint_mask(mask) if mask is not None else None

    images, latents, traces, per_seed = [], [], [], []
    for seed in (seeds if seeds is not None else [settings.seed]):
        seed_settings = GenerationSettings(**{**settings.__dict__, "seed": int(seed)})
        # Random draws in diffusers' order: the image's VAE posterior sample, the initial noise, then
        # (inpainting) the masked image's posterior sample.
        generator = torch.Generator().manual_seed(int(seed))
        needs_init_latent = init_image is not None and not (inpainting_unet and from_noise)
        init_latent = encode_image(model, init_image, generator) if needs_init_latent else None
        noise = torch.randn(latent_shape, generator=generator).to(device)
        tracer = None
        if trace_options is not None:
            tracer = Tracer(trace_options, num_tokens=tokens.num_tokens,
                            num_negative_tokens=negative_tokens.num_tokens)
        denoiser = make_denoiser(model, context_cond, context_uncond, settings.guidance, tracer)
        callbacks = [cb for cb in (tracer.on_step if tracer else None, progress) if cb is not None]
        if inpainting_unet:
            masked_image = image_to_tensor(init_image) * (1 - repaint)  # the hole blanked to grey (0)
            denoiser = _mask_conditioned(denoiser, repaint, encode_image(model, masked_image, generator))
        elif mask is not None:
            # diffusers encodes the masked image here even for a 4-channel U-Net: draw the same amount
            # of noise so that ancestral samplers stay in step with it.
            torch.randn(latent_shape, generator=generator)
            callbacks.insert(0, _latent_blending(repaint, init_latent, noise))

        def callback(record: StepRecord, callbacks: list = callbacks) -> None:
            for cb in callbacks:
                cb(record)

        start_latent = None if from_noise else init_latent
        final = sample(settings.sampler, denoiser, noise, schedule, settings.steps,
                       spacing=settings.spacing, steps_offset=model.config.scheduler.steps_offset,
                       karras=settings.karras, eta=settings.eta, init_latent=start_latent,
                       strength=settings.strength if start_latent is not None else None,
                       generator=generator, callback=callback)
        image = decode_latents(model, final)[0]
        images.append(image)
        latents.append(final[0].float().cpu())
        per_seed.append(seed_settings)
        if tracer is not None:
            extra = {"final_latent": final[0].float().cpu(), "image": torch.from_numpy(image)}
            extra.update(_decoded_steps(model, tracer, decode_every))
            traces.append(tracer.finish(_trace_meta(model, seed_settings, tokens, negative_tokens, mode), extra))
    return Generation(images=images, latents=torch.stack(latents), settings=per_seed, traces=traces)


def _decoded_steps(model: StableDiffusion, tracer: Tracer, every: int) -> dict[str, Tensor]:
    """VAE decodes of the recorded x̂0 at steps 0, N, 2N, … and the last, batched."""
    x0_steps = tracer.recorded("x0")
    if not every or not x0_steps:
        return {}
    steps = sorted(set(range(0, len(x0_steps), every)) | {len(x0_steps) - 1})
    batch = torch.stack([x0_steps[i] for i in steps]).float().to(_device(model))
    decoded = [torch.from_numpy(im) for chunk in batch.split(8) for im in decode_latents(model, chunk)]
    return {"decoded_x0": torch.stack(decoded), "decoded_steps": torch.tensor(steps)}


def _repaint_mask(mask: Image.Image | np.ndarray | Tensor) -> Tensor:
    """Pixel mask (H, W), 1 = repaint → (1, 1, H, W) of exact 0s and 1s.

    Grey levels are thresholded at MASK_THRESHOLD (>= 0.5 → repaint), like `load_mask` and diffusers'
    mask processor; a uint8 array or a PIL image counts 255 as 1.
    """
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    levels = torch.as_tensor(np.asarray(mask), dtype=torch.float32)
    if isinstance(mask, np.ndarray) and mask.dtype == np.uint8:
        levels = levels / 255.0
    return (levels >= MASK_THRESHOLD).float()[None, None]


def _latent_mask(repaint: Tensor, like: Tensor) -> Tensor:
    """(1, 1, H, W) pixel mask → the latent grid of `like`, (1, 1, h, w), by nearest neighbour as diffusers."""
    return F.interpolate(repaint, size=like.shape[-2:], mode="nearest").to(like.device, like.dtype)


def _mask_conditioned(denoiser: Callable[[Tensor, Tensor], Tensor], repaint: Tensor,
                      masked_image_latent: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """The 9-channel inpainting U-Net sees [x_t, mask (1 = repaint), latent of the image with the hole blanked]."""
    latent_repaint = _latent_mask(repaint, masked_image_latent)

    def conditioned(x_in: Tensor, t: Tensor) -> Tensor:
        return denoiser(torch.cat([x_in, latent_repaint, masked_image_latent], dim=1), t)

    return conditioned


def _latent_blending(repaint: Tensor, init_latent: Tensor, noise: Tensor) -> Callable[[StepRecord], None]:
    """Inpainting with a plain SD1.x U-Net: after every step, overwrite the known region of the next state.

    It becomes the input image's latent noised to the state's level σ' with the initial noise, in the
    sampler's own space (VP x_t = √ᾱ x0 + √(1 − ᾱ) ε, or σ-space x0 + σ' ε); after the last step the
    clean latent itself — as diffusers' StableDiffusionInpaintPipeline does for a 4-channel U-Net.
    """
    known = 1 - _latent_mask(repaint, init_latent)

    def blend(record: StepRecord) -> None:
        next_sigma = record.next_sigma
        if record.index == record.num_steps - 1:
            noised = init_latent
        elif record.state is record.x:  # VP samplers hand the model their state itself
            alpha = 1.0 / (next_sigma**2 + 1.0)
            noised = math.sqrt(alpha) * init_latent + math.sqrt(1 - alpha) * noise
        else:
            noised = init_latent + next_sigma * noise
        record.x_next.copy_(known * noised + (1 - known) * record.x_next)

    return blend
