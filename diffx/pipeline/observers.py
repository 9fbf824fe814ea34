"""The one observer API: who listens to a generation, and how listeners are chained.

`generate`, `invert`/`reconstruct`, prompt-to-prompt and the embedded model's evaluation all take the same
`observe` factory: called with an `ImageRun` before each image, it returns the `Observer` that listens to that
image. Observers never change a number; the tracer in `diffx.trace` is one, a progress bar another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from diffx.models.attention import AttentionObserver
from diffx.models.tokenizer import TokenizedPrompt
from diffx.pipeline.settings import ResolvedSettings
from diffx.sampling.samplers import StepCallback, StepRecord


@dataclass(frozen=True)
class ImageRun:
    """What an observer of one image's generation is told before its first step."""

    index: int  # which of the images
    settings: ResolvedSettings  # with this image's prompt and seed
    mode: str  # "text2img", "img2img", "inpaint", "invert" or "reconstruct"
    tokens: TokenizedPrompt
    negative_tokens: TokenizedPrompt
    latent_shape: tuple[int, int, int, int]  # (1, C, h, w) of the sampler's state
    # (rows, cols) of a transformer's image tokens, the image part of its joint attention (families.token_grid)
    token_grid: tuple[int, int] | None = None


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


Observe = Callable[[ImageRun], Observer]  # the factory every entry point takes


def chain_callbacks(*callbacks: StepCallback | None) -> StepCallback:
    """One per-step callback that calls each of `callbacks` (None skipped) in order."""
    present = [callback for callback in callbacks if callback is not None]

    def each(record: StepRecord) -> None:
        for callback in present:
            callback(record)

    return each
