"""The record of one traced image and its file: `Trace` (typed settings and tokens, the per-step tensors, the
rest of the metadata), `trace_meta` (that rest, for a model and a run), `save_trace` / `load_trace`.

Tokens: the maps keep the K = `num_tokens` positions the prompt uses (start, the prompt's tokens, end);
the 77 − K padding positions are not stored, their share is 1 − Σ over the K maps, since every query's
attention row sums to 1 (`Trace.token_columns`). A word of several BPE tokens gets the mean of its
tokens' maps (DAAM's rule).

A trace is saved as one safetensors file: the tensors plus a JSON header (format `TRACE_FORMAT`). The header's
metadata holds the settings as JSON (JSON keeps str, int, float and bool apart, so they read back as written),
the prompts, and each prompt's tokens as a token dict: its `TokenizedPrompt` fields over the K kept positions
(`words`, `tokens`, `ids`, `word_ids`, `num_tokens`, `truncated_text`, `truncated_tokens`, and `prompt`, the
text the tokenizer read: brackets of word weights removed) plus the pad token and id that fill the other
77 − K. `load_trace` rebuilds the whole 77-position `TokenizedPrompt` from that, so a trace's tokens answer
like the tokenizer's own (`word_positions`, the padding at `tokens[-1]`). Files written before a field was
recorded fill it in: no pad token → the end token (SD1.x pads with it); no `prompt` → the prompt as written;
no `truncated_tokens` → none (the cut text is still in `truncated_text`).

The metadata also records the model that made the trace (`checks.model_identity`), and `load_trace` checks
the header, the metadata schema and every tensor's shape before anything reads them (`diffx.trace.checks`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save, save_file
from torch import Tensor

import diffx
from diffx.errors import InvalidArgumentError, TraceFileError
from diffx.files import atomic_output
from diffx.models.tokenizer import CONTEXT_LENGTH, TokenizedPrompt
from diffx.pipeline.codec import decode_latents
from diffx.pipeline.families import family_of
from diffx.pipeline.observers import ImageRun
from diffx.pipeline.settings import ResolvedSettings
from diffx.trace.attention import merge_words
from diffx.trace.checks import TRACE_FORMAT, TRACE_VERSION, check_trace_file, model_identity, model_mismatch

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

# What a trace file's metadata holds as JSON and a `Trace` as typed attributes (`settings`, `tokens`, ...).
TYPED_FIELDS = ("prompt", "negative_prompt", "tokens", "negative_tokens", "settings")


@dataclass
class Trace:
    """Everything recorded for one image: its settings and tokens, per-step tensors (first axis = step) and
    the rest of the metadata.

    `settings`: the run's `ResolvedSettings` (the prompts are `settings.prompt` / `.negative_prompt`).
    `tokens`, `negative_tokens`: the `TokenizedPrompt`s the text encoder read, all 77 positions (a fresh trace
    holds the pipeline's `WeightedPrompt`s; a file keeps their `TokenizedPrompt` part).
    `meta`: what is not typed — "version", "mode", "model" ({"name", "source", "config", "identity"}),
    "prediction_type", "latent_scaling_factor", "latent_preview", "versions"; with per-layer detail
    "attention_layers", with self-attention maps "self_attention_grid".
    Tensors (S = model evaluations, h×w = latent grid, K = prompt tokens incl. start/end):
      timesteps, sigmas (σ = √((1−ᾱ)/ᾱ)), alphas_cumprod (S,); latents (S, 4, h, w) the model input x_t;
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

    settings: ResolvedSettings
    tokens: TokenizedPrompt
    negative_tokens: TokenizedPrompt
    meta: dict = field(default_factory=dict)
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
        return list(self.tokens.words)

    def word_maps(self, step: int, negative: bool = False) -> Tensor:
        """(words, a, a') attention maps per word at one step: the mean over the word's tokens."""
        key = "negative_attention" if negative else "attention"
        return merge_words(self.tensors[key][step].float(), self.negative_tokens if negative else self.tokens)

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
        count = self.tokens.num_tokens
        padding = (1 - maps.sum(0)).clamp_min(0)  # (r, c)
        labels = ["⟨start⟩", *(f"“{word}”" for word in self.tokens.words), "⟨end⟩",
                  f"⟨padding ×{CONTEXT_LENGTH - count}⟩"]
        return labels, torch.cat([maps[:1], merge_words(maps, self.tokens), maps[count - 1:count], padding[None]])

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


def trace_meta(model: StableDiffusion, run: ImageRun, identity: dict | None = None) -> dict:
    """The untyped metadata of one image's trace (`Trace.meta`): format version, mode, model (with its identity,
    `model_identity(model)` unless given), prediction type, latent scaling and preview, versions."""
    vae = model.config.vae
    return {
        "version": TRACE_VERSION, "mode": run.mode,
        "model": {"name": model.config.name, "source": model.source, "config": model.config.to_dict(),
                  "identity": identity or model_identity(model)},
        # what the network predicts (its family's parameterization); traces hold ε̂ always
        "prediction_type": family_of(model).parameterization(model).name,
        "latent_scaling_factor": vae.scaling_factor,
        "latent_preview": None if vae.latent_rgb_factors is None else {
            key: value for key, value in vae.latent_preview().items() if value is not None},
        "versions": {"diffx": diffx.__version__, "torch": torch.__version__},
    }


def token_dict(tokens: TokenizedPrompt) -> dict:
    """A prompt's tokens as a trace file keeps them: the K kept positions, the pad token and id (module docstring)."""
    count = tokens.num_tokens
    return {"words": list(tokens.words), "tokens": list(tokens.tokens[:count]), "ids": list(tokens.ids[:count]),
            "word_ids": list(tokens.word_ids[:count]), "num_tokens": count, "truncated_text": tokens.truncated_text,
            "pad_token": tokens.tokens[-1], "pad_id": tokens.ids[-1], "prompt": tokens.prompt,
            "truncated_tokens": list(tokens.truncated_tokens)}


def tokens_from_dict(record: dict, written: str) -> TokenizedPrompt:
    """The 77-position `TokenizedPrompt` a (checked) token dict was written from; `written` is the prompt as
    written, the text when the dict does not say what the tokenizer read (module docstring)."""
    count = record["num_tokens"]
    padding = CONTEXT_LENGTH - count
    return TokenizedPrompt(
        prompt=record.get("prompt", written),
        ids=[*record["ids"], *[record.get("pad_id", record["ids"][-1])] * padding],
        tokens=[*record["tokens"], *[record.get("pad_token", record["tokens"][-1])] * padding],
        word_ids=[*record["word_ids"], *[None] * padding],
        words=list(record["words"]),
        num_tokens=count,
        truncated_tokens=list(record.get("truncated_tokens", [])),
        truncated_text=record.get("truncated_text", ""),
    )


def _file_parts(trace: Trace) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and the header of `trace`'s file: metadata (settings and tokens as JSON) goes into the header."""
    tensors = {key: value.contiguous() for key, value in trace.tensors.items()}
    settings = trace.settings
    meta = {**trace.meta, "version": TRACE_VERSION, "prompt": settings.prompt,
            "negative_prompt": settings.negative_prompt, "tokens": token_dict(trace.tokens),
            "negative_tokens": token_dict(trace.negative_tokens), "settings": settings.as_dict()}
    return tensors, {"format": TRACE_FORMAT, "diffx_trace": json.dumps(meta)}


def save_trace(trace: Trace, path: str | Path, force: bool = False) -> Path:
    """Write `trace` as one safetensors file; metadata (settings and tokens as JSON) goes into its header."""
    tensors, header = _file_parts(trace)
    with atomic_output(path, force=force) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return Path(path)


def trace_bytes(trace: Trace) -> bytes:
    """The bytes `save_trace` would write (a download made in memory, e.g. by `diffx.studio`)."""
    tensors, header = _file_parts(trace)
    return save(tensors, metadata=header)


def load_trace(path: str | Path) -> Trace:
    """Read a trace written by `save_trace`, checking its header, metadata and tensors first (one-line
    `TraceFileError`s, see `diffx.trace.checks`); settings and tokens come back typed."""
    path = Path(path)
    if not path.is_file():
        raise TraceFileError(f"trace file {path} does not exist; write one with `diffx trace --save-trace`")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises several kinds for a corrupt or foreign file
        raise TraceFileError(f"{path} is not a diffx trace ({error}); pass a file from --save-trace") from error
    meta = check_trace_file(path, header, tensors)
    return Trace(settings=ResolvedSettings(**meta["settings"]),
                 tokens=tokens_from_dict(meta["tokens"], meta["prompt"]),
                 negative_tokens=tokens_from_dict(meta["negative_tokens"], meta["negative_prompt"] or ""),
                 meta={key: value for key, value in meta.items() if key not in TYPED_FIELDS}, tensors=tensors)
