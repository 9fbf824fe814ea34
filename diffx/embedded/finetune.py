"""Teach the embedded model a new word: LoRA (Hu et al. 2021) or textual inversion (Gal et al. 2022), on a CPU.

Both minimise the model's own diffusion loss on the concept's pictures (`concept.training_examples`), captioned
with the token, every base weight frozen:

    L = E_{t, ε} ‖v − v_θ(x_t, t, c(caption))‖²,   v = √ᾱ_t ε − √(1 − ᾱ_t) x_0      (Salimans & Ho 2022, eq. 11)

(`sampling.schedules.training_loss`; an ε-model's target is ε). What is learned differs:

- **LoRA**: every attention projection of the U-Net (to_q, to_k, to_v, to_out, self- and cross-attention) and,
  by default, of the text encoder (q, k, v, out_proj) gets the low-rank update of Hu et al. 2021, eq. 3,

      y = W x + (alpha / r) · B A x,    A (r, in) ~ kaiming-uniform, B (out, r) = 0,

  so training starts from the base model exactly; A and B are learned, W stays. The update is applied by the
  same forward hooks that apply a loaded LoRA (`weights.lora_apply`), so what is trained is what is loaded.
  alpha = r (the factor 1).
- **Textual inversion**: the token becomes `vectors` new rows of the text encoder's token table
  (`weights.embedding.attach_embedding`), initialised from the word "shape"; only those rows are learned
  (Gal et al. 2022, eq. 2: v* = argmin_v L), the gradient of every other row is zeroed.

AdamW (no weight decay), the learning rate warmed up then cosine-decayed (`optim.learning_rate`), gradients
clipped to norm 1. The VAE encodes the pictures once: each step draws x_0 from the posterior N(μ, σ²) of a random
batch of them, scaled by the model's latent factor.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from diffx.embedded.concept import Concept, parse_concept, training_examples
from diffx.embedded.optim import learning_rate
from diffx.errors import InvalidArgumentError, check_finite, elide
from diffx.models.stable_diffusion import StableDiffusion
from diffx.models.tokenizer import ClipTokenizer
from diffx.pipeline.settings import check_seed
from diffx.sampling.schedules import NoiseSchedule, training_loss
from diffx.weights.embedding import TOKEN_PATTERN, Embedding, attach_embedding
from diffx.weights.lora import Lora, LoraLayer
from diffx.weights.lora_apply import AppliedLora, attach_lora
from diffx.weights.lora_names import kohya_names

METHODS = ("lora", "textual-inversion")
DEFAULT_LR = {"lora": 2e-3, "textual-inversion": 2e-2}
UNET_ATTENTION = (".to_q", ".to_k", ".to_v", ".to_out.0")  # diffx's U-Net projection paths end so
TEXT_ATTENTION = ("_q_proj", "_k_proj", "_v_proj", "_out_proj")  # kohya's text-encoder names end so
INIT_WORD = "shape"  # textual inversion starts from this word's vector
Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class FinetuneConfig:
    """What `finetune` trains: `concept` (`concept.parse_concept`'s text), the `token` that will name it, the
    `method` ("lora" or "textual-inversion"), the LoRA `rank` (and whether the `text_encoder` is adapted too), the
    textual-inversion `vectors`, and the run: `steps`, `lr` (None: `DEFAULT_LR` of the method), `batch`,
    `pictures` (world scenes rendered), `seed`."""

    concept: str
    token: str = "<zig>"
    method: str = "lora"
    rank: int = 4
    steps: int = 400
    lr: float | None = None
    batch: int = 8
    pictures: int = 64
    seed: int = 0
    text_encoder: bool = True
    vectors: int = 1

    def check(self) -> Concept:
        """Every value checked before any work; returns the parsed concept."""
        if self.method not in METHODS:
            raise InvalidArgumentError(f"--method {elide(self.method, 40)!r}: choose lora or textual-inversion")
        if not TOKEN_PATTERN.fullmatch(self.token) or self.token.isalpha():
            raise InvalidArgumentError(f"--token {elide(self.token, 40)!r}: one word of printable ASCII without "
                                       "spaces that is no plain English word, e.g. <zig>")
        for name, value, low, high in (("--rank", self.rank, 1, 64), ("--steps", self.steps, 1, 20_000),
                                       ("batch", self.batch, 1, 256), ("pictures", self.pictures, 1, 10_000),
                                       ("vectors", self.vectors, 1, 16)):
            if not low <= value <= high:
                raise InvalidArgumentError(f"{name} {value}: must be between {low} and {high}")
        check_seed(self.seed)
        if self.lr is not None:
            check_finite("--lr", self.lr)
            if not 0 < self.lr <= 1:
                raise InvalidArgumentError(f"--lr {self.lr:g}: must be above 0 and at most 1 (e.g. 2e-3)")
        return parse_concept(self.concept)


@dataclass
class FinetuneResult:
    """A finished run: the loss per step, the seconds it took, and what was learned — the LoRA (its layers' A and
    B, frozen again) still applied to the model through `applied`, or the embedding attached to it, whose token the
    base tokenizer `base_tokenizer` does not know."""

    config: FinetuneConfig
    concept: Concept
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    lora: Lora | None = None
    applied: AppliedLora | None = None
    embedding: Embedding | None = None
    base_tokenizer: ClipTokenizer | None = None

    @contextmanager
    def base(self, model: StableDiffusion) -> Iterator[None]:
        """The model as it was before the run, for the "before" pictures: the LoRA at scale 0, or the tokenizer
        without the new word."""
        if self.applied is not None:
            self.applied.scale = 0.0
        tokenizer, model.tokenizer = model.tokenizer, self.base_tokenizer or model.tokenizer
        try:
            yield
        finally:
            model.tokenizer = tokenizer
            if self.applied is not None:
                self.applied.scale = 1.0


def lora_layers(model: StableDiffusion, rank: int, text_encoder: bool, generator: torch.Generator
                ) -> list[LoraLayer]:
    """Fresh rank-r layers on the attention projections: A kaiming-uniform (as kohya's and PEFT's), B zero, so
    B A = 0 and the model starts as it was; alpha = r."""
    layers = []
    for target, name in kohya_names(model).items():
        if not (target.component == "unet" and target.module_path.endswith(UNET_ATTENTION)
                or text_encoder and target.component == "text_encoder" and name.endswith(TEXT_ATTENTION)):
            continue
        module = target.module(model)
        down = torch.empty(rank, module.in_features)
        bound = 1 / math.sqrt(module.in_features)  # kaiming_uniform_ with a = √5: U(−1/√in, 1/√in)
        down.uniform_(-bound, bound, generator=generator)
        device = module.weight.device  # A and B in fp32 beside the layer; the hook casts them to its activations
        layers.append(LoraLayer(target, nn.Parameter(down.to(device)),
                                nn.Parameter(torch.zeros(module.out_features, rank, device=device)), 1.0))
    return layers


def _teach_token(model: StableDiffusion, config: FinetuneConfig) -> tuple[Embedding, nn.Parameter, int]:
    """Attach `vectors` new rows for the token, initialised from `INIT_WORD`; the table's weight is made
    trainable with a gradient hook that keeps every old row's gradient zero. Returns the embedding, the table's
    weight and the first new row."""
    table = next(m for name, m in model.text_encoder.named_modules() if name.endswith("token_embedding"))
    start = table.num_embeddings
    init_id = model.tokenizer.encode(INIT_WORD).ids[1]
    vectors = table.weight.detach()[init_id].float().repeat(config.vectors, 1)
    embedding = Embedding(Path(f"{config.token}.safetensors"), config.token, (vectors,))
    attach_embedding(model, embedding)
    weight = table.weight
    weight.requires_grad_(True)
    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype)
    mask[start:] = 1
    weight.register_hook(lambda grad: grad * mask.to(grad))
    return embedding, weight, start


def finetune(model: StableDiffusion, config: FinetuneConfig, progress: Progress | None = None) -> FinetuneResult:
    """Train `config.method` on `model` (the embedded model, or any diffx model of the SD1.x kind) to draw the
    concept when prompted with the token; `progress(stage, done, total)` hears each step. The model is left
    adapted (the LoRA applied at scale 1, or the word taught) — see `FinetuneResult.base` for the model before."""
    concept = config.check()
    for component in model.modules().values():
        component.requires_grad_(False)
    generator = torch.Generator().manual_seed(config.seed)
    size = model.config.image_size
    pictures, captions = training_examples(concept, config.token, config.pictures, config.seed, size)
    with torch.no_grad():
        posterior = model.vae.encode(pictures.to(model.device, model.dtype))
    mean, std = posterior.mean.float(), posterior.std.float()
    scale = model.config.vae.scaling_factor
    result = FinetuneResult(config, concept, base_tokenizer=model.tokenizer)
    if config.method == "lora":
        layers = lora_layers(model, config.rank, config.text_encoder, generator)
        result.lora = Lora(Path(f"{config.token}.safetensors"), tuple(layers))
        result.applied = attach_lora(model, result.lora)
        params = [p for layer in layers for p in (layer.down, layer.up)]
    else:
        result.embedding, weight, start = _teach_token(model, config)
        params = [weight]
    ids = torch.tensor([model.tokenizer.encode(text).ids for text in captions], device=model.device)
    schedule = NoiseSchedule.from_config(model.config.scheduler)
    prediction_type = model.config.scheduler.prediction_type
    base_lr = config.lr or DEFAULT_LR[config.method]
    optimizer = torch.optim.AdamW(params, lr=base_lr, weight_decay=0.0)
    started = time.perf_counter()
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, base_lr, min(50, config.steps // 10 + 1), config.steps)
        picks = torch.randint(0, len(captions), (config.batch,), generator=generator)
        # drawn on the CPU, so a seed means the same on every device
        noise = torch.randn(mean[picks].shape, generator=generator).to(mean.device)
        x0 = (mean[picks] + std[picks] * noise) * scale  # a draw of the posterior, scaled as the model's latents
        context = model.text_encoder(ids[picks])
        loss = training_loss(model.unet, schedule, x0, context, generator, prediction_type)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        result.losses.append(float(loss.detach()))
        if progress is not None:
            progress("training", step + 1, config.steps)
    result.seconds = time.perf_counter() - started
    for param in params:
        param.requires_grad_(False)
    if result.embedding is not None:
        learned = weight.detach()[start:].float().clone()
        result.embedding = Embedding(result.embedding.path, config.token, (learned,))
    return result

