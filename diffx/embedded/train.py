"""Training the embedded shapes-world model with diffx's own modules (DDPM Algorithm 1, made visible).

Two stages, as Stable Diffusion was built (Rombach et al. 2022, section 3):
1. the VAE learns to compress 64x64 pictures into 16x16x4 latents (reconstruction + a small KL term);
2. with the VAE frozen, the text encoder and the U-Net learn to predict the noise added to those latents
   (L_simple, DDPM eq. 14), with the caption dropped 10% of the time so that one network learns both
   ε(x_t, c) and ε(x_t, ∅) for classifier-free guidance (Ho & Salimans 2022).

Both stages checkpoint to `out_dir` and resume from there; every random draw comes from seeded generators
whose state is saved with the weights.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from diffx.embedded.grounding import CrossAttentionCollector, grounding_loss, token_targets
from diffx.embedded.shapes import TRAIN_STREAM, Scene, caption, make_scene, object_masks, render
from diffx.models.attention import observe_attention
from diffx.models.configs import ModelConfig, shapes_world
from diffx.models.stable_diffusion import StableDiffusion, build
from diffx.models.vae import DiagonalGaussian
from diffx.render import atomic_output, make_grid, plot_loss_curve, save_png, tensor_to_image, to_pil
from diffx.schedules import NoiseSchedule, training_loss
from diffx.weights import resolve_device


@dataclass
class TrainConfig:
    """Settings of one training run; saved next to the checkpoints and in the model card."""

    out_dir: str = "runs/shapes-world"
    seed: int = 0
    pool_size: int = 30000  # scenes rendered once; captions are re-drawn every time a scene is used
    vae_steps: int = 3000
    vae_batch: int = 32
    vae_crop: int = 32  # the VAE is convolutional: training on crops is 4x cheaper and sees the same edges
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-3
    shape_pixel_weight: float = 10.0  # object pixels count this much more than background in the VAE loss
    unet_steps: int = 5000
    unet_batch: int = 64
    unet_lr: float = 5e-4
    warmup_steps: int = 200
    caption_dropout: float = 0.1
    attention_loss: float = 0.0  # weight of the attention-grounding loss (diffx.embedded.grounding); 0 = plain SD
    ema_decay: float = 0.999
    checkpoint_every: int = 100
    threads: int = 0  # 0: leave torch's default
    device: str = "auto"  # "auto": CUDA (or MPS) when present, else CPU
    init_from: str | None = None  # a model folder to continue from (e.g. data/shapes-world), VAE kept as is
    model: dict = field(default_factory=lambda: shapes_world().to_dict())


@dataclass
class TrainState:
    """What a stage needs to resume: step, losses, and the generator states."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    hardware: str = ""
    grounding_losses: list[float] = field(default_factory=list)  # U-Net stage with attention_loss > 0


def _pool(config: TrainConfig) -> tuple[list[Scene], torch.Tensor]:
    """The training scenes and their pictures (N, 3, 64, 64) uint8, cached on disk after the first call."""
    path = Path(config.out_dir) / "pool.pt"
    rng = np.random.default_rng([TRAIN_STREAM, config.seed, 1_000_003])
    scenes = [make_scene(rng) for _ in range(config.pool_size)]
    if path.exists():
        return scenes, torch.load(path, weights_only=True)
    size = ModelConfig.from_dict(config.model).image_size
    images = torch.from_numpy(np.stack([render(scene, size) for scene in scenes])).permute(0, 3, 1, 2)
    torch.save(images.contiguous(), path)
    return scenes, images


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def _object_weight(images: torch.Tensor, weight: float) -> torch.Tensor:
    """(B, 1, H, W): `weight` where a pixel differs from the background (read at the corner), else 1."""
    corner = images[:, :, :1, :1]
    differs = (images - corner).abs().amax(dim=1, keepdim=True) > 0.1
    return 1.0 + (weight - 1.0) * differs.float()


def _lr(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10% of `base`."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]}"),
                    TimeRemainingColumn())


def _save(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _loop(name: str, total: int, state: TrainState, step_fn: Callable[[int], float],
          checkpoint_fn: Callable[[], None], every: int, hardware: str) -> None:
    """Run `step_fn(step)` from `state.step` to `total`, with progress and periodic checkpoints."""
    if state.step < total:
        state.hardware = _joined(state.hardware, hardware)
    with _progress() as progress:
        task = progress.add_task(name, total=total, completed=state.step, loss=float("nan"), rate="")
        while state.step < total:
            start = time.perf_counter()
            loss = step_fn(state.step)
            state.seconds += time.perf_counter() - start
            state.losses.append(loss)
            state.step += 1
            recent = state.losses[-50:]
            progress.update(task, completed=state.step, loss=sum(recent) / len(recent),
                            rate=f"{state.step / max(state.seconds, 1e-9):.2f} it/s")
            if state.step % every == 0 or state.step == total:
                checkpoint_fn()
                grounding = (f" grounding {np.mean(state.grounding_losses[-50:]):.4f}"
                             if state.grounding_losses else "")
                progress.console.log(f"{name} step {state.step}/{total} loss {sum(recent) / len(recent):.4f}"
                                     f"{grounding} ({state.seconds / state.step:.2f} s/step)")


def train_vae(model: StableDiffusion, config: TrainConfig, images: torch.Tensor) -> TrainState:
    """Stage 1: reconstruction (L1, object pixels weighted) + KL(q(z|x) || N(0, I)) (Kingma & Welling)."""
    out = Path(config.out_dir)
    vae = model.vae.train()
    device = _model_device(model)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    state = TrainState()
    ckpt = out / "vae_state.pt"
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=True, map_location="cpu")  # generator states must stay on the CPU
        vae.load_state_dict(saved["vae"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        state = TrainState(**saved["state"])

    def step(index: int) -> float:
        for group in optimizer.param_groups:
            group["lr"] = _lr(index, config.vae_lr, config.warmup_steps, config.vae_steps)
        picks = torch.randint(0, len(images), (config.vae_batch,), generator=generator)
        top, left = torch.randint(0, images.shape[-1] - config.vae_crop + 1, (2,), generator=generator).tolist()
        crops = images[picks, :, top:top + config.vae_crop, left:left + config.vae_crop]
        x = _to_unit(crops.to(device))  # (B, 3, crop, crop)
        # bf16 autocast halves the VAE's step time on CPU (its convolutions dominate); the loss stays fp32.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type in ("cpu", "cuda")):
            posterior = vae.encode(x)
            reconstruction = vae.decode(posterior.sample(generator)).float()
        posterior = DiagonalGaussian(posterior.mean.float(), posterior.logvar.float())
        weight = _object_weight(x, config.shape_pixel_weight)
        rec_loss = (weight * (reconstruction - x).abs()).mean() / weight.mean()
        kl_loss = posterior.kl().mean() / x[0].numel()
        loss = rec_loss + config.vae_kl_weight * kl_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(rec_loss.detach())

    def checkpoint() -> None:
        _save(ckpt, {"vae": vae.state_dict(), "optimizer": optimizer.state_dict(),
                     "generator": generator.get_state(), "state": asdict(state)})
        save_png(plot_loss_curve(list(range(1, len(state.losses) + 1)), state.losses,
                                 title="VAE reconstruction loss"), out / "vae_loss.png", force=True)
        _vae_preview(model, images[:8], out / "vae_samples.png")

    _loop("VAE", config.vae_steps, state, step, checkpoint, config.checkpoint_every, describe_hardware(device))
    vae.eval()
    return state


@torch.no_grad()
def _vae_preview(model: StableDiffusion, images: torch.Tensor, path: Path) -> None:
    """Originals (top row) over their reconstructions (bottom row)."""
    x = _to_unit(images.to(_model_device(model)))
    reconstruction = model.vae.decode(model.vae.encode(x).mean)
    cells = [[to_pil(tensor_to_image(im)) for im in x],
             [to_pil(tensor_to_image(im.clamp(-1, 1))) for im in reconstruction]]
    save_png(make_grid(cells, row_labels=["original", "VAE"], col_labels=None, title="VAE reconstructions",
                       cell_size=(96, 96)), path, force=True)


@torch.no_grad()
def latent_scaling_factor(model: StableDiffusion, images: torch.Tensor, count: int = 2048) -> float:
    """1 / std of posterior samples, so scaled latents have unit variance (as SD's 0.18215 was chosen)."""
    generator = torch.Generator().manual_seed(0)
    device = _model_device(model)
    latents = [model.vae.encode(_to_unit(images[i:i + 256].to(device))).sample(generator).cpu()
               for i in range(0, min(count, len(images)), 256)]
    return float(1.0 / torch.cat(latents).std())


@torch.no_grad()
def encode_pool(model: StableDiffusion, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every pool picture, so stage 2 never runs the encoder again."""
    means, stds = [], []
    device = _model_device(model)
    for i in range(0, len(images), 512):
        posterior = model.vae.encode(_to_unit(images[i:i + 512].to(device)))
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
    return torch.cat(means), torch.cat(stds)


def train_unet(model: StableDiffusion, config: TrainConfig, scenes: list[Scene],
               latent_mean: torch.Tensor, latent_std: torch.Tensor,
               preview: Callable[[StableDiffusion, Path], None] | None = None,
               masks: list[np.ndarray] | None = None) -> TrainState:
    """Stage 2: text encoder + U-Net on L_simple (DDPM Algorithm 1), VAE frozen, EMA of the weights kept.

    With `masks` (each scene's `shapes.object_masks` at the latent size) and `config.attention_loss` > 0,
    the attention-grounding loss (diffx.embedded.grounding) is added with that weight."""
    out = Path(config.out_dir)
    model_config = ModelConfig.from_dict(config.model)
    schedule = NoiseSchedule.from_config(model_config.scheduler)
    scale = model_config.vae.scaling_factor
    device = _model_device(model)
    latent_mean, latent_std = latent_mean.to(device), latent_std.to(device)
    params = [*model.text_encoder.parameters(), *model.unet.parameters()]
    # fused AdamW: one kernel for all parameters instead of several per tensor (the model is launch-bound on GPUs)
    optimizer = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=0.01, fused=device.type == "cuda")
    ema = [p.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(config.seed + 1)
    rng = np.random.default_rng([TRAIN_STREAM, config.seed, 2])
    state = TrainState()
    ckpt = out / "unet_state.pt"
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=True, map_location="cpu")  # generator states must stay on the CPU
        model.text_encoder.load_state_dict(saved["text_encoder"])
        model.unet.load_state_dict(saved["unet"])
        optimizer.load_state_dict(saved["optimizer"])
        ema = [shadow.to(device) for shadow in saved["ema"]]
        generator.set_state(saved["generator"])
        rng.bit_generator.state = json.loads(saved["rng"])
        state = TrainState(**saved["state"])
    model.text_encoder.train()
    model.unet.train()

    def eps_model(x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return model.unet(x_t, t, context)

    def step(index: int) -> float:
        for group in optimizer.param_groups:
            group["lr"] = _lr(index, config.unet_lr, config.warmup_steps, config.unet_steps)
        picks = torch.randint(0, len(scenes), (config.unet_batch,), generator=generator)
        chosen = picks.tolist()
        captions = [caption(scenes[i], rng) if rng.random() >= config.caption_dropout else "" for i in chosen]
        noise = torch.randn((config.unet_batch, *latent_mean.shape[1:]), generator=generator).to(device)
        picks = picks.to(device)
        x0 = (latent_mean[picks] + latent_std[picks] * noise) * scale  # (B, 4, 16, 16) scaled latents
        encodings = [model.tokenizer.encode(text) for text in captions]
        context = model.text_encoder(torch.tensor([e.ids for e in encodings], device=device))  # (B, 77, width)
        if masks is None or config.attention_loss <= 0:
            loss = total = training_loss(eps_model, schedule, x0, context, generator=generator)
        else:
            collector = CrossAttentionCollector()
            with observe_attention(collector):
                loss = training_loss(eps_model, schedule, x0, context, generator=generator)
            token_masks, supervised = token_targets([scenes[i] for i in chosen], [masks[i] for i in chosen],
                                                    encodings, x0.shape[-1])
            grounding = grounding_loss(collector.probs, token_masks.to(device), supervised.to(device))
            state.grounding_losses.append(float(grounding.detach()))
            total = loss + config.attention_loss * grounding
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(config.ema_decay, (1 + index) / (10 + index))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        return float(loss.detach())

    def checkpoint() -> None:
        _save(ckpt, {"text_encoder": model.text_encoder.state_dict(), "unet": model.unet.state_dict(),
                     "optimizer": optimizer.state_dict(), "ema": ema, "generator": generator.get_state(),
                     "model_config": json.dumps(model.config.to_dict()),
                     "rng": json.dumps(rng.bit_generator.state), "state": asdict(state)})
        curve = plot_loss_curve(list(range(1, len(state.losses) + 1)), state.losses,
                                title="U-Net noise-prediction loss (L_simple)")
        save_png(curve, out / "unet_loss.png", force=True)
        if preview is not None:
            with swapped_in(params, ema):
                preview(model, out / f"samples_{state.step:06d}.png")

    _loop("U-Net", config.unet_steps, state, step, checkpoint, config.checkpoint_every, describe_hardware(device))
    with torch.no_grad():
        for shadow, p in zip(ema, params, strict=True):
            p.copy_(shadow)
    model.text_encoder.eval()
    model.unet.eval()
    return state


class swapped_in:  # noqa: N801 - used like a function: `with swapped_in(params, ema): ...`
    """Temporarily load the EMA weights into the live parameters (for previews), then restore them."""

    def __init__(self, params: list[torch.nn.Parameter], ema: list[torch.Tensor]):
        self.params, self.ema = params, ema

    def __enter__(self) -> None:
        self.backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, shadow in zip(self.params, self.ema, strict=True):
                p.copy_(shadow)

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for p, saved in zip(self.params, self.backup, strict=True):
                p.copy_(saved)


def train(config: TrainConfig, preview: Callable[[StableDiffusion, Path], None] | None = None
          ) -> tuple[StableDiffusion, dict]:
    """Both stages end to end (resuming whatever `config.out_dir` already holds). Returns the model and a
    summary (steps, losses, wall time, hardware) for the model card."""
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2))
    torch.manual_seed(config.seed)
    model_config = ModelConfig.from_dict(config.model)
    model = build(model_config, source=f"trained by diffx train ({config.out_dir})")
    scenes, images = _pool(config)
    if config.init_from and not (out / "vae_state.pt").exists():
        _initialise_from(model, config)
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 weights, TF32 tensor-core matmuls
        torch.backends.cudnn.allow_tf32 = True
    model.to(device)

    vae_state = train_vae(model, config, images)
    for p in model.vae.parameters():
        p.requires_grad_(False)
    model.config.vae.scaling_factor = latent_scaling_factor(model, images)
    config.model = model.config.to_dict()
    latents_file = out / "pool_latents.pt"
    if latents_file.exists():
        latent_mean, latent_std = torch.load(latents_file, weights_only=True)
    else:
        latent_mean, latent_std = encode_pool(model, images)
        _save(latents_file, (latent_mean, latent_std))
    masks = None
    if config.attention_loss > 0:
        side = model_config.image_size // model_config.vae.downsample_factor
        masks = [object_masks(scene, side) for scene in scenes]
    unet_state = train_unet(model, config, scenes, latent_mean, latent_std, preview, masks)
    summary = {name: record for name, record in run_record(asdict(config), {
        "vae": asdict(vae_state), "unet": asdict(unet_state)}).items() if name != "settings"}
    summary["latent_scaling_factor"] = model.config.vae.scaling_factor
    return model, summary


def _model_device(model: StableDiffusion) -> torch.device:
    return next(model.unet.parameters()).device


def describe_hardware(device: torch.device) -> str:
    """Where a stage ran, for the model card: e.g. "NVIDIA H100 80GB HBM3, torch 2.11.0+cu130"."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{platform.machine()} {device.type.upper()}, {torch.get_num_threads()} threads"
    return f"{where}, torch {torch.__version__}"


def _joined(earlier: str, now: str) -> str:
    """Hardware of a stage that resumed elsewhere: "A; then B" (each machine named once)."""
    parts = [part for part in earlier.split("; then ") if part]
    return "; then ".join(parts if parts and parts[-1] == now else [*parts, now])


def _initialise_from(model: StableDiffusion, config: TrainConfig) -> None:
    """Start from a shipped model instead of random weights, with its VAE counted as fully trained.

    The optimiser state is not shipped, so a continued run starts a fresh AdamW (and warm-up); this is
    how training goes on across sittings from the weights in data/.
    """
    from diffx.weights import load_model

    source = load_model(config.init_from)
    earlier = Path(config.init_from) / HISTORY_FILE
    if earlier.is_file():  # kept in the training folder, so re-exporting over init_from cannot lose it
        (Path(config.out_dir) / HISTORY_FILE).write_text(earlier.read_text(encoding="utf-8"), encoding="utf-8")
    for name, module in model.modules().items():
        module.load_state_dict(getattr(source, name).state_dict())  # fp16 -> fp32 by the copy
    vae_optimizer = torch.optim.AdamW(model.vae.parameters(), lr=config.vae_lr)
    _save(Path(config.out_dir) / "vae_state.pt", {
        "vae": model.vae.state_dict(), "optimizer": vae_optimizer.state_dict(),
        "generator": torch.Generator().manual_seed(config.seed).get_state(),
        "state": asdict(TrainState(step=config.vae_steps))})


PREVIEW_PROMPTS = ("a red circle", "a large blue square in the top left", "a yellow triangle on a black background",
                   "a green circle left of a purple square", "a small white triangle in the bottom right",
                   "an orange square above a blue circle")


@torch.no_grad()
def preview_grid(model: StableDiffusion, path: Path, guidances: tuple[float, ...] = (1.0, 5.0)) -> None:
    """A grid of fixed prompts (columns) at a few guidance weights (rows): progress made visible."""
    from diffx.pipeline import GenerationSettings, generate

    modes = (model.text_encoder.training, model.unet.training)
    model.text_encoder.eval()
    model.unet.eval()
    rows = [[to_pil(generate(model, GenerationSettings(prompt=prompt, guidance=w, steps=25)).images[0])
             for prompt in PREVIEW_PROMPTS] for w in guidances]
    model.text_encoder.train(modes[0])
    model.unet.train(modes[1])
    save_png(make_grid(rows, row_labels=[f"w = {w}" for w in guidances], col_labels=list(PREVIEW_PROMPTS),
                       title=path.stem.replace("_", " "), cell_size=(96, 96)), path, force=True)


def model_from_checkpoints(out_dir: str | Path) -> tuple[StableDiffusion, dict]:
    """The model as it stands in a (possibly still running) training folder: VAE + EMA text encoder/U-Net.

    Returns the model and the stage states (steps, losses, seconds) for the model card.
    """
    out = Path(out_dir)
    vae_saved = torch.load(out / "vae_state.pt", weights_only=True, map_location="cpu")
    unet_saved = torch.load(out / "unet_state.pt", weights_only=True, map_location="cpu")
    model = build(ModelConfig.from_dict(json.loads(unet_saved["model_config"])),
                  source=f"trained by diffx train ({out})")
    model.vae.load_state_dict(vae_saved["vae"])
    model.text_encoder.load_state_dict(unet_saved["text_encoder"])
    model.unet.load_state_dict(unet_saved["unet"])
    params = [*model.text_encoder.parameters(), *model.unet.parameters()]
    with torch.no_grad():
        for p, shadow in zip(params, unet_saved["ema"], strict=True):
            p.copy_(shadow)
    return model.eval(), {"vae": vae_saved["state"], "unet": unet_saved["state"]}


@torch.no_grad()
def fit_preview_factors(model: StableDiffusion, images: torch.Tensor, count: int = 512) -> None:
    """Fit the model's linear latent → RGB preview on `count` pool pictures and store it in its config."""
    from diffx.render import fit_latent_rgb_factors

    x = _to_unit(images[:count])
    latents = model.vae.encode(x).mean * model.config.vae.scaling_factor
    factors, bias = fit_latent_rgb_factors(latents, x)
    model.config.vae.latent_rgb_factors = tuple(tuple(float(v) for v in row) for row in factors.tolist())
    model.config.vae.latent_rgb_bias = tuple(float(v) for v in bias.tolist())


HISTORY_FILE = "training.json"  # beside a model: every run that trained it, oldest first


def run_record(train_config: dict, states: dict) -> dict:
    """One training run for the history: its settings (without the model config) and, per stage, the steps
    reached, the seconds spent, the final loss (mean of the last 100 steps) and the hardware."""
    settings = {key: value for key, value in train_config.items() if key != "model"}
    stages = {name: {"steps": state["step"], "seconds": round(state["seconds"]),
                     "final_loss": float(np.mean(state["losses"][-100:])) if state["losses"] else None,
                     "hardware": state.get("hardware", "")}
              for name, state in states.items()}
    if states["unet"].get("grounding_losses"):
        stages["unet"]["final_grounding_loss"] = float(np.mean(states["unet"]["grounding_losses"][-100:]))
    return {"settings": settings, **stages}


def export_model(out_dir: str | Path, folder: str | Path, scores: dict | None = None) -> StableDiffusion:
    """Ship a training folder as a diffx model folder (fp16 safetensors + config.json + MODEL_CARD.md +
    training.json, the history of the runs that trained it)."""
    from diffx.weights import save_model

    out, folder = Path(out_dir), Path(folder)
    model, states = model_from_checkpoints(out)
    train_config = json.loads((out / "train_config.json").read_text())
    _, images = _pool(TrainConfig(**{**train_config, "out_dir": str(out)}))
    fit_preview_factors(model, images)
    model.source = "embedded shapes-world model"
    save_model(model, folder, dtype=torch.float16)
    earlier = out / HISTORY_FILE
    runs = json.loads(earlier.read_text(encoding="utf-8"))["runs"] if earlier.is_file() else []
    runs.append(run_record(train_config, states))
    with atomic_output(folder / HISTORY_FILE, force=True) as tmp:
        tmp.write_text(json.dumps({"runs": runs}, indent=2), encoding="utf-8")
    write_model_card(folder, model, runs, scores)
    return model


def _run_lines(runs: list[dict]) -> list[str]:
    """A line per stage per run that trained something (a continued run keeps the VAE it started from)."""
    lines = []
    for number, run in enumerate(runs, start=1):
        settings = run["settings"]
        vae, unet = run["vae"], run["unet"]
        continued = f", continued from `{settings['init_from']}`" if settings.get("init_from") else ""
        lines.append(f"- Run {number}{continued}: {settings['pool_size']} rendered scenes (seed {settings['seed']}).")
        if vae["final_loss"] is not None:
            lines.append(
                f"  - VAE: {vae['steps']} steps, batch {settings['vae_batch']}, {settings['vae_crop']}x"
                f"{settings['vae_crop']} crops, L1 with object pixels weighted x{settings['shape_pixel_weight']} "
                f"+ KL x{settings['vae_kl_weight']}; final loss {vae['final_loss']:.4f}; "
                f"{vae['seconds'] / 60:.1f} min on {vae['hardware']}.")
        if unet["final_loss"] is not None:
            lines.append(
                f"  - Text encoder + U-Net: {unet['steps']} steps, batch {settings['unet_batch']}, AdamW lr "
                f"{settings['unet_lr']} (warm-up, cosine), EMA {settings['ema_decay']}, caption dropout "
                f"{settings['caption_dropout']}{_grounding_words(settings, unet)}; final L_simple "
                f"{unet['final_loss']:.4f}; {unet['seconds'] / 60:.1f} min on {unet['hardware']}.")
    return lines


def _grounding_words(settings: dict, unet: dict) -> str:
    if not settings.get("attention_loss"):
        return ""
    final = unet.get("final_grounding_loss")
    return (f", attention-grounding loss x{settings['attention_loss']} (diffx/embedded/grounding.py"
            + (f", final {final:.3f}" if final is not None else "") + ")")


def write_model_card(folder: Path, model: StableDiffusion, runs: list[dict], scores: dict | None) -> Path:
    """MODEL_CARD.md: what the model is, how it was trained (every run), and how well it follows prompts."""
    config = model.config
    parts = {name: sum(p.numel() for p in module.parameters()) for name, module in model.modules().items()}
    size_mb = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20
    lines = [
        "# shapes-world — diffx's embedded default model",
        "",
        "A Stable-Diffusion-v1-architecture model at toy size, trained by `diffx train` on the procedural",
        "shapes world (diffx/embedded/shapes.py): flat circles, squares and triangles in 8 named colours on",
        "a plain background, one or two objects, with captions such as",
        "\"a small red circle in the top left on a blue background\".",
        "",
        "## Architecture",
        f"- Text encoder: CLIP-style, {config.text_encoder.num_hidden_layers} layers, width "
        f"{config.text_encoder.hidden_size}, real CLIP BPE vocabulary ({parts['text_encoder'] / 1e6:.2f} M parameters)",
        f"- U-Net: channels {[config.unet.model_channels * m for m in config.unet.channel_mult]}, "
        f"{config.unet.num_res_blocks} res-block per level, self- and cross-attention at levels "
        f"{list(config.unet.attention_levels)} and the middle ({parts['unet'] / 1e6:.2f} M parameters)",
        f"- VAE: AutoencoderKL f{config.vae.downsample_factor}, channels "
        f"{[config.vae.ch * m for m in config.vae.ch_mult]}, 4 latent channels, latent scaling factor "
        f"{config.vae.scaling_factor:.4f} ({parts['vae'] / 1e6:.2f} M parameters). f4 rather than SD's f8: at "
        "64 px an f8 latent (8x8) blurs the corners that tell a square from a circle.",
        f"- Weights: {size_mb:.1f} MB (fp16 safetensors, original SD1.x key layout).",
        f"- Defaults: {config.default_sampler}, {config.default_steps} steps, guidance {config.default_guidance}, "
        f"{config.image_size}x{config.image_size} px, {config.scheduler.beta_schedule} schedule, T = "
        f"{config.scheduler.num_train_timesteps}.",
        "",
        "## Training (resumable, seeded: `diffx train`; history in training.json)",
        "Captions are re-drawn each time a scene is used; caption dropout trains the unconditional",
        "prediction for classifier-free guidance.",
        *_run_lines(runs),
    ]
    if any(run["settings"].get("attention_loss") for run in runs):
        lines += ["", "The attention-grounding loss (TokenCompose, Wang et al. 2024) taught the cross-attention",
                  "of each named object's colour and shape words to fall inside that object: this model's attention",
                  "maps point at objects because they were trained to; plain Stable Diffusion training has no such",
                  "objective."]
    if scores:
        lines += ["", *_adherence_lines(scores)]
    path = folder / "MODEL_CARD.md"
    with atomic_output(path, force=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _adherence_lines(scores: dict) -> list[str]:
    """The card's adherence section from `benchmarks/embedded_quality.py --out` results."""
    from diffx.embedded.quality import last_line, meets_targets, summary_rows

    default, unguided = scores["default"], scores["unguided"]
    reached = meets_targets(default, unguided)
    missed = [name for name, ok in reached.items() if not ok]
    lines = [
        "## Prompt adherence (judge: diffx/embedded/judge.py, `python -m benchmarks.embedded_quality`)",
        f"{default['n']} evaluation prompts (evaluation seed stream, never used for training or tuning), "
        f"{default['sampler']} {default['steps']} steps, prompt i at seed {default['seed']} + i.",
        "",
        f"| attribute | guidance {default['guidance']:g} | guidance 1 | target |",
        "|---|---|---|---|",
        *[f"| {' | '.join(row)} |" for row in summary_rows(default, unguided)],
        "",
        f"Pointing trials: {default['pointing_trials']} at guidance {default['guidance']:g}, "
        f"{unguided['pointing_trials']} at guidance 1. Last line: `{last_line(default)}`.",
        "",
        "All targets are met." if not missed else f"Targets not met: {', '.join(missed)}.",
    ]
    return lines


def update_model_card(folder: str | Path, scores: dict) -> Path:
    """Rewrite a shipped model's MODEL_CARD.md from its weights, training.json and new adherence figures."""
    from diffx.weights import load_model

    folder = Path(folder)
    history = folder / HISTORY_FILE
    runs = json.loads(history.read_text(encoding="utf-8"))["runs"] if history.is_file() else []
    return write_model_card(folder, load_model(folder), runs, scores)
