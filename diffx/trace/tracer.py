"""Recording what happens inside one generation: `Trace` (the record), `Tracer` (the listener) and
`generate_traced` (the pipeline with a tracer listening to every image).

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

Tokens: the maps keep the K = `num_tokens` positions the prompt uses (start, the prompt's tokens, end);
the 77 − K padding positions are not stored, their share is 1 − Σ over the K maps, since every query's
attention row sums to 1 (`Trace.token_columns`). A word of several BPE tokens gets the mean of its
tokens' maps (DAAM's rule).

A trace is saved as one safetensors file: the tensors plus a JSON header (`save_trace` / `load_trace`);
the metadata records the model that made it (`trace_checks.model_identity`), and `load_trace` checks the
header, the metadata schema and every tensor's shape before anything reads them (`trace_checks`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

import diffx
from diffx.errors import InvalidArgumentError, TraceFileError, check_choice
from diffx.files import atomic_output
from diffx.models.attention import AttentionLayer
from diffx.models.tokenizer import CONTEXT_LENGTH, TokenizedPrompt
from diffx.pipeline.codec import decode_latents
from diffx.pipeline.generation import Generation, generate
from diffx.pipeline.observers import ImageRun, Observer
from diffx.pipeline.settings import GenerationSettings, ResolvedSettings
from diffx.sampling.samplers import StepCallback, StepRecord
from diffx.trace.attention import daam_aggregate, layer_labels, layer_token_maps, merge_words
from diffx.trace.checks import TRACE_FORMAT, TRACE_VERSION, check_trace_file, model_identity, model_mismatch

if TYPE_CHECKING:
    from PIL import Image

    from diffx.models.stable_diffusion import StableDiffusion

RECORDABLE = ("latents", "eps", "x0", "attention", "negative_attention", "self_attention", "self_attention_maps")
DEFAULT_RECORD = ("latents", "eps", "x0", "attention")
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


@dataclass
class Trace:
    """Everything recorded for one image: per-step tensors (first axis = step) and metadata.

    Tensors (S = model evaluations, h×w = latent grid, K = prompt tokens incl. start/end):
      timesteps, sigmas, alphas_cumprod (S,); latents (S, 4, h, w) the model input x_t;
      eps (S, 4, h, w) guided ε̂; eps_uncond, eps_cond (S, 4, h, w); x0 (S, 4, h, w) predicted x̂0;
      attention (S, K, a, a') cross-attention per token; negative_attention likewise for the negative
      prompt; self_attention (S, a, a') entropy of self-attention per query pixel;
      layer_attention.i (S, K, r_i, c_i) layer i's map (mean over heads) at its own grid, and
      head_attention.i (S, H_i, K, r_i, c_i) per head, layer i = meta["attention_layers"][i];
      self_attention_maps (S, N, N) self-attention rows (mean over heads and the layers of the grid
      meta["self_attention_grid"], N = rows·cols);
      final_latent (4, h, w); image (H, W, 3) uint8 the decoded result;
      decoded_x0 (D, H, W, 3) uint8 with decoded_steps (D,): VAE decodes of x̂0 at some steps.
    All latents are *scaled* latents (the U-Net's space).
    """

    meta: dict
    tensors: dict[str, Tensor] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return int(self.tensors["timesteps"].shape[0])

    def bytes_per_step(self) -> int:
        """Storage of one step: the first row of every per-step tensor (first axis = step)."""
        return sum(value[0].numel() * value.element_size() for value in self.tensors.values()
                   if value.ndim and value.shape[0] == self.num_steps)

    @property
    def words(self) -> list[str]:
        return list(self.meta["tokens"]["words"])

    def word_maps(self, step: int, negative: bool = False) -> Tensor:
        """(words, a, a') attention maps per word at one step: the mean over the word's tokens."""
        key = "negative_attention" if negative else "attention"
        return merge_words(self.tensors[key][step].float(), self.meta["negative_tokens" if negative else "tokens"])

    @property
    def attention_layers(self) -> list[dict]:
        """The layers with maps of their own ("layers"/"heads" detail): {"name", "label", "grid", "heads"}."""
        return list(self.meta.get("attention_layers", []))

    def layer_index(self, layer: str | int) -> int:
        """The index of a recorded layer given by label ("up.3"), full name or index."""
        layers = self.attention_layers
        if not layers:
            raise InvalidArgumentError("the trace holds no per-layer attention; record it with "
                                       "TraceOptions(attention_detail='layers') or `diffx attention`")
        for index, info in enumerate(layers):
            if layer in (index, str(index), info["label"], info["name"]):
                return index
        raise InvalidArgumentError(f"unknown layer {layer!r}; choose one of: "
                                   f"{', '.join(info['label'] for info in layers)}")

    def token_maps(self, step: int | None = None, layer: int | None = None, head: int | None = None) -> Tensor:
        """(K, r, c) cross-attention maps of the K prompt positions: the DAAM aggregate (`layer` None), one
        layer's mean over heads, or one head of it; at 0-based `step`, or the mean over all steps (None)."""
        key = "attention" if layer is None else f"{'layer' if head is None else 'head'}_attention.{layer}"
        if key not in self.tensors:
            detail = "heads" if head is not None else "layers"
            raise InvalidArgumentError(f"the trace has no {key}; record it with TraceOptions(attention_detail="
                                       f"{detail!r}) or `diffx attention{' --heads' * (head is not None)}`")
        values = self.tensors[key].float()
        maps = values.mean(0) if step is None else values[step]  # (K, r, c) or (H, K, r, c)
        return maps if head is None else maps[head]

    def token_columns(self, maps: Tensor) -> tuple[list[str], Tensor]:
        """Labels and maps (2 + words + 1, r, c) of the start token, each word, the end token and the padding.

        Words: the mean of the word's BPE tokens' maps (DAAM's rule). Padding: 1 − Σ over the K kept
        positions, the mass the 77 − K padding positions of the end token draw (every query row sums to 1).
        """
        tokens = self.meta["tokens"]
        count = tokens["num_tokens"]
        padding = (1 - maps.sum(0)).clamp_min(0)  # (r, c)
        labels = ["⟨start⟩", *(f"“{word}”" for word in tokens["words"]), "⟨end⟩",
                  f"⟨padding ×{CONTEXT_LENGTH - count}⟩"]
        return labels, torch.cat([maps[:1], merge_words(maps, tokens), maps[count - 1:count], padding[None]])

    def latent_preview(self) -> dict:
        """The model's latent → RGB preview as the keyword arguments of `render.latent_to_rgb_fast` (factors
        and bias, with a hidden layer's weight and bias when fitted as a per-pixel MLP); {} = SD1.5's."""
        return dict(self.meta.get("latent_preview") or {})

    def decoded_steps(self) -> dict[int, np.ndarray]:
        """The VAE decodes of x̂0 stored in the trace, by 0-based step."""
        if "decoded_x0" not in self.tensors:
            return {}
        return {int(step): image.numpy() for step, image in
                zip(self.tensors["decoded_steps"], self.tensors["decoded_x0"], strict=True)}

    def decoded_x0(self, indices: Sequence[int], model: StableDiffusion | None = None) -> list[np.ndarray]:
        """VAE decodes (H, W, 3) of x̂0 at 0-based step `indices`: stored ones from the trace, the rest
        decoded with `model` (an error names the missing steps when there is no model, or says so when
        `model` is not the model that made the trace)."""
        stored = self.decoded_steps()
        missing = sorted({i for i in indices if i not in stored})
        if missing and model is None:
            numbers = ", ".join(str(i + 1) for i in missing[:5]) + (", …" if len(missing) > 5 else "")
            raise InvalidArgumentError(f"the trace holds no VAE decode of x̂0 at step {numbers}; "
                                       "pass --model to decode them, or use --preview fast")
        mismatch = model_mismatch(self.meta, model) if missing and model is not None else None
        if mismatch:
            raise InvalidArgumentError(mismatch)
        if missing:
            stored.update(zip(missing, decode_latents(model, self.tensors["x0"][missing]), strict=True))
        return [stored[i] for i in indices]


class Tracer:
    """Hooks for one generation: an attention observer (`observe_attention`) and `on_guidance` inside the
    CFG denoiser, `on_step` as the sampler callback; `finish` turns what was recorded into a `Trace`."""

    def __init__(self, latent_shape: tuple[int, int], options: TraceOptions | None = None, num_tokens: int = 77,
                 num_negative_tokens: int = 77):
        self.options = options or TraceOptions()
        self.num_tokens = num_tokens
        self.num_negative_tokens = num_negative_tokens
        self.latent_shape = latent_shape  # (h, w) of the latent: attention grids are fractions of it
        self._layer_filter = re.compile(self.options.attention_layers) if self.options.attention_layers else None
        self._pending: dict[str, list[Tensor]] = {}
        self._steps: dict[str, list[Tensor]] = {}
        self._layers: dict[str, dict] = {}  # per-layer detail: layer name -> {"name", "grid", "heads"}
        self._self_grid: tuple[int, int] | None = None  # the grid of the recorded self-attention maps
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
        record = self.options.record
        wanted_kind = ("cross" if {"attention", "negative_attention"} & set(record) else None,
                       "self" if {"self_attention", "self_attention_maps"} & set(record) else None)
        if layer.kind not in wanted_kind or layer.layer_name in self._unwanted:
            return False
        if self._layer_filter is not None and not self._layer_filter.search(layer.layer_name):
            return False
        return slice(None) if layer.kind == "cross" and "negative_attention" in record else slice(-1, None)

    def observe(self, layer: AttentionLayer, probs: Tensor) -> None:
        rows, cols = self._grid(probs.shape[2])
        if self.options.attention_resolutions and rows not in self.options.attention_resolutions:
            return
        record = self.options.record
        if layer.kind == "cross":
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
            return
        p = probs[-1].mean(0)  # (N, N): each query pixel's attention row over the key pixels, mean over heads
        if "self_attention" in record:
            # Entropy of each query pixel's attention row: low = looks at few places, high = diffuse.
            entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).reshape(rows, cols)
            self._pending.setdefault("self_attention", []).append(entropy[None])
        if "self_attention_maps" in record and rows == min(self.options.self_attention_resolution,
                                                           self.latent_shape[0]):
            self._self_grid = (rows, cols)
            self._pending.setdefault("self_attention_maps", []).append(p)
        elif "self_attention" not in record:  # a 64×64 SD1.5 layer's probabilities are 4096² per head
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
            elif key.endswith("attention"):
                self._add(key, daam_aggregate(maps))
            else:
                self._add(key, maps[0])
        self._pending = {}

    def recorded(self, key: str) -> list[Tensor]:
        """The per-step tensors recorded so far under `key` (empty if none)."""
        return self._steps.get(key, [])

    def _add(self, key: str, value: Tensor) -> None:
        self._steps.setdefault(key, []).append(value.detach().to("cpu", torch.float16))

    def finish(self, meta: dict, extra: dict[str, Tensor] | None = None) -> Trace:
        """The `Trace`: `meta` plus, when recorded, the per-layer list and the self-attention grid."""
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
        return Trace(meta=meta, tensors=tensors)


@dataclass
class TracedGeneration(Generation):
    """A `Generation` with one `Trace` per image."""

    traces: list[Trace] = field(default_factory=list)


class TraceCollector:
    """An `observe` factory (`diffx.pipeline.observers`) that gives every image a `Tracer` and keeps each run
    with its tracer, in order: what `generate_traced`, the inversion's trace and prompt-to-prompt listen with."""

    def __init__(self, options: TraceOptions | None = None):
        self.options = options
        self.runs: list[tuple[ImageRun, Tracer]] = []

    def __call__(self, run: ImageRun) -> Observer:
        tracer = Tracer(run.latent_shape[-2:], self.options, num_tokens=run.tokens.num_tokens,
                        num_negative_tokens=run.negative_tokens.num_tokens)
        self.runs.append((run, tracer))
        return tracer.observer()


def generate_traced(model: StableDiffusion, settings: GenerationSettings | ResolvedSettings, *,
                    prompts: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                    init_image: Image.Image | np.ndarray | None = None,
                    mask: Image.Image | np.ndarray | torch.Tensor | None = None,
                    options: TraceOptions | None = None, decode_every: int = 0,
                    progress: StepCallback | None = None) -> TracedGeneration:
    """`diffx.pipeline.generate` with a `Tracer` listening to every image (the same images, bit for bit).

    `options`: what to record (default `TraceOptions()`). `decode_every`: also VAE-decode the predicted
    x̂0 at steps 0, N, 2N, … and the last into the trace (for pictures that need no model later).
    """
    collect = TraceCollector(options)
    generation = generate(model, settings, prompts=prompts, seeds=seeds, init_image=init_image, mask=mask,
                          observe=collect, progress=progress)
    traces, identity = [], model_identity(model)
    for (run, tracer), image, final in zip(collect.runs, generation.images, generation.latents, strict=True):
        extra = {"final_latent": final, "image": torch.from_numpy(image)}
        extra.update(_decoded_steps(model, tracer, decode_every))
        traces.append(tracer.finish(trace_meta(model, run, identity), extra))
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


def trace_meta(model: StableDiffusion, run: ImageRun, identity: dict | None = None) -> dict:
    """The JSON metadata of one image's trace: format version, prompt, tokens, model (with its identity,
    `model_identity(model)` unless given), settings, latent preview, versions."""
    def token_info(t: TokenizedPrompt) -> dict:
        return {"words": list(t.words), "tokens": list(t.tokens[: t.num_tokens]), "ids": list(t.ids[: t.num_tokens]),
                "word_ids": list(t.word_ids[: t.num_tokens]), "num_tokens": t.num_tokens,
                "truncated_text": t.truncated_text, "pad_token": t.tokens[-1], "pad_id": t.ids[-1]}

    vae = model.config.vae
    settings = run.settings
    return {
        "version": TRACE_VERSION, "mode": run.mode, "prompt": settings.prompt,
        "negative_prompt": settings.negative_prompt,
        "tokens": token_info(run.tokens), "negative_tokens": token_info(run.negative_tokens),
        "model": {"name": model.config.name, "source": model.source, "config": model.config.to_dict(),
                  "identity": identity or model_identity(model)},
        "settings": settings.as_dict(),
        "prediction_type": model.config.scheduler.prediction_type,  # what the U-Net output; traces hold ε̂ always
        "latent_scaling_factor": vae.scaling_factor,
        "latent_preview": None if vae.latent_rgb_factors is None else {
            key: value for key, value in vae.latent_preview().items() if value is not None},
        "versions": {"diffx": diffx.__version__, "torch": torch.__version__},
    }


def save_trace(trace: Trace, path: str | Path, force: bool = False) -> Path:
    """Write `trace` as one safetensors file; metadata goes into its JSON header."""
    tensors = {key: value.contiguous() for key, value in trace.tensors.items()}
    header = {"format": TRACE_FORMAT, "diffx_trace": json.dumps({"version": TRACE_VERSION, **trace.meta})}
    with atomic_output(path, force=force) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return Path(path)


def load_trace(path: str | Path) -> Trace:
    """Read a trace written by `save_trace`, checking its header, metadata and tensors first (one-line
    `TraceFileError`s, see `diffx.trace_checks`)."""
    path = Path(path)
    if not path.is_file():
        raise TraceFileError(f"trace file {path} does not exist; write one with `diffx trace --save-trace`")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises several kinds for a corrupt or foreign file
        raise TraceFileError(f"{path} is not a diffx trace ({error}); pass a file from --save-trace") from error
    return Trace(meta=check_trace_file(path, header, tensors), tensors=tensors)
