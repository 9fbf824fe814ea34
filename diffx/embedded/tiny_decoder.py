"""Distilling a model's VAE decoder into a `TinyDecoder` for live previews (`diffx train-preview`, `train_preview`).

What the tiny decoder will be shown is what a sampler produces step by step: x̂0 at every step, from the blurry
average of the first steps to the final latent. So that is what it learns from: `runs` generations of the
model (world prompts, seeds and guidance weights drawn at random; DDIM, 25 steps), every step's recorded x̂0
(fp16, as the tracer keeps it), each paired with the model's own VAE decode of it — the picture the tiny decoder
should imitate. Training minimises the mean absolute pixel error on random crops (the decoder is convolutional:
a crop of the latent decodes to the same crop of the picture, up to its borders), Adam with a cosine decay.
Held out: the runs of other seeds, on which `fidelity` measures the PSNR against the VAE.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffx.embedded.worlds import World
from diffx.errors import InvalidArgumentError, elide
from diffx.models.stable_diffusion import StableDiffusion
from diffx.models.tiny_decoder import TinyDecoder, TinyDecoderConfig
from diffx.pipeline.codec import decode_latents
from diffx.pipeline.settings import GenerationSettings, check_seed
from diffx.trace.tracer import TraceOptions, generate_traced
from diffx.weights.tiny_decoder import TINY_DECODER_FILE, write_tiny_decoder

Progress = Callable[[str, int, int], None]  # (stage, done, total)
# The decoder's widths from the latent's resolution up: on the embedded model (f8, 16x16 latents) these give
# 9.5 ms a decode on one core against the VAE's 97 ms, at 22.1 dB PSNR to it on held-out runs (`fidelity`):
# shapes and colours right, fine fills (dots, stripes) and flat backgrounds approximate.
WIDTHS = (64, 48, 32, 24, 16, 16)


@dataclass(frozen=True)
class PreviewTraining:
    """How to distil: `runs` generations to learn from, `steps` Adam steps of `batch` crops of `crop`² latent
    pixels, learning rate `lr` decaying to 5 %."""

    runs: int = 96
    steps: int = 3000
    batch: int = 16
    crop: int = 8
    lr: float = 2e-3
    seed: int = 0
    channels: tuple[int, ...] | None = None  # None: WIDTHS, as many as the VAE's ×2 steps (3 for f8)

    def __post_init__(self) -> None:
        for name in ("runs", "steps", "batch", "crop"):
            if not 1 <= getattr(self, name) <= 100_000:
                raise InvalidArgumentError(f"preview training {name} must be 1 to 100000, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= 1):
            raise InvalidArgumentError(f"preview training learning rate must be in (0, 1], got {self.lr}")
        if self.channels is not None and not (self.channels and all(1 <= w <= 1024 for w in self.channels)):
            raise InvalidArgumentError(f"tiny decoder widths must be 1 to 1024 each, got {self.channels}")
        check_seed(self.seed)  # torch's generator takes it (-1 or 2**64 failed after all the sampling)


def sampler_latents(model: StableDiffusion, world: World, runs: int, seed: int,
                    progress: Callable[[int, int], None] | None = None) -> tuple[Tensor, Tensor]:
    """Every step's x̂0 of `runs` generations (N, C, h, w) and the VAE's decodes of them (N, 3, H, W) uint8."""
    rng = np.random.default_rng(seed)
    latents, pictures = [], []
    for run in range(runs):
        prompt = world.exact_caption(world.make_scene(rng), rng)
        settings = GenerationSettings(prompt=prompt, seed=int(rng.integers(2**31)),
                                      guidance=float(rng.uniform(1.0, 9.0)), steps=25)
        trace = generate_traced(model, settings, options=TraceOptions(record=("x0",))).traces[0]
        x0 = trace.tensors["x0"].float()  # (steps, C, h, w): what a live view decodes
        latents.append(x0)
        pictures.append(torch.from_numpy(np.stack(decode_latents(model, x0))).permute(0, 3, 1, 2))
        if progress is not None:
            progress(run + 1, runs)
    return torch.cat(latents), torch.cat(pictures)


def _to_unit(pictures: Tensor) -> Tensor:
    """uint8 (…, 3, H, W) → float in [-1, 1], as the VAE's output."""
    return pictures.float() / 127.5 - 1


def train_tiny_decoder(latents: Tensor, pictures: Tensor, config: PreviewTraining,
                       progress: Callable[[int, int, float], None] | None = None) -> TinyDecoder:
    """Fit a `TinyDecoder` to map `latents` (N, C, h, w) to `pictures` (N, 3, H, W) uint8 (L1 on random crops)."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    factor = pictures.shape[-1] // latents.shape[-1]
    channels = config.channels or WIDTHS[:factor.bit_length() - 1]  # log2(f) widths
    decoder = TinyDecoder(TinyDecoderConfig(latents.shape[1], channels))
    optimizer = torch.optim.Adam(decoder.parameters(), lr=config.lr)
    decay = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / config.steps)))
    crop, side = min(config.crop, latents.shape[-1]), latents.shape[-1]
    running = None
    for step in range(config.steps):
        index = torch.randint(len(latents), (config.batch,), generator=generator)
        top, left = (int(v) for v in torch.randint(side - crop + 1, (2,), generator=generator))
        z = latents[index, :, top:top + crop, left:left + crop]  # (batch, C, crop, crop)
        target = _to_unit(pictures[index, :, top * factor:(top + crop) * factor,
                                   left * factor:(left + crop) * factor])  # (batch, 3, f·crop, f·crop)
        loss = F.l1_loss(decoder(z), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        decay.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if progress is not None:
            progress(step + 1, config.steps, running)
    return decoder.eval()


@torch.no_grad()
def fidelity(decoder: TinyDecoder, latents: Tensor, pictures: Tensor) -> float:
    """PSNR in dB of the tiny decoder's pictures (clamped, rounded to uint8 as drawn) against the VAE's."""
    drawn = ((decoder(latents).clamp(-1, 1) + 1) * 127.5).round()
    mse = (drawn - pictures.float()).pow(2).mean().item()
    return 10 * math.log10(255**2 / max(mse, 1e-12))


def distil_preview_decoder(model: StableDiffusion, world: World, config: PreviewTraining = PreviewTraining(),
                           progress: Progress | None = None) -> tuple[TinyDecoder, dict[str, str]]:
    """Collect the runs, train, and measure on held-out runs (an eighth as many, other seeds): the decoder and
    the notes its file keeps (`fidelity_psnr_db`, the training settings)."""
    def stage(name: str) -> Callable[..., None] | None:
        return None if progress is None else (lambda done, total, *_: progress(name, done, total))

    model.unet.eval()
    model.text_encoder.eval()
    latents, pictures = sampler_latents(model, world, config.runs, config.seed, stage("sampling x̂0 to learn from"))
    held = sampler_latents(model, world, max(2, config.runs // 8), config.seed + 1, stage("sampling held-out x̂0"))
    decoder = train_tiny_decoder(latents, pictures, config, stage("training the tiny decoder"))
    notes = {"fidelity_psnr_db": f"{fidelity(decoder, *held):.2f}", "world": world.name,
             "trained_on": f"{config.runs} runs x 25 steps of x̂0, {config.steps} steps of {config.batch} crops"}
    return decoder, notes


def train_preview(folder: Path, world: str = "shapes2", config: PreviewTraining = PreviewTraining(),
                  force: bool = False, progress: Progress | None = None) -> tuple[Path, dict[str, str]]:
    """What `diffx train-preview` runs: distil the VAE decoder of the diffx model folder `folder` (trained on
    `world`) into `folder/tiny_decoder.safetensors`, which `load_model` then attaches as `model.tiny_decoder`.
    Everything is checked before any work; returns the file written and its notes (the held-out PSNR)."""
    from diffx.embedded.worlds import get_world
    from diffx.files import check_outputs
    from diffx.weights.discovery import resolve_model_source
    from diffx.weights.load import load_model, read_config

    chosen = get_world(world)
    source = resolve_model_source(folder)
    if source.format != "diffx":
        raise InvalidArgumentError(f"{elide(str(folder), 80)} is a {source.format} model; train-preview writes into "
                                   "a diffx model folder (such as data/shapes-world-2)")
    path = source.path / TINY_DECODER_FILE
    levels = len(read_config(source).vae.ch_mult) - 1  # the VAE's ×2 steps: one width each
    if config.channels is not None and len(config.channels) != levels:
        raise InvalidArgumentError(f"give {levels} width{'s' * (levels != 1)} for this model's ×{2**levels} VAE "
                                   f"(one per ×2), not {len(config.channels)}, e.g. --widths "
                                   f"{','.join(map(str, WIDTHS[:levels]))}")
    check_outputs([path], force)
    model = load_model(source)
    decoder, notes = distil_preview_decoder(model, chosen, config, progress)
    return write_tiny_decoder(decoder, path, notes, force=force), notes
