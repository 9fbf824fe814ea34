"""Recording what happens inside one generation: `TraceOptions` (what to record), `Tracer` (the listener),
`TraceCollector` (a tracer for every image) and `generate_traced` (the pipeline with a tracer listening to every
image); what they make is a `Trace` (`diffx.trace.record`).

The pipeline knows nothing of traces: it hands each image's `Observer` hooks to whoever asks
(`diffx.pipeline.generate(observe=...)`). The tracer listens at two places and never changes a number:
- the sampler's per-step callback: t, σ, ᾱ, the model input x_t, the guided ε̂ and the predicted x̂0;
- the denoiser (classifier-free guidance): ε̂ unconditional and conditional, and — through
  `observe_attention` — the cross-attention probabilities of every U-Net layer while it runs.

Cross-attention maps follow the DAAM recipe (Tang et al. 2023): per layer, the conditional half,
averaged over heads, upsampled to the largest attention resolution, then averaged over layers. By
default only that aggregate is stored, one (tokens, h, w) map per step. `TraceOptions(attention_detail=
"layers")` also keeps every layer's map at its own resolution (mean over heads), "heads" every head's
too; "self_attention_maps" keeps the self-attention matrix itself at one grid (16×16, as in the
prompt-to-prompt notebook). Budget, measured by benchmarks/trace_memory.py: a 50-step 512 px SD1.5
trace with per-layer maps stays under 300 MB on disk; per-head maps are 8× the per-layer ones and are
kept only when asked.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from diffx.errors import InvalidArgumentError, check_choice
from diffx.models.attention import AttentionLayer
from diffx.pipeline.codec import decode_latents
from diffx.pipeline.generation import Generation, generate
from diffx.pipeline.observers import ImageRun, Observer, chain_callbacks
from diffx.pipeline.settings import GenerationSettings, ResolvedSettings
from diffx.sampling.samplers import StepCallback, StepRecord
from diffx.trace.attention import daam_aggregate, layer_labels, layer_token_maps
from diffx.trace.checks import model_identity
from diffx.trace.record import Trace, trace_meta

if TYPE_CHECKING:
    from PIL import Image

    from diffx.models.stable_diffusion import StableDiffusion

RECORDABLE = ("latents", "eps", "x0", "attention", "negative_attention", "self_attention", "self_attention_maps",
              "joint_attention")
# "joint_attention" only means something for a transformer (SD3), whose attention is joint: a U-Net records nothing.
DEFAULT_RECORD = ("latents", "eps", "x0", "attention", "joint_attention")
ATTENTION_DETAILS = ("aggregate", "layers", "heads")


@dataclass
class TraceOptions:
    """What a `Tracer` records.

    `record`: any of RECORDABLE. `attention_resolutions`: only layers whose attention grid has one of
    these side lengths (e.g. (16, 8)); None = all. `attention_layers`: a regular expression on the layer
    name (e.g. "output_blocks"); None = all. `attention_detail` (with "attention" recorded): "aggregate"
    keeps the DAAM map only, "layers" also each layer's map (mean over heads), "heads" also each head's.
    `self_attention_resolution`: the grid side (rows) whose self-attention layers "self_attention_maps"
    averages (capped at the latent's rows).
    """

    record: tuple[str, ...] = DEFAULT_RECORD
    attention_resolutions: tuple[int, ...] | None = None
    attention_layers: str | None = None
    attention_detail: str = "aggregate"
    self_attention_resolution: int = 16

    def __post_init__(self) -> None:
        unknown = [name for name in self.record if name not in RECORDABLE]
        if unknown:
            raise InvalidArgumentError(
                f"cannot record {', '.join(unknown)}; choose from: {', '.join(RECORDABLE)}")
        check_choice("attention detail", self.attention_detail, ATTENTION_DETAILS)
        if self.self_attention_resolution < 1:
            raise InvalidArgumentError(f"self_attention_resolution must be a positive grid side, got "
                                       f"{self.self_attention_resolution}")


class Tracer:
    """Hooks for one generation: an attention observer (`observe_attention`) and `on_guidance` inside the
    CFG denoiser, `on_step` as the sampler callback; `finish` turns what was recorded into a `Trace`."""

    def __init__(self, latent_shape: tuple[int, int], options: TraceOptions | None = None, num_tokens: int = 77,
                 num_negative_tokens: int = 77, token_grid: tuple[int, int] | None = None):
        self.options = options or TraceOptions()
        self.num_tokens = num_tokens
        self.num_negative_tokens = num_negative_tokens
        self.latent_shape = latent_shape  # (h, w) of the latent: attention grids are fractions of it
        self.token_grid = token_grid  # a transformer's (rows, cols) of image tokens: where its joint matrix splits
        self._layer_filter = re.compile(self.options.attention_layers) if self.options.attention_layers else None
        self._pending: dict[str, list[Tensor]] = {}
        self._steps: dict[str, list[Tensor]] = {}
        self._layers: dict[str, dict] = {}  # per-layer detail: layer name -> {"name", "grid", "heads"}
        self._self_grid: tuple[int, int] | None = None  # the grid of the recorded self-attention maps
        self._joint_layers: list[str] = []  # the joint attentions whose quadrant shares are recorded, in run order
        self._unwanted: set[str] = set()  # self-attention layers of another grid, once seen: not computed again
        self._scalars: dict[str, list[float]] = {"timesteps": [], "sigmas": [], "alphas_cumprod": []}

    def observer(self) -> Observer:
        """The pipeline hooks this tracer listens through."""
        return Observer(on_step=self.on_step, on_guidance=self.on_guidance, attention=self)

    # ---- attention observer protocol (see diffx.models.attention) ----
    def _grid(self, num_queries: int) -> tuple[int, int]:
        """The (rows, cols) of a layer's attention grid, from its query count and the latent's aspect."""
        height, width = self.latent_shape
        factor = math.isqrt(height * width // num_queries)
        return height // factor, width // factor

    def wants(self, layer: AttentionLayer) -> bool | slice:
        """Which layers to observe, and which batch rows: the denoiser batches [uncond; cond] (or only cond
        without guidance), so the conditional row is the last one; the first is needed for negative_attention."""
        record = set(self.options.record)
        cross = {"attention", "negative_attention"} & record
        self_kind = {"self_attention", "self_attention_maps"} & record
        # A joint attention holds both: its image→text quadrant is a cross-attention, image→image a self-attention.
        wanted_kind = ("cross" if cross else None, "self" if self_kind else None,
                       "joint" if cross or self_kind or "joint_attention" in record else None)
        if layer.kind not in wanted_kind or layer.layer_name in self._unwanted:
            return False
        if self._layer_filter is not None and not self._layer_filter.search(layer.layer_name):
            return False
        return slice(None) if layer.kind != "self" and "negative_attention" in record else slice(-1, None)

    def observe(self, layer: AttentionLayer, probs: Tensor) -> None:
        if layer.kind == "joint":
            self._observe_joint(layer, probs)
            return
        rows, cols = self._grid(probs.shape[2])
        if self.options.attention_resolutions and rows not in self.options.attention_resolutions:
            return
        if layer.kind == "cross":
            self._observe_cross(layer, probs, rows, cols)
        else:
            self._observe_self(layer, probs[-1].mean(0), rows, cols)

    def _observe_joint(self, layer: AttentionLayer, probs: Tensor) -> None:
        """SD3's joint attention (B', heads, N_img + N_txt, N_img + N_txt), image tokens first: its image→text
        quadrant is recorded as cross-attention (the prompt's CLIP tokens are the text's first 77), its
        image→image quadrant, renormalised per row, as self-attention; with "joint_attention", each quadrant's
        share of the attention mass and the text→image quadrant (what each word reads back from the picture)."""
        if self.token_grid is None:
            raise InvalidArgumentError("a joint attention layer ran, but the tracer was not told the model's token "
                                       "grid; build the Tracer with token_grid (generate_traced does)")
        rows, cols = self.token_grid
        n_image, record = rows * cols, self.options.record
        if self.options.attention_resolutions and rows not in self.options.attention_resolutions:
            return
        if "joint_attention" in record:
            p = probs[-1].mean(0)  # (N, N): the conditional row, mean over heads
            image, text = p[:n_image], p[n_image:]
            # Each row sums to 1: the share an image (text) query gives the image (text) keys, averaged over queries.
            shares = torch.stack([image[:, :n_image].sum(-1).mean(), image[:, n_image:].sum(-1).mean(),
                                  text[:, :n_image].sum(-1).mean(), text[:, n_image:].sum(-1).mean()])
            self._pending.setdefault("joint_attention", []).append(shares)
            # (K, N_img) -> (K, rows, cols): each prompt token's attention over the image tokens
            words = text[: self.num_tokens, :n_image].reshape(self.num_tokens, rows, cols)
            self._pending.setdefault("text_to_image", []).append(words)
            if layer.layer_name not in self._joint_layers:
                self._joint_layers.append(layer.layer_name)
        if {"attention", "negative_attention"} & set(record):
            self._observe_cross(layer, probs[:, :, :n_image, n_image:], rows, cols)
        if {"self_attention", "self_attention_maps"} & set(record):
            block = probs[-1, :, :n_image, :n_image].mean(0)  # (N_img, N_img)
            self._observe_self(layer, block / block.sum(-1, keepdim=True), rows, cols)

    def _observe_cross(self, layer: AttentionLayer, probs: Tensor, rows: int, cols: int) -> None:
        """Cross-attention probabilities (B', heads, rows*cols, tokens) of one layer."""
        record = self.options.record
        # (B', heads, rows*cols, 77): one (K, rows, cols) map per prompt, mean over heads.
        if "attention" in record:
            maps = layer_token_maps(probs[-1], self.num_tokens, rows, cols)
            self._pending.setdefault("attention", []).append(maps)
            if self.options.attention_detail != "aggregate":
                self._layers.setdefault(layer.layer_name, {"name": layer.layer_name, "grid": [rows, cols],
                                                           "heads": probs.shape[1]})
                self._pending.setdefault("layer_attention", []).append(maps)
            if self.options.attention_detail == "heads":
                # (heads, rows*cols, K) -> (heads, K, rows, cols)
                heads = probs[-1, :, :, : self.num_tokens].transpose(1, 2)
                self._pending.setdefault("head_attention", []).append(heads.reshape(-1, self.num_tokens,
                                                                                    rows, cols))
        if "negative_attention" in record and probs.shape[0] > 1:
            self._pending.setdefault("negative_attention", []).append(
                layer_token_maps(probs[0], self.num_negative_tokens, rows, cols))

    def _observe_self(self, layer: AttentionLayer, p: Tensor, rows: int, cols: int) -> None:
        """A self-attention's (N, N) probabilities, mean over heads: each query pixel's row over the key pixels."""
        record = self.options.record
        if "self_attention" in record:
            # Entropy of each query pixel's attention row: low = looks at few places, high = diffuse.
            entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).reshape(rows, cols)
            self._pending.setdefault("self_attention", []).append(entropy[None])
        finest = (self.token_grid or self.latent_shape)[0]  # a transformer's image tokens, a U-Net's latent rows
        if "self_attention_maps" in record and rows == min(self.options.self_attention_resolution, finest):
            self._self_grid = (rows, cols)
            self._pending.setdefault("self_attention_maps", []).append(p)
        elif "self_attention" not in record and layer.kind == "self":
            # a 64×64 SD1.5 layer's probabilities are 4096² per head: not computed again (a joint layer's other
            # quadrants are still wanted)
            self._unwanted.add(layer.layer_name)

    # ---- denoiser and sampler hooks ----
    def on_guidance(self, eps_uncond: Tensor | None, eps_cond: Tensor) -> None:
        """Called by the CFG denoiser with the two noise predictions of the traced image."""
        if "eps" in self.options.record:
            self._pending["eps_cond"] = [eps_cond[0]]
            if eps_uncond is not None:
                self._pending["eps_uncond"] = [eps_uncond[0]]

    def on_step(self, record: StepRecord) -> None:
        """Sampler callback: file this step's record together with what the denoiser saw."""
        self._scalars["timesteps"].append(record.timestep)
        self._scalars["sigmas"].append(record.sigma)
        self._scalars["alphas_cumprod"].append(record.alpha_cumprod)
        record_what = self.options.record
        if "latents" in record_what:
            self._add("latents", record.x[0])
        if "eps" in record_what:
            self._add("eps", record.eps_pred[0])
        if "x0" in record_what:
            self._add("x0", record.x0_pred[0])
        for key, maps in self._pending.items():
            if key == "self_attention":  # one entropy map per layer: (1, rows, cols) → (a, a')
                self._add(key, daam_aggregate(maps)[0])
            elif key == "self_attention_maps":  # (N, N) per layer of one grid → their mean
                self._add(key, torch.stack(maps).mean(0))
            elif key in ("layer_attention", "head_attention"):  # the layers in the order the U-Net runs them
                for index, layer_maps in enumerate(maps):
                    self._add(f"{key}.{index}", layer_maps)
            elif key == "joint_attention":  # (layers, 4): each block's quadrant shares, in the order they run
                self._add(key, torch.stack(maps))
            elif key.endswith("attention") or key == "text_to_image":  # maps of every layer: their mean
                self._add(key, daam_aggregate(maps))
            else:
                self._add(key, maps[0])
        self._pending = {}

    def recorded(self, key: str) -> list[Tensor]:
        """The per-step tensors recorded so far under `key` (empty if none)."""
        return self._steps.get(key, [])

    def latest(self, run: ImageRun, meta: dict) -> Trace:
        """A one-step `Trace` of the step recorded last: what a live view (`diffx.studio`) draws as each step
        arrives, with the same functions that draw a finished trace."""
        tensors = {key: torch.tensor(values[-1:], dtype=torch.float32) for key, values in self._scalars.items()}
        tensors.update({key: values[-1][None] for key, values in self._steps.items()})
        return Trace(settings=run.settings, tokens=run.tokens, negative_tokens=run.negative_tokens, meta=meta,
                     tensors=tensors)

    def _add(self, key: str, value: Tensor) -> None:
        self._steps.setdefault(key, []).append(value.detach().to("cpu", torch.float16))

    def finish(self, run: ImageRun, meta: dict, extra: dict[str, Tensor] | None = None) -> Trace:
        """The `Trace` of the image `run` describes (its settings and tokens): `meta` (`trace_meta`) plus, when
        recorded, the per-layer list and the self-attention grid; `extra` tensors join the recorded ones."""
        tensors = {key: torch.tensor(values, dtype=torch.float32) for key, values in self._scalars.items()}
        tensors.update({key: torch.stack(values) for key, values in self._steps.items()})
        tensors.update(extra or {})
        if self._layers:
            layers = list(self._layers.values())
            meta = {**meta, "attention_layers": [{**info, "label": label} for info, label in
                                                 zip(layers, layer_labels([info["name"] for info in layers]),
                                                     strict=True)]}
        if self._self_grid is not None:
            meta = {**meta, "self_attention_grid": list(self._self_grid)}
        if self._joint_layers:
            meta = {**meta, "joint_layers": self._joint_layers, "token_grid": list(self.token_grid)}
        return Trace(settings=run.settings, tokens=run.tokens, negative_tokens=run.negative_tokens, meta=meta,
                     tensors=tensors)


@dataclass
class TracedGeneration(Generation):
    """A `Generation` with one `Trace` per image."""

    traces: list[Trace] = field(default_factory=list)


AfterStep = Callable[[ImageRun, Tracer], None]  # called once a step is recorded: the run and its tracer


class TraceCollector:
    """An `observe` factory (`diffx.pipeline.observers`) that gives every image a `Tracer` and keeps each run
    with its tracer, in order: what `generate_traced`, the inversion's trace and prompt-to-prompt listen with.
    `after_step(run, tracer)`, if given, is called after the tracer has recorded each step (a live view)."""

    def __init__(self, options: TraceOptions | None = None, after_step: AfterStep | None = None):
        self.options = options
        self.after_step = after_step
        self.runs: list[tuple[ImageRun, Tracer]] = []

    def __call__(self, run: ImageRun) -> Observer:
        tracer = Tracer(run.latent_shape[-2:], self.options, num_tokens=run.tokens.num_tokens,
                        num_negative_tokens=run.negative_tokens.num_tokens, token_grid=run.token_grid)
        self.runs.append((run, tracer))
        observer = tracer.observer()
        if self.after_step is not None:
            after_step = self.after_step
            observer.on_step = chain_callbacks(tracer.on_step, lambda _record: after_step(run, tracer))
        return observer


def generate_traced(model: StableDiffusion, settings: GenerationSettings | ResolvedSettings, *,
                    prompts: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                    init_image: Image.Image | np.ndarray | None = None,
                    mask: Image.Image | np.ndarray | torch.Tensor | None = None,
                    options: TraceOptions | None = None, decode_every: int = 0,
                    progress: StepCallback | None = None, after_step: AfterStep | None = None) -> TracedGeneration:
    """`diffx.pipeline.generate` with a `Tracer` listening to every image (the same images, bit for bit).

    `options`: what to record (default `TraceOptions()`). `decode_every`: also VAE-decode the predicted
    x̂0 at steps 0, N, 2N, … and the last into the trace (for pictures that need no model later).
    `after_step(run, tracer)`: called after each step is recorded (see `TraceCollector`).
    """
    collect = TraceCollector(options, after_step)
    generation = generate(model, settings, prompts=prompts, seeds=seeds, init_image=init_image, mask=mask,
                          observe=collect, progress=progress)
    traces, identity = [], model_identity(model)
    for (run, tracer), image, final in zip(collect.runs, generation.images, generation.latents, strict=True):
        extra = {"final_latent": final, "image": torch.from_numpy(image)}
        extra.update(_decoded_steps(model, tracer, decode_every))
        traces.append(tracer.finish(run, trace_meta(model, run, identity), extra))
    return TracedGeneration(images=generation.images, latents=generation.latents, settings=generation.settings,
                            traces=traces)


def _decoded_steps(model: StableDiffusion, tracer: Tracer, every: int) -> dict[str, torch.Tensor]:
    """VAE decodes of the recorded x̂0 at steps 0, N, 2N, … and the last."""
    x0_steps = tracer.recorded("x0")
    if not every or not x0_steps:
        return {}
    steps = sorted(set(range(0, len(x0_steps), every)) | {len(x0_steps) - 1})
    decoded = decode_latents(model, torch.stack([x0_steps[i] for i in steps]))
    return {"decoded_x0": torch.stack([torch.from_numpy(image) for image in decoded]),
            "decoded_steps": torch.tensor(steps)}
