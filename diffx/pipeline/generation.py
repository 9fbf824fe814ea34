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
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffx.errors import InputImageError, InvalidArgumentError
from diffx.images import image_to_tensor, load_init_image, repaint_mask
from diffx.pipeline.codec import decode_latents, encode_image
from diffx.pipeline.conditioning import tokenize
from diffx.pipeline.denoiser import grid_for, settings_denoiser
from diffx.pipeline.families import family_of
from diffx.pipeline.inpainting import latent_blending, mask_conditioned
from diffx.pipeline.observers import ImageRun, Observe, Observer, chain_callbacks
from diffx.pipeline.settings import GenerationSettings, ResolvedSettings, resolve_settings
from diffx.sampling.samplers import EpsModel, StepCallback, sample
from diffx.sampling.schedules import img2img_start

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

# Samplers that draw no noise after the initial latent (DDIM at η = 0): a batch of images gives each image the
# same picture it gets alone, so `generate(batch=…)` may run several at once.
DETERMINISTIC_SAMPLERS = ("ddim", "euler", "heun", "dpmpp_2m")
Picture = Image.Image | np.ndarray | str | os.PathLike  # a picture in memory, or its file


@dataclass
class Generation:
    """The result of `generate`: one entry per seed."""

    images: list[np.ndarray]  # (H, W, 3) uint8
    latents: Tensor  # (N, C, h, w) final scaled latents
    settings: list[ResolvedSettings]  # per image: its prompt and seed

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




def _check_image_size(image: Image.Image | np.ndarray | Tensor, settings: ResolvedSettings, what: str) -> None:
    height, width = (image.shape[-2:] if isinstance(image, Tensor) else np.asarray(image).shape[:2])
    if (height, width) != (settings.height, settings.width):
        raise InputImageError(
            f"{what} is {width}x{height} but the output is {settings.width}x{settings.height}; "
            f"resize it or pass --size {width}x{height}")


def _input_pictures(resolved: ResolvedSettings, init_image: Picture | None,
                    mask: Picture | Tensor | None) -> tuple[Picture | None, Picture | Tensor | None]:
    """The input picture and mask as pictures: files are read and resized to the output size (the mask drawn on
    the file's own picture, resized with it by nearest neighbour); pictures in memory must have that size."""
    if not isinstance(init_image, str | os.PathLike):
        if isinstance(mask, str | os.PathLike):
            raise InvalidArgumentError("the mask is a file but the image is not; give both as files or as pictures")
        return init_image, mask
    if mask is not None and not isinstance(mask, str | os.PathLike):
        raise InvalidArgumentError("the image is a file but the mask is not; give both as files or as pictures")
    return load_init_image(init_image, (resolved.width, resolved.height), mask)


def _check_inputs(settings: GenerationSettings | ResolvedSettings, resolved: ResolvedSettings,
                  init_image: object, mask: object) -> None:
    """Image-to-image options without a picture, pictures of the wrong size, and a strength that runs no step."""
    noised = isinstance(settings, GenerationSettings) and (settings.strength, settings.timestep) != (None, None)
    if init_image is None and noised:
        raise InvalidArgumentError("--t and --strength (timestep, strength) apply to an input picture; "
                                   "pass --image too")
    if init_image is None:
        return
    _check_image_size(init_image, resolved, "the input image")
    if mask is not None:
        _check_image_size(mask, resolved, "the mask")
    if img2img_start(resolved.steps, resolved.strength) == resolved.steps:
        raise InvalidArgumentError(
            f"strength {resolved.strength:g} runs none of the {resolved.steps} steps, so nothing would change; "
            f"pick a strength above {1 / resolved.steps:g} (or a larger --t)")


@torch.no_grad()
def generate(model: StableDiffusion, settings: GenerationSettings | ResolvedSettings, *,
             prompts: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
             init_image: Picture | None = None, mask: Picture | Tensor | None = None,
             observe: Observe | None = None, progress: StepCallback | None = None, batch: int = 1) -> Generation:
    """Generate one image per (prompt, seed): `prompts` (default: `settings.prompt`) and `seeds` (default:
    `settings.seed`); a single prompt or seed is used for every image, else both lists pair up.

    - text → image: only `settings`;
    - image → image (SDEdit, Meng et al. 2022): `init_image` (H, W, 3), or a picture file resized to the output
      size, and `settings.strength` or `.timestep`;
    - inpainting: `init_image` and `mask` (H, W), 1 = repaint; grey levels are thresholded at 0.5
      (>= 0.5 repaints). A 9-channel inpainting U-Net is conditioned on the mask and the masked image;
      any other SD1.x model blends the known region back in after every step (latent blending).
      Strength 1 starts from pure noise, as diffusers' inpainting pipeline.
    `observe(run)` is called before each image and returns the `Observer` that listens to it (the tracer
    in `diffx.trace` is one). `progress` is called after each model evaluation. `batch`: text → image with a
    deterministic sampler and no observer runs this many images at once (the same pictures, faster); anything
    else runs one image at a time.
    """
    resolved = resolve_settings(model, settings)
    if init_image is None and mask is not None:
        raise InvalidArgumentError("a mask needs an image to inpaint; pass --image too")
    init_image, mask = _input_pictures(resolved, init_image, mask)
    _check_inputs(settings, resolved, init_image, mask)
    prompt_list = list(prompts) if prompts is not None else [resolved.prompt]
    seed_list = [int(seed) for seed in seeds] if seeds is not None else [resolved.seed]
    if len(prompt_list) != len(seed_list) and 1 not in (len(prompt_list), len(seed_list)):
        raise InvalidArgumentError(f"got {len(prompt_list)} prompts and {len(seed_list)} seeds; "
                                   "pass one seed per prompt, or one of either")
    if batch < 1:
        raise InvalidArgumentError(f"batch must be at least 1, got {batch}")
    count = max(len(prompt_list), len(seed_list))
    runs = [replace(resolved, prompt=prompt_list[i % len(prompt_list)], seed=seed_list[i % len(seed_list)])
            for i in range(count)]
    for run in runs:
        resolve_settings(model, run)  # each seed checked before any work
    batched = (init_image is None and observe is None and resolved.sampler in DETERMINISTIC_SAMPLERS
               and resolved.eta == 0)
    size = batch if batched else 1
    images, latents = [], []
    for start in range(0, count, size):
        chunk = runs[start:start + size]
        if len(chunk) == 1:
            final = _generate_one(model, chunk[0], start, init_image, mask, observe, progress)
        else:
            final = _generate_batch(model, chunk, progress)
        images += decode_latents(model, final)
        latents += [latent.float().cpu() for latent in final]
    return Generation(images=images, latents=torch.stack(latents), settings=runs)


def _latent_shape(model: StableDiffusion, settings: ResolvedSettings, batch: int = 1) -> tuple[int, int, int, int]:
    vae = model.config.vae
    return (batch, vae.embed_dim, settings.height // vae.downsample_factor, settings.width // vae.downsample_factor)


def _sample(model: StableDiffusion, settings: ResolvedSettings, denoiser: EpsModel, noise: Tensor, *,
            init_latent: Tensor | None = None, generator: torch.Generator | None = None,
            callback: StepCallback | None = None, post_step: StepCallback | None = None) -> Tensor:
    """The settings' sampler over their grid (started part-way for image-to-image)."""
    grid = grid_for(model, settings, settings.strength if init_latent is not None else None)
    return sample(denoiser, noise, grid, eta=settings.eta, init_latent=init_latent, generator=generator,
                  callback=callback, post_step=post_step)


def _generate_batch(model: StableDiffusion, runs: list[ResolvedSettings], progress: StepCallback | None) -> Tensor:
    """Text → image for several prompts and seeds in one sampler run (a deterministic sampler: no draws after
    the initial noise, drawn per seed as alone)."""
    settings = runs[0]
    conditioning = family_of(model).conditioning(model, [tokenize(model, run.prompt) for run in runs],
                                       tokenize(model, settings.negative_prompt or "", "negative prompt"),
                                       settings.guided, (settings.height, settings.width),
                                       settings.negative_prompt is None)
    noise = torch.cat([torch.randn(_latent_shape(model, settings), generator=torch.Generator().manual_seed(run.seed))
                       for run in runs]).to(model.device)
    denoiser = settings_denoiser(model, settings, conditioning)
    return _sample(model, settings, denoiser, noise, callback=progress)


def _generate_one(model: StableDiffusion, settings: ResolvedSettings, index: int,
                  init_image: Image.Image | np.ndarray | None, mask: Image.Image | np.ndarray | Tensor | None,
                  observe: Observe | None, progress: StepCallback | None) -> Tensor:
    """One image: its conditioning, its random draws in diffusers' order, its observer, the sampler."""
    family = family_of(model)
    tokens = tokenize(model, settings.prompt)
    negative_tokens = tokenize(model, settings.negative_prompt or "", "negative prompt")
    # Guidance 1 is ε_c alone: the unconditional branch is skipped, observed or not (observing never changes numbers).
    conditioning = family.conditioning(model, [tokens], negative_tokens, settings.guided,
                                       (settings.height, settings.width), settings.negative_prompt is None)
    latent_shape = _latent_shape(model, settings)
    mode = "text2img" if init_image is None else ("inpaint" if mask is not None else "img2img")
    token_grid = family.token_grid(model, latent_shape[-2:])
    observer = observe(ImageRun(index, settings, mode, tokens, negative_tokens, latent_shape, token_grid)) \
        if observe is not None else Observer()

    inpainting_unet = mask is not None and family.mask_conditioned(model)
    # diffusers' inpainting starts from pure noise at strength 1, and its 9-channel U-Net then needs no latent
    # of the unmasked image (only of the masked one).
    from_noise = mask is not None and settings.strength == 1.0
    repaint = repaint_mask(mask) if mask is not None else None
    # Random draws in diffusers' order: the image's VAE posterior sample, the initial noise, then
    # (inpainting) the masked image's posterior sample.
    generator = torch.Generator().manual_seed(settings.seed)
    needs_init_latent = init_image is not None and not (inpainting_unet and from_noise)
    init_latent = encode_image(model, init_image, generator) if needs_init_latent else None
    noise = torch.randn(latent_shape, generator=generator).to(model.device)
    denoiser = settings_denoiser(model, settings, conditioning, observer)
    blend = None
    if inpainting_unet:
        masked_image = image_to_tensor(init_image) * (1 - repaint)  # the hole blanked to grey (0)
        denoiser = mask_conditioned(denoiser, repaint, encode_image(model, masked_image, generator))
    elif mask is not None:
        # diffusers encodes the masked image here even for a 4-channel U-Net: draw the same amount
        # of noise so that ancestral samplers stay in step with it.
        torch.randn(latent_shape, generator=generator)
        blend = latent_blending(repaint, init_latent, noise)
    start_latent = None if from_noise else init_latent
    return _sample(model, settings, denoiser, noise, init_latent=start_latent, generator=generator,
                   callback=chain_callbacks(observer.on_step, progress), post_step=blend)
