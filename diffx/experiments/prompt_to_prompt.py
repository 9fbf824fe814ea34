"""Prompt-to-prompt editing (Hertz et al. 2022): change the prompt, keep the picture, by giving the edited
run the source run's cross-attention maps.

The cross-attention probabilities M = softmax(Q K^T / √d) decide where each word's values go (Attention
= M V, sec. 3.1); with the same seed, the layout is largely fixed by the maps of the first steps. The
three edits of sec. 3.2, all with the source's seed, inject the source's maps for the first τ of the model
evaluations and let the edit run on its own maps afterwards:

- word swap ("a red circle" → "a red square"): every token takes the source token's map at its place;
  a word swapped for one of another token count spreads the source word's maps evenly over its tokens
  (the paper's code);
- refinement (adding words, "a circle" → "a red circle"): the tokens both prompts share take the source's
  maps, aligned token by token (`align_tokens`); new tokens keep their own maps;
- attention re-weighting: a word's injected map is multiplied by c (`reweight={"red": 2}`), which makes
  the word's effect stronger or weaker. diffx also scales the own maps of new words.

Optionally the self-attention probabilities too (`self_tau`, the paper's code): replaced by the source's
in the layers of at most 16 × 16 queries, where they hold the layout rather than the detail.

How it runs: the source once with an `AttentionRecorder`, the edit with an `AttentionInjector`, both in
`models.attention.edit_attention`. Both compute the probabilities of the same layers at the same steps
explicitly, so identical prompts give identical pictures, bit for bit. Only the conditional half of the
classifier-free guidance batch is edited (the last row), as in the paper's code; ε_u keeps its own maps.
Memory: the recorder keeps the conditional maps of the injected steps, in the model's dtype (SD1.5 at
512 px, τ = 0.6 of 50 steps: ~1 GB in fp16; the embedded model: ~5 MB).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from difflib import SequenceMatcher
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from diffx.errors import InvalidArgumentError
from diffx.experiments.sweeps import TRACE_RECORD_X0
from diffx.models.attention import AttentionLayer, attention_kinds, edit_attention
from diffx.models.tokenizer import CONTEXT_LENGTH, TokenizedPrompt
from diffx.models.unet import CrossAttention
from diffx.pipeline.conditioning import tokenize
from diffx.pipeline.denoiser import grid_for
from diffx.pipeline.observers import chain_callbacks
from diffx.pipeline.settings import GenerationSettings, ResolvedSettings, check_prompt, resolve_settings
from diffx.sampling.samplers import StepCallback, StepRecord
from diffx.trace.tracer import TracedGeneration, generate_traced

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

SELF_MAX_QUERIES = 16 * 16  # self-attention is injected only in layers of at most this many queries (the paper's code)
SCALE_RANGE = (0.0, 10.0)  # attention re-weighting factors c


@dataclass(frozen=True)
class TokenMap:
    """How the edit's cross-attention is made from the source's, token by token (77 positions each).

    Edit token j's injected map is Σ_i `matrix[i, j]` · (source token i's map); `inherited[j]` is 1 where
    token j takes that map and 0 where it keeps its own (a word only the edit has).
    """

    matrix: Tensor  # (77 source, 77 edit)
    inherited: Tensor  # (77,)
    kind: str  # "same", "swap" (words replaced, none added or removed) or "refine"


def align_tokens(source: TokenizedPrompt, target: TokenizedPrompt) -> TokenMap:
    """Align the edit's tokens with the source's: the longest common runs of tokens match one to one
    (difflib's Ratcliff–Obershelp matching, start and end tokens included); a replaced run of as many tokens
    matches one to one too, one of another length spreads evenly; inserted tokens keep their own maps.
    The end token's padding copies follow the end token (shifted by the change in length)."""
    tokens_s, tokens_t = source.tokens[: source.num_tokens], target.tokens[: target.num_tokens]
    matrix = torch.zeros(CONTEXT_LENGTH, CONTEXT_LENGTH)
    inherited = torch.zeros(CONTEXT_LENGTH)
    opcodes = SequenceMatcher(a=tokens_s, b=tokens_t, autojunk=False).get_opcodes()
    for tag, s0, s1, t0, t1 in opcodes:
        if tag == "equal" or (tag == "replace" and s1 - s0 == t1 - t0):
            matrix[range(s0, s1), range(t0, t1)] = 1.0
            inherited[t0:t1] = 1.0
        elif tag == "replace":  # the source run's total attention, shared evenly by the new tokens
            matrix[s0:s1, t0:t1] = 1.0 / (t1 - t0)
            inherited[t0:t1] = 1.0
    for j in range(target.num_tokens, CONTEXT_LENGTH):
        matrix[min(j - target.num_tokens + source.num_tokens, CONTEXT_LENGTH - 1), j] = 1.0
        inherited[j] = 1.0
    tags = {tag for tag, *_ in opcodes}
    kind = "same" if tags == {"equal"} else "refine" if tags & {"insert", "delete"} else "swap"
    return TokenMap(matrix, inherited, kind)


def word_scales(target: TokenizedPrompt, reweight: dict[str, float]) -> Tensor:
    """(77,) factors c per edit token: each named word's tokens get its factor, every other token 1."""
    scales = torch.ones(CONTEXT_LENGTH)
    for word, factor in reweight.items():
        if not SCALE_RANGE[0] <= factor <= SCALE_RANGE[1]:  # NaN fails this too
            raise InvalidArgumentError(f"re-weighting factor {factor:g} of {word!r} is outside "
                                       f"{SCALE_RANGE[0]:g}-{SCALE_RANGE[1]:g}; try e.g. {word}=2")
        indices = [i for i, w in enumerate(target.words) if w == word.lower()]
        if not indices:
            raise InvalidArgumentError(f"cannot re-weight {word!r}: the edit prompt's words are "
                                       f"{', '.join(target.words) or '(none)'}")
        for index in indices:
            scales[target.word_positions(index)] = factor
    return scales


class _StepWindow:
    """Which U-Net attention layers are edited at the current model evaluation: cross-attention for the
    first `cross_steps`, self-attention (layers of <= SELF_MAX_QUERIES queries) for the first `self_steps`.
    `advance` is the sampler's per-evaluation callback."""

    def __init__(self, cross_steps: int, self_steps: int):
        self.cross_steps, self.self_steps = cross_steps, self_steps
        self.step = 0

    def advance(self, record: StepRecord) -> None:
        self.step = record.index + 1

    def edits(self, layer: AttentionLayer, num_queries: int) -> bool:
        if not isinstance(layer, CrossAttention):  # the U-Net's layers only: not CLIP's, not the VAE's
            return False
        if layer.kind == "cross":
            return self.step < self.cross_steps
        return num_queries <= SELF_MAX_QUERIES and self.step < self.self_steps


class AttentionRecorder(_StepWindow):
    """The source run's editor: keeps the conditional row's probabilities of the edited layers, unchanged."""

    def __init__(self, cross_steps: int, self_steps: int, num_steps: int = 0, dtype: torch.dtype = torch.float32):
        super().__init__(cross_steps, self_steps)
        self.num_steps, self.dtype = num_steps, dtype  # num_steps: model evaluations of the whole run
        self.maps: dict[tuple[int, str], Tensor] = {}  # (evaluation, layer name) -> (heads, N_query, N_key)

    def edit(self, layer: AttentionLayer, probs: Tensor) -> Tensor:
        self.maps[self.step, layer.layer_name] = probs[-1].to(self.dtype)
        return probs


class AttentionInjector(_StepWindow):
    """The edit run's editor: the conditional row's probabilities replaced from the source's (same window)."""

    def __init__(self, source: AttentionRecorder, token_map: TokenMap, scales: Tensor):
        super().__init__(source.cross_steps, source.self_steps)
        self.source, self.token_map, self.scales = source, token_map, scales

    def edit(self, layer: AttentionLayer, probs: Tensor) -> Tensor:
        source = self.source.maps[self.step, layer.layer_name].to(probs)  # (heads, N_query, N_key)
        if layer.kind == "cross":
            matrix, inherited, scales = (x.to(probs) for x in (self.token_map.matrix, self.token_map.inherited,
                                                                self.scales))
            # (heads, N_query, 77 source) @ (77 source, 77 edit) -> (heads, N_query, 77 edit)
            mapped = source @ matrix
            injected = (inherited * mapped + (1 - inherited) * probs[-1]) * scales
        else:
            injected = source
        return torch.cat([probs[:-1], injected[None]])


@dataclass
class Edit:
    """What `prompt_to_prompt` makes: the three runs (x̂0 recorded at every step) and how they relate."""

    source: TracedGeneration  # the source prompt
    plain: TracedGeneration  # the edit prompt, same seed, no injection
    injected: TracedGeneration  # the edit prompt with the source's attention injected
    token_map: TokenMap
    scales: Tensor  # (77,) re-weighting factors of the edit's tokens
    tau: float
    self_tau: float
    cross_steps: int  # model evaluations with cross-attention injected
    self_steps: int
    num_steps: int  # model evaluations in each run


def check_fraction(name: str, value: float) -> float:
    """`value` if it is a fraction of the steps (0 to 1), else an error naming `name`."""
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise InvalidArgumentError(f"{name} is a fraction of the steps, from 0 to 1; got {value:g}")
    return value


def check_edit_prompt(target: str) -> str:
    """`target`, the edit prompt, unless it is only spaces or its word weights do not parse."""
    return check_prompt(target, "edit prompt", "leave --to out to edit the prompt itself")


def record_source(model: StableDiffusion, settings: GenerationSettings | ResolvedSettings, tau: float,
                  self_tau: float = 0.0, progress: StepCallback | None = None
                  ) -> tuple[TracedGeneration, AttentionRecorder]:
    """Run the source prompt, keeping its cross-attention for the first `tau` of the model evaluations
    (self-attention for the first `self_tau`)."""
    resolved = resolve_settings(model, settings)
    for name, value in (("tau", tau), ("self-attention tau", self_tau)):
        check_fraction(name, value)
    num_steps = len(grid_for(model, resolved).model_timesteps())
    recorder = AttentionRecorder(math.floor(tau * num_steps), math.floor(self_tau * num_steps), num_steps,
                                 model.dtype)
    return _run(model, resolved, recorder, progress), recorder


def inject(model: StableDiffusion, settings: GenerationSettings | ResolvedSettings, recorder: AttentionRecorder,
           token_map: TokenMap, scales: Tensor, progress: StepCallback | None = None) -> TracedGeneration:
    """Run `settings.prompt` with `recorder`'s attention injected through `token_map`, re-weighted by `scales`."""
    return _run(model, settings, AttentionInjector(recorder, token_map, scales), progress)


def _run(model: StableDiffusion, settings: GenerationSettings | ResolvedSettings, window: _StepWindow | None,
         progress: StepCallback | None) -> TracedGeneration:
    """One traced generation (x̂0 at every step) with `window` editing the attention, if any."""
    step = chain_callbacks(window.advance if window is not None else None, progress)
    with edit_attention(window) if window is not None else contextlib.nullcontext():
        return generate_traced(model, settings, options=TRACE_RECORD_X0, progress=step)


def prompt_to_prompt(model: StableDiffusion, settings: GenerationSettings | ResolvedSettings,
                     target: str | None = None, *, tau: float = 0.6, self_tau: float = 0.0,
                     reweight: dict[str, float] | None = None, progress: StepCallback | None = None) -> Edit:
    """Edit `settings.prompt` into `target` (None: the same prompt, e.g. only re-weighting) with the source's
    seed: runs the source, the edit without injection and the edit with the source's cross-attention for
    the first `tau` of the model evaluations (and self-attention for the first `self_tau`).
    `reweight`: word of the edit prompt -> factor c on its injected maps. Everything is checked first."""
    if "cross" not in attention_kinds(model.modules().values()):
        raise InvalidArgumentError(f"prompt-to-prompt injects cross-attention maps; {model.config.name} attends "
                                   "jointly (SD3's MMDiT), which diffx does not edit yet: use an SD 1.x/2.x/SDXL model")
    settings = resolve_settings(model, settings)  # once: the three runs share it
    target = settings.prompt if target is None else check_edit_prompt(target)
    for name, value in (("tau", tau), ("self-attention tau", self_tau)):
        check_fraction(name, value)
    target_tokens = tokenize(model, target, "edit prompt")
    token_map = align_tokens(tokenize(model, settings.prompt), target_tokens)
    scales = word_scales(target_tokens, reweight or {})
    edited = replace(settings, prompt=target)
    source, recorder = record_source(model, settings, tau, self_tau, progress)
    plain = _run(model, edited, None, progress)
    injected = inject(model, edited, recorder, token_map, scales, progress)
    return Edit(source, plain, injected, token_map, scales, tau, self_tau, recorder.cross_steps, recorder.self_steps,
                recorder.num_steps)
