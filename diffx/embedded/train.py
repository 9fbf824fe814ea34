"""Training the embedded shapes-world model with diffx's own modules (DDPM Algorithm 1, made visible).

Two stages, as Stable Diffusion was built (Rombach et al. 2022, section 3):
1. the VAE learns to compress 64x64 pictures into 16x16x4 latents (reconstruction + a small KL term);
2. with the VAE frozen, the text encoder and the U-Net learn to predict the noise added to those latents
   (L_simple, DDPM eq. 14), with the caption dropped 10% of the time so that one network learns both
   ε(x_t, c) and ε(x_t, ∅) for classifier-free guidance (Ho & Salimans 2022). An SD3-family model
   (`flow_model.py`) trains an MMDiT instead, on rectified flow's velocity, in the same loop (`objectives.py`).

Both stages checkpoint to `out_dir` and resume from there; every random draw comes from seeded generators
whose state is saved with the weights. Under torchrun, both stages train data-parallel (`distributed.py`).
The settings are `config.TrainConfig`, the training folder's files `checkpoints.py`, the pictures `pool.py`,
the learning-rate and EMA schedules `optim.py`, the pictures drawn at each checkpoint `previews.py`, the
hardware each stage records `hardware.py`; shipping the result is `export.py`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from diffx.devices import resolve_device
from diffx.embedded.checkpoints import (
    LATENTS_FILE,
    UNET_CHECKPOINT,
    VAE_CHECKPOINT,
    load_checkpoint,
    save_checkpoint,
    save_train_config,
)
from diffx.embedded.config import TrainConfig, TrainState
from diffx.embedded.distributed import (
    Ranks,
    barrier,
    data_parallel,
    from_environment,
    restore_stream,
    start,
    stop,
)
from diffx.embedded.flow_model import initialise_flow_model
from diffx.embedded.grounding import CrossAttentionCollector, grounding_loss, token_targets
from diffx.embedded.hardware import describe_hardware, joined_hardware
from diffx.embedded.history import copy_history, run_record
from diffx.embedded.objectives import DenoisingObjective
from diffx.embedded.optim import ema_decay, learning_rate, swapped_in
from diffx.embedded.pool import pool_latents, scene_pool, scene_weights, to_unit
from diffx.embedded.preflight import check_train_inputs
from diffx.embedded.previews import vae_preview
from diffx.embedded.shapes import TRAIN_STREAM
from diffx.embedded.worlds import get_world
from diffx.models.any_model import AnyModel, build_model, config_from_dict, config_to_dict, denoiser_of
from diffx.models.attention import observe_attention
from diffx.models.sd3 import StableDiffusion3
from diffx.models.vae import DiagonalGaussian
from diffx.render import plot_loss_curve, save_png
from diffx.weights.config_schema import read_any_model_config
from diffx.weights.load import load_model


def _object_weight(images: torch.Tensor, weight: float) -> torch.Tensor:
    """(B, 1, H, W): `weight` where a pixel differs from the background (read at the corner), else 1."""
    corner = images[:, :, :1, :1]
    differs = (images - corner).abs().amax(dim=1, keepdim=True) > 0.1
    return 1.0 + (weight - 1.0) * differs.float()


def _progress(disable: bool = False) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[loss]} {task.fields[rate]}"), TimeRemainingColumn(), disable=disable)


class _RoundTrip(nn.Module):
    """x -> (q(z|x), decode(z ~ q(z|x))): the VAE stage's forward as one module call, for DDP's hooks."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> tuple[DiagonalGaussian, torch.Tensor]:
        posterior = self.vae.encode(x)
        return posterior, self.vae.decode(posterior.sample(generator))


def recent_loss(losses: list[float], label: str = "loss", window: int = 50) -> str:
    """The mean of the last `window` losses as shown ("" before any: a resumed stage shows its last, not NaN)."""
    return f"{label} {np.mean(losses[-window:]):.4f}" if losses else ""


def _loop(name: str, total: int, state: TrainState, step_fn: Callable[[int], float],
          checkpoint_fn: Callable[[Callable[[], None]], None], every: int, device: torch.device, ranks: Ranks,
          started: float) -> None:
    """Run `step_fn(step)` from `state.step` to `total`, with progress and periodic checkpoints (both on rank 0
    alone in a data-parallel run). Two clocks: `state.seconds` counts the steps alone (the s/step shown),
    `state.wall_seconds` everything since `started` (this sitting's start of the stage) — `checkpoint_fn` is
    given the function that sets it and calls it after drawing its pictures, before it saves."""
    main = ranks.main
    wall_before = state.wall_seconds  # the sittings before this one

    def stamp_wall_clock() -> None:
        state.wall_seconds = wall_before + time.perf_counter() - started

    if state.step < total:
        state.hardware = joined_hardware(state.hardware, describe_hardware(device, ranks))
    with _progress(disable=not main) as progress:
        task = progress.add_task(name, total=total, completed=state.step, loss=recent_loss(state.losses), rate="")
        while state.step < total:
            start = time.perf_counter()
            loss = step_fn(state.step)
            state.seconds += time.perf_counter() - start
            state.losses.append(loss)
            state.step += 1
            progress.update(task, completed=state.step, loss=recent_loss(state.losses),
                            rate=f"{state.step / max(state.seconds, 1e-9):.2f} it/s")
            if main and (state.step % every == 0 or state.step == total):
                checkpoint_fn(stamp_wall_clock)
                shown = filter(None, (recent_loss(state.losses), recent_loss(state.grounding_losses, "grounding")))
                progress.console.log(f"{name} step {state.step}/{total} {' '.join(shown)} "
                                     f"({state.seconds / state.step:.2f} s/step in steps, "
                                     f"{state.wall_seconds / 60:.1f} min in all)")


def train_vae(model: AnyModel, config: TrainConfig, images: torch.Tensor, ranks: Ranks = Ranks(),
              started: float | None = None) -> TrainState:
    """Stage 1: reconstruction (L1, object pixels weighted) + KL(q(z|x) || N(0, I)) (Kingma & Welling).
    `started`: when the stage's work began (`time.perf_counter()`, default now), for its wall clock."""
    out = Path(config.out_dir)
    vae = model.vae.train()
    device = model.device
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(ranks.seed(config.seed))
    batch = ranks.share(config.vae_batch, "--vae-batch")
    state = TrainState()
    ckpt = out / VAE_CHECKPOINT
    if ckpt.exists():
        saved = load_checkpoint(ckpt)
        vae.load_state_dict(saved["vae"])
        optimizer.load_state_dict(saved["optimizer"])
        state = TrainState(**saved["state"])
        restore_stream(generator, saved, ranks, config.seed, state.step)
    roundtrip = data_parallel(_RoundTrip(vae), ranks, device)

    def step(index: int) -> float:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(index, config.vae_lr, config.warmup_steps, config.vae_steps)
        picks = torch.randint(0, len(images), (batch,), generator=generator)
        top, left = torch.randint(0, images.shape[-1] - config.vae_crop + 1, (2,), generator=generator).tolist()
        crops = images[picks, :, top:top + config.vae_crop, left:left + config.vae_crop]
        x = to_unit(crops.to(device))  # (B, 3, crop, crop)
        # bf16 autocast halves the VAE's step time on CPU (its convolutions dominate); the loss stays fp32.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type in ("cpu", "cuda")):
            posterior, reconstruction = roundtrip(x, generator)
            reconstruction = reconstruction.float()
        posterior = DiagonalGaussian(posterior.mean.float(), posterior.logvar.float())
        weight = _object_weight(x, config.shape_pixel_weight)
        rec_loss = (weight * (reconstruction - x).abs()).mean() / weight.mean()
        kl_loss = posterior.kl().mean() / x[0].numel()
        loss = rec_loss + config.vae_kl_weight * kl_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(rec_loss.detach())

    def checkpoint(stamp_wall_clock: Callable[[], None]) -> None:
        save_png(plot_loss_curve(list(range(1, len(state.losses) + 1)), state.losses,
                                 title="VAE reconstruction loss"), out / "vae_loss.png", force=True)
        vae_preview(model, images[:8], out / "vae_samples.png")
        stamp_wall_clock()
        save_checkpoint(ckpt, {"vae": vae.state_dict(), "optimizer": optimizer.state_dict(),
                     "generator": generator.get_state(), "state": asdict(state)})

    _loop("VAE", config.vae_steps, state, step, checkpoint, config.checkpoint_every, device, ranks,
          time.perf_counter() if started is None else started)
    vae.eval()
    return state


def latent_scaling_factor(latent_mean: torch.Tensor, latent_std: torch.Tensor, count: int = 2048) -> float:
    """1 / std of posterior samples z = mean + std · ε of the first `count` pool pictures (from their latents,
    `pool.pool_latents`: the encoder runs once per picture), so scaled latents have unit variance (as SD's
    0.18215 was chosen)."""
    mean, std = latent_mean[:count], latent_std[:count]  # (n, 4, h, w)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(0), dtype=mean.dtype)
    return float(1.0 / (mean + std * noise).std())


def train_unet(model: AnyModel, config: TrainConfig, scenes: list,
               latent_mean: torch.Tensor, latent_std: torch.Tensor,
               preview: Callable[[AnyModel, Path], None] | None = None,
               masks: list[np.ndarray] | None = None, ranks: Ranks = Ranks(), started: float | None = None
               ) -> TrainState:
    """Stage 2: text encoder + U-Net on L_simple (DDPM Algorithm 1), VAE frozen, EMA of the weights kept; for an
    SD3-family model text encoder + MMDiT on the rectified-flow loss (`objectives.DenoisingObjective`).

    Captions are drawn afresh every time a scene is used (`World.caption`, with `config.captions()`).
    With `masks` (each scene's object masks at the latent size) and `config.attention_loss` > 0,
    the attention-grounding loss (diffx.embedded.grounding) is added with that weight. `started`: when the
    stage's work began (`time.perf_counter()`, default now: the pool's latents are made before), for its
    wall clock."""
    out = Path(config.out_dir)
    model_config = config_from_dict(config.model)
    objective = DenoisingObjective(model_config)  # the loss's target: ε, v or the flow's velocity
    scale = model_config.vae.scaling_factor
    device = model.device
    latent_mean, latent_std = latent_mean.to(device), latent_std.to(device)
    denoiser = denoiser_of(model)  # the U-Net or the MMDiT; its checkpoint key stays "unet"
    params = [*model.text_encoder.parameters(), *denoiser.parameters()]
    # fused AdamW: one kernel for all parameters instead of several per tensor (the model is launch-bound on GPUs)
    optimizer = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=0.01, fused=device.type == "cuda")
    ema = [p.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(ranks.seed(config.seed + 1))
    rng = np.random.default_rng([TRAIN_STREAM, config.seed, 2, *([ranks.rank] if ranks.rank else [])])
    batch = ranks.share(config.unet_batch, "--batch")
    state = TrainState()
    world, caption_noise = get_world(config.world), config.captions()
    ckpt = out / UNET_CHECKPOINT
    if ckpt.exists():
        saved = load_checkpoint(ckpt)
        model.text_encoder.load_state_dict(saved["text_encoder"])
        denoiser.load_state_dict(saved["unet"])
        optimizer.load_state_dict(saved["optimizer"])
        ema = [shadow.to(device) for shadow in saved["ema"]]
        state = TrainState(**saved["state"])
        restore_stream(generator, saved, ranks, config.seed + 1, state.step)
        if ranks.main:
            rng.bit_generator.state = json.loads(saved["rng"])
        else:
            rng = np.random.default_rng([TRAIN_STREAM, config.seed, 2, ranks.rank, state.step])
    model.text_encoder.train()
    denoiser.train()
    text_encoder = data_parallel(model.text_encoder, ranks, device)
    network = data_parallel(denoiser, ranks, device)

    weights = scene_weights(scenes, config.object_counts)

    def step(index: int) -> float:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(index, config.unet_lr, config.warmup_steps, config.unet_steps)
        picks = torch.randint(0, len(scenes), (batch,), generator=generator) if weights is None else \
            torch.multinomial(weights, batch, replacement=True, generator=generator)
        chosen = picks.tolist()
        captions = [world.caption(scenes[i], rng, caption_noise) if rng.random() >= config.caption_dropout else ""
                    for i in chosen]
        noise = torch.randn((batch, *latent_mean.shape[1:]), generator=generator).to(device)
        picks = picks.to(device)
        x0 = (latent_mean[picks] + latent_std[picks] * noise) * scale  # (B, 4, 16, 16) scaled latents
        encodings = [model.tokenizer.encode(text) for text in captions]
        # (context (B, 77, width),) for a U-Net; (context (B, L, width), pooled (B, width)) for an MMDiT
        conditioning = objective.condition(text_encoder, torch.tensor([e.ids for e in encodings], device=device))
        if masks is None or config.attention_loss <= 0:
            loss = total = objective.loss(network, conditioning, x0, generator)
        else:
            # the context's tokens (B, L, width): an MMDiT's joint attention holds them after its image tokens
            collector = CrossAttentionCollector(text_tokens=conditioning[0].shape[1])
            with observe_attention(collector):
                loss = objective.loss(network, conditioning, x0, generator)
            token_masks, supervised = token_targets(world, [scenes[i] for i in chosen], [masks[i] for i in chosen],
                                                    encodings, x0.shape[-1])
            grounding = grounding_loss(collector.probs, token_masks.to(device), supervised.to(device))
            state.grounding_losses.append(float(grounding.detach()))
            total = loss + config.attention_loss * grounding
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = ema_decay(index, config.ema_decay)
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        return float(loss.detach())

    def checkpoint(stamp_wall_clock: Callable[[], None]) -> None:
        curve = plot_loss_curve(list(range(1, len(state.losses) + 1)), state.losses, title=objective.title)
        save_png(curve, out / "unet_loss.png", force=True)
        if preview is not None:
            with swapped_in(params, ema):
                preview(model, out / f"samples_{state.step:06d}.png")
        stamp_wall_clock()
        save_checkpoint(ckpt, {"text_encoder": model.text_encoder.state_dict(), "unet": denoiser.state_dict(),
                     "optimizer": optimizer.state_dict(), "ema": ema, "generator": generator.get_state(),
                     "model_config": json.dumps(config_to_dict(model.config)),
                     "rng": json.dumps(rng.bit_generator.state), "state": asdict(state)})

    _loop(objective.network_name, config.unet_steps, state, step, checkpoint, config.checkpoint_every, device, ranks,
          time.perf_counter() if started is None else started)
    with torch.no_grad():
        for shadow, p in zip(ema, params, strict=True):
            p.copy_(shadow)
    model.text_encoder.eval()
    denoiser.eval()
    return state


def train(config: TrainConfig, preview: Callable[[AnyModel, Path], None] | None = None
          ) -> tuple[AnyModel, dict]:
    """Both stages end to end (resuming whatever `config.out_dir` already holds). Returns the model and a
    summary (steps, losses, wall time, hardware) for the model card. Under torchrun every rank calls this and
    gets its (identical) model; rank 0 alone writes."""
    check_train_inputs(config)  # every argument and output path, before the pool is rendered
    started = time.perf_counter()  # the VAE stage's clock: the pool it renders first is part of it
    ranks = from_environment()
    for option, batch in (("--vae-batch", config.vae_batch), ("--batch", config.unet_batch)):
        ranks.share(batch, option)  # raises now, before any work, unless the batch splits evenly
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = start(ranks, resolve_device(config.device))
    torch.manual_seed(config.seed)
    model_config = config_from_dict(config.model)
    model = build_model(model_config, source=f"trained by diffx train ({config.out_dir})")
    if ranks.main:  # rank 0 renders the pool and writes the folder's first files; the others then read them
        save_train_config(config)
        scenes, images = scene_pool(config)
        if config.init_from and not (out / UNET_CHECKPOINT).exists():
            # also when resumed before the U-Net stage's first checkpoint (stopped during the pool's latent
            # encode, say): its weights then come from init_from still, not from a fresh initialisation
            _initialise_from(model, config, first=not (out / VAE_CHECKPOINT).exists())
    barrier(ranks)
    if not ranks.main:
        scenes, images = scene_pool(config)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 weights, TF32 tensor-core matmuls
        torch.backends.cudnn.allow_tf32 = True
    model.to(device)

    vae_state = train_vae(model, config, images, ranks, started)
    unet_started = time.perf_counter()  # the U-Net stage's clock: its pool latents are part of it
    for p in model.vae.parameters():
        p.requires_grad_(False)
    latent_mean, latent_std = pool_latents(model, images, out / LATENTS_FILE, write=ranks.main)
    # A VAE taken over from --init-from (counted as trained) keeps that model's latent scale, which its denoiser
    # and previews were fitted to; re-estimated on this run's pool it would drift with the pool's size
    model.config.vae.scaling_factor = (
        read_any_model_config(Path(config.init_from).expanduser() / "config.json").vae.scaling_factor
        if config.init_from else latent_scaling_factor(latent_mean, latent_std))
    config.model = config_to_dict(model.config)
    masks = None
    if config.attention_loss > 0:
        side = model_config.image_size // model_config.vae.downsample_factor
        masks = [get_world(config.world).object_masks(scene, side) for scene in scenes]
    unet_state = train_unet(model, config, scenes, latent_mean, latent_std, preview, masks, ranks, unet_started)
    stop(ranks)
    summary = {name: record for name, record in run_record(asdict(config), {
        "vae": asdict(vae_state), "unet": asdict(unet_state)}, config.pool_scenes).items() if name != "settings"}
    summary["latent_scaling_factor"] = model.config.vae.scaling_factor
    return model, summary


def _initialise_from(model: AnyModel, config: TrainConfig, first: bool = True) -> None:
    """Start from a shipped model instead of random weights, with its VAE counted as fully trained.

    The optimiser state is not shipped, so a continued run starts a fresh AdamW (and warm-up); this is
    how training goes on across sittings from the weights in data/. A flow model starts from a U-Net model's VAE
    and text encoder (`flow_model.initialise_flow_model`). `first`: the run's first start, which also copies the
    history and writes the VAE's checkpoint (a resumed run has both, and loads the weights again).
    """
    source = load_model(config.init_from)
    if isinstance(model, StableDiffusion3):
        initialise_flow_model(model, source)
    else:
        for name, module in model.modules().items():
            module.load_state_dict(getattr(source, name).state_dict())  # fp16 -> fp32 by the copy
    if not first:
        return
    # The history goes into the training folder, so re-exporting over init_from cannot lose it.
    copy_history(config.init_from, config.out_dir)
    vae_optimizer = torch.optim.AdamW(model.vae.parameters(), lr=config.vae_lr)
    save_checkpoint(Path(config.out_dir) / VAE_CHECKPOINT, {
        "vae": model.vae.state_dict(), "optimizer": vae_optimizer.state_dict(),
        "generator": torch.Generator().manual_seed(config.seed).get_state(),
        "state": asdict(TrainState(step=config.vae_steps))})

