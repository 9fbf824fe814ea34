"""Text → image, image → image and inpainting with classifier-free guidance, any sampler, any schedule.

One path for the data (Rombach et al. 2022, fig. 3):
prompt → tokenizer → text encoder → context;  seed → initial latent;
sampler loop over the denoiser ε̂ = ε_u + w (ε_c − ε_u)  (classifier-free guidance, Ho & Salimans 2022
eq. 6) → final latent → VAE decoder → image.

Random numbers are drawn like diffusers' pipelines (a CPU `torch.Generator` seeded with the seed; for
image-to-image the VAE posterior sample first, then the noise), so a seed gives the same picture.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from diffx.pipeline.conditioning import Conditioning, prompt_conditioning
from diffx.pipeline.conditioning import encode_text as encode_text  # re-exported: the API has always offered it here
from diffx.errors import InputImageError, InvalidArgumentError, check_choice
from diffx.images import image_to_tensor, repaint_mask, tensor_to_image
from diffx.models.attention import AttentionObserver, observe_attention
from diffx.models.tokenizer import TokenizedPrompt
from diffx.pipeline.prompt_weights import WeightedPrompt, weighted_tokens
from diffx.sampling.samplers import KARRAS_SAMPLERS, SAMPLERS, StepCallback, StepRecord, sample
from diffx.sampling.schedules import BETA_SCHEDULES, SPACINGS, NoiseSchedule, eps_from_prediction, vp_scales

if TYPE_CHECKING:
    from diffx.models.configs import SchedulerConfig
    from diffx.models.stable_diffusion import StableDiffusion


MAX_SIDE = 8192  # larger pictures would not fit in any memory
DECODE_BATCH = 8  # VAE decodes per batch: bounds the decoder's memory


class PromptTruncatedWarning(UserWarning):
    """The prompt had more than 77 tokens; the message says which words were cut."""


ELIDE_CHARS = 60  # a long cut-off text is shown as its first and last this many characters


def elide(text: str, keep: int = ELIDE_CHARS) -> str:
    """`text` quoted, or for a long one its first and last `keep` characters and how many are left out."""
    if len(text) <= 2 * keep + 20:
        return repr(text)
    return f"{text[:keep]!r} … {text[-keep:]!r} ({len(text)} characters)"


def check_finite(name: str, value: float) -> float:
    """`value` if it is a finite number, else an error naming the option (NaN and ±inf draw garbage)."""
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be a finite number, got {value}; give e.g. 7.5")
    return value


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
    guidance_rescale: float = 0.0  # φ of `rescale_guidance`, 0 to 1

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
        for name in ("guidance", "strength", "eta", "guidance_rescale"):
            check_finite(name, getattr(settings, name))
        if settings.karras and settings.sampler not in KARRAS_SAMPLERS:
            raise InvalidArgumentError(f"Karras sigmas (--karras) apply to {', '.join(KARRAS_SAMPLERS)}, "
                                       f"not {settings.sampler}; drop --karras or pick one of those samplers")
        if settings.steps < 1:
            raise InvalidArgumentError(f"steps must be at least 1, got {settings.steps}")
        if settings.steps > config.scheduler.num_train_timesteps:
            raise InvalidArgumentError(f"steps {settings.steps} is more than the "
                                       f"{config.scheduler.num_train_timesteps} training timesteps; pick fewer")
        if not 0 <= settings.seed < 2**63:
            raise InvalidArgumentError(f"seed must be between 0 and 2**63 - 1, got {settings.seed}")
        if settings.guidance < 0:
            raise InvalidArgumentError(f"guidance must be >= 0 (1 = no guidance), got {settings.guidance}")
        for name in ("strength", "guidance_rescale"):
            if not 0.0 <= getattr(settings, name) <= 1.0:
                raise InvalidArgumentError(f"{name} must be between 0 and 1, got {getattr(settings, name)}")
        multiple = size_multiple(model)
        for name, value in (("height", settings.height), ("width", settings.width)):
            if value > MAX_SIDE:
                raise InvalidArgumentError(f"{name} {value} is more than {MAX_SIDE} pixels; pick a smaller --size")
            if value <= 0 or value % multiple:
                raise InvalidArgumentError(
                    f"{name} {value} is not a positive multiple of {multiple}; "
                    f"try {max(multiple, round(value / multiple) * multiple)}")
        return settings


@dataclass
class Generation:
    """The result of `generate`: one entry per seed."""

    images: list[np.ndarray]  # (H, W, 3) uint8
    latents: Tensor  # (N, C, h, w) final scaled latents
    settings: list[GenerationSettings]

    def pil(self) -> list[Image.Image]:
        return [Image.fromarray(image) for image in self.images]

    def _repr_png_(self) -> bytes:
        """In Jupyter a generation shows as its images in a row (4 px apart), small ones enlarged (nearest
        neighbour, by a whole factor) to at least 192 px high."""
        factor = max(1, 192 // max(image.shape[0] for image in self.images))
        pictures = [p.resize((p.width * factor, p.height * factor), Image.NEAREST) for p in self.pil()]
        row = Image.new("RGB", (sum(p.width for p in pictures) + 4 * (len(pictures) - 1),
                                max(p.height for p in pictures)), "white")
        for picture, x in zip(pictures, np.cumsum([0] + [p.width + 4 for p in pictures[:-1]]), strict=True):
            row.paste(picture, (int(x), 0))
        buffer = io.BytesIO()
        row.save(buffer, format="PNG")
        return buffer.getvalue()


@dataclass(frozen=True)
class ImageRun:
    """What an observer of one image's generation is told before its first step."""

    index: int  # which of the seeds
    settings: GenerationSettings  # resolved, with this image's seed
    mode: str  # "text2img", "img2img" or "inpaint"
    tokens: TokenizedPrompt
    negative_tokens: TokenizedPrompt
    latent_shape: tuple[int, int, int, int]  # (1, C, h, w) of the sampler's state


@dataclass
class Observer:
    """Listeners to one image's generation; each is optional and none may change a number.

    `on_step`: the sampler's per-step callback; `on_guidance(ε_u, ε_c)`: the two noise predictions of the
    CFG denoiser (ε_u is None without guidance); `attention`: sees the attention probabilities of the
    layers it wants while the U-Net runs (`diffx.models.attention.observe_attention`).
    """

    on_step: StepCallback | None = None
    on_guidance: Callable[[Tensor | None, Tensor], None] | None = None
    attention: AttentionObserver | None = None


def size_multiple(model: StableDiffusion) -> int:
    """Image sides must be multiples of this: VAE factor × the U-Net's total downsampling."""
    return model.config.vae.downsample_factor * 2 ** (len(model.config.unet.channel_mult) - 1)


def tokenize(model: StableDiffusion, prompt: str, what: str = "prompt") -> WeightedPrompt:
    """Tokenize the prompt without its word weights (`diffx.prompt_weights`: "(red:1.3)", "[blue]"), each
    position keeping its weight; warn (not fail) when the 77-token window cuts words off."""
    tokens = weighted_tokens(model.tokenizer, prompt, what)
    if tokens.truncated_text:
        warnings.warn(PromptTruncatedWarning(
            f"prompt is longer than 77 tokens; cut off: {elide(tokens.truncated_text)}"), stacklevel=3)
    return tokens


def schedule_for(model: StableDiffusion, name: str) -> NoiseSchedule:
    """The model's training schedule, or another β schedule by name (with that schedule's defaults)."""
    return schedule_from_config(model.config.scheduler, name)


def schedule_from_config(config: SchedulerConfig, name: str) -> NoiseSchedule:
    """`schedule_for` from the scheduler config alone (e.g. the one a trace file records)."""
    if name == config.beta_schedule:
        return NoiseSchedule.from_config(config)
    return NoiseSchedule.create(name, config.num_train_timesteps, zero_terminal_snr=config.rescale_betas_zero_snr)


def rescale_guidance(guided: Tensor, cond: Tensor, rescale: float) -> Tensor:
    """Guidance rescale φ (Lin et al. 2023, eq. 15-16): the guided prediction scaled to the conditional one's
    standard deviation (per image), mixed with it by φ (paper: 0.7); large w over-exposes pictures without it."""
    if rescale == 0.0:
        return guided
    dims = list(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1 - rescale) * guided


def settings_denoiser(model: StableDiffusion, settings: GenerationSettings, conditioning: Conditioning,
                      observer: Observer | None = None, schedule: NoiseSchedule | None = None
                      ) -> Callable[[Tensor, Tensor], Tensor]:
    """`make_denoiser` for a prompt's `conditioning` at the settings' guidance: what generate and inversion use."""
    return make_denoiser(model, conditioning.context_cond, conditioning.context_uncond, settings.guidance, observer,
                         schedule=schedule, guidance_rescale=settings.guidance_rescale,
                         added_cond=conditioning.added_cond, added_uncond=conditioning.added_uncond)


def make_denoiser(model: StableDiffusion, context_cond: Tensor, context_uncond: Tensor | None,
                  guidance: float, observer: Observer | None = None, *, schedule: NoiseSchedule | None = None,
                  guidance_rescale: float = 0.0, added_cond: Tensor | None = None, added_uncond: Tensor | None = None
                  ) -> Callable[[Tensor, Tensor], Tensor]:
    """ε̂(x_t, t) with classifier-free guidance: ε_u + w (ε_c − ε_u)  (Ho & Salimans 2022, eq. 6).

    Without an unconditional context (guidance exactly 1) only ε_c is computed.
    Both halves run as one batch [uncond; cond], as diffusers does. Guidance (and its rescale φ,
    `rescale_guidance`) works on what the U-Net predicts; a v-prediction model's v̂ then becomes
    ε̂ = σ x_t + α v̂ at t's α, σ in `schedule` (default: the model's own), so every sampler, the
    tracer and the views see ε̂ whatever the model predicts. `observer` hears both (as ε̂) and watches
    the U-Net's attention. `added_*`: SDXL's vector y of each branch (`diffx.conditioning`).
    """
    dtype = model.dtype
    observer = observer or Observer()
    prediction_type = model.config.scheduler.prediction_type
    schedule = schedule or schedule_for(model, model.config.scheduler.beta_schedule)
    latent_channels = model.config.unet.out_channels  # an inpainting U-Net's input is [x_t, mask, image]

    def eps_model(x_in: Tensor, t: Tensor) -> Tensor:
        batch = x_in.shape[0]
        if context_uncond is None:
            out_uncond, out_cond = None, model.unet(x_in.to(dtype), t, context_cond, added_cond).float()
            out = out_cond
        else:
            y = None if added_cond is None else torch.cat([added_uncond, added_cond])
            out_both = model.unet(torch.cat([x_in, x_in]).to(dtype), t,
                                  torch.cat([context_uncond, context_cond]), y).float()
            out_uncond, out_cond = out_both[:batch], out_both[batch:]
            out = rescale_guidance(out_uncond + guidance * (out_cond - out_uncond), out_cond, guidance_rescale)
        alpha, sigma = (float(s) for s in vp_scales(schedule, t))
        x_t = x_in[:, :latent_channels].float()

        def to_eps(output: Tensor | None) -> Tensor | None:
            return None if output is None else eps_from_prediction(output, x_t, alpha, sigma, prediction_type)

        if observer.on_guidance is not None:
            observer.on_guidance(to_eps(out_uncond), to_eps(out_cond))
        return to_eps(out)

    if observer.attention is None:
        return eps_model

    def observed_eps_model(x_in: Tensor, t: Tensor) -> Tensor:
        with observe_attention(observer.attention):
            return eps_model(x_in, t)

    return observed_eps_model


@torch.no_grad()
def encode_image(model: StableDiffusion, image: Image.Image | np.ndarray | Tensor,
                 generator: torch.Generator | None) -> Tensor:
    """Picture → scaled latent z = scaling_factor · sample of q(z | x)  (image (H, W, 3) uint8 or PIL)."""
    x = image_to_tensor(image).to(model.device, model.dtype)
    posterior = model.vae.encode(x)
    return posterior.sample(generator).float() * model.config.vae.scaling_factor


@torch.no_grad()
def decoder_gflops(model: StableDiffusion, height: int | None = None, width: int | None = None) -> float:
    """The VAE decoder's cost for one image of `height` × `width` pixels (default: the model's size), in GFLOPs.

    Counted, not guessed: the decoder runs once on a 4×4 latent with hooks on its convolutions and linear
    layers (2 · outputs · inputs-per-output FLOPs each), and the count is scaled to the image's latent
    area — convolutions cost in proportion to it; the mid-block attention, quadratic in it, is a few
    percent of SD's decoder and is left out. SD1.5 at 512 px: ~2,480 GFLOPs; the embedded model
    (shapes-world-2) at 128 px: ~7.7.
    """
    factor = model.config.vae.downsample_factor
    height, width = height or model.config.image_size, width or model.config.image_size
    flops = []

    def count(module: torch.nn.Module, inputs: tuple, output: Tensor) -> None:
        per_output = module.in_features if isinstance(module, torch.nn.Linear) else \
            module.in_channels // module.groups * math.prod(module.kernel_size)
        flops.append(2 * output.numel() * per_output)

    layers = [m for m in model.vae.decoder.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    layers += [model.vae.post_quant_conv]
    hooks = [layer.register_forward_hook(count) for layer in layers]
    try:
        model.vae.decode(torch.zeros(1, model.config.vae.embed_dim, 4, 4, device=model.device, dtype=model.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(flops) / 1e9 * (height // factor) * (width // factor) / 16


@torch.no_grad()
def decode_latents(model: StableDiffusion, latents: Tensor, batch: int = DECODE_BATCH) -> list[np.ndarray]:
    """Scaled latents (N, C, h, w) → pictures (H, W, 3) uint8, `batch` at a time (fp32 for `force_upcast`)."""
    dtype = torch.float32 if model.config.vae.force_upcast and model.dtype == torch.float16 else model.dtype
    model.vae.to(dtype)  # SDXL's VAE overflows in fp16 (diffusers' SDXL pipeline upcasts it the same way)
    pictures = []
    for chunk in latents.split(batch):
        z = (chunk.float().to(model.device) / model.config.vae.scaling_factor).to(dtype)
        pictures += [tensor_to_image(image.clamp(-1, 1)) for image in model.vae.decode(z).float()]
    model.vae.to(model.dtype)
    return pictures


def _check_image_size(image: Image.Image | np.ndarray | Tensor, settings: GenerationSettings, what: str) -> None:
    height, width = (image.shape[-2:] if isinstance(image, Tensor) else np.asarray(image).shape[:2])
    if (height, width) != (settings.height, settings.width):
        raise InputImageError(
            f"{what} is {width}x{height} but the output is {settings.width}x{settings.height}; "
            f"resize it or pass --size {width}x{height}")


@torch.no_grad()
def generate(model: StableDiffusion, settings: GenerationSettings, *, seeds: Sequence[int] | None = None,
             init_image: Image.Image | np.ndarray | None = None,
             mask: Image.Image | np.ndarray | Tensor | None = None,
             observe: Callable[[ImageRun], Observer] | None = None,
             progress: StepCallback | None = None) -> Generation:
    """Generate one image per seed (default: `settings.seed`).

    - text → image: only `settings`;
    - image → image (SDEdit, Meng et al. 2022): `init_image` (H, W, 3) and `settings.strength`;
    - inpainting: `init_image` and `mask` (H, W), 1 = repaint; grey levels are thresholded at 0.5
      (>= 0.5 repaints). A 9-channel inpainting U-Net is conditioned on the mask and the masked image;
      any other SD1.x model blends the known region back in after every step (latent blending).
      Strength 1 starts from pure noise, as diffusers' inpainting pipeline.
    `observe(run)` is called before each image and returns the `Observer` that listens to it (the tracer
    in `diffx.trace` is one). `progress` is called after each model evaluation.
    """
    settings = settings.resolved(model)
    if mask is not None and init_image is None:
        raise InvalidArgumentError("a mask needs an image to inpaint; pass --image too")
    if init_image is not None:
        _check_image_size(init_image, settings, "the input image")
    if mask is not None:
        _check_image_size(mask, settings, "the mask")
    tokens = tokenize(model, settings.prompt)
    negative_tokens = tokenize(model, settings.negative_prompt, "negative prompt")
    # Guidance 1 is ε_c alone: the unconditional branch is skipped, observed or not (observing never changes numbers).
    conditioning = prompt_conditioning(model, tokens, negative_tokens, settings.guidance != 1.0,
                                       (settings.height, settings.width), not settings.negative_prompt)
    schedule = schedule_for(model, settings.schedule)
    vae = model.config.vae
    latent_shape = (1, vae.embed_dim, settings.height // vae.downsample_factor, settings.width // vae.downsample_factor)
    mode = "text2img" if init_image is None else ("inpaint" if mask is not None else "img2img")

    inpainting_unet = mask is not None and model.config.unet.in_channels == 9
    # diffusers' inpainting starts from pure noise at strength 1, and its 9-channel U-Net then needs no latent
    # of the unmasked image (only of the masked one).
    from_noise = mask is not None and settings.strength == 1.0
    repaint = repaint_mask(mask) if mask is not None else None

    images, latents, per_seed = [], [], []
    for index, seed in enumerate(seeds if seeds is not None else [settings.seed]):
        seed_settings = GenerationSettings(**{**settings.__dict__, "seed": int(seed)})
        observer = observe(ImageRun(index, seed_settings, mode, tokens, negative_tokens, latent_shape)) \
            if observe is not None else Observer()
        # Random draws in diffusers' order: the image's VAE posterior sample, the initial noise, then
        # (inpainting) the masked image's posterior sample.
        generator = torch.Generator().manual_seed(int(seed))
        needs_init_latent = init_image is not None and not (inpainting_unet and from_noise)
        init_latent = encode_image(model, init_image, generator) if needs_init_latent else None
        noise = torch.randn(latent_shape, generator=generator).to(model.device)
        denoiser = settings_denoiser(model, settings, conditioning, observer, schedule)
        callbacks = [cb for cb in (observer.on_step, progress) if cb is not None]
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
        images.append(decode_latents(model, final)[0])
        latents.append(final[0].float().cpu())
        per_seed.append(seed_settings)
    return Generation(images=images, latents=torch.stack(latents), settings=per_seed)


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
