"""The joint-attention explorer: SD3's one attention over image and text tokens, cut into its four quadrants.

In a U-Net, text enters only through cross-attention (image queries, text keys). SD3's MMDiT (Esser et al. 2024,
fig. 2b) concatenates the image tokens and the text tokens and lets every token attend to every other, so one
(N_img + N_txt)² matrix holds four kinds of attention:

    image→image   each patch looks at other patches     (what a U-Net's self-attention does)
    image→text    each patch reads the words            (what a U-Net's cross-attention does; DAAM's word maps)
    text→image    each word reads the picture           (no U-Net has this: the words are updated by the image)
    text→text     the words read each other             (as in a text encoder, but now at every step)

The tracer records, per joint block and step, the share of the attention mass in each quadrant (each query's row
sums to 1: an image query splits its attention between image and text keys, a text query too), and per step the
words' maps both ways. This view draws the shares as block × step heatmaps, and for one step each word's
image→text map (where the word is read) beside its text→image map (what the word reads back).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from diffx.errors import InvalidArgumentError
from diffx.files import check_outputs, companion_path
from diffx.render import caption_bar, make_grid
from diffx.render.colormap import colorbar, heatmap
from diffx.render.grid import legend_bar
from diffx.render.image import upscale
from diffx.render.io import save_png
from diffx.trace.record import Trace
from diffx.views.attention import EXPLORER_PANEL, check_step, token_rows
from diffx.views.steps import prompt_title, resolve_preview

if TYPE_CHECKING:
    from diffx.models.sd3 import StableDiffusion3

QUADRANT_PANEL = 200  # pixels wide per quadrant: room for its title
QUADRANTS = ("image→image", "image→text", "text→image", "text→text")
WORDS_NOTE = ("% under image→text: the patches' mean share of attention on the word; under text→image: the "
              "share of the word's attention on the picture; a word = the mean of its BPE tokens")
QUADRANT_NOTES = ("patches attend to patches", "patches read the words", "words read the picture",
                  "words read each other")


def check_joint(trace: Trace) -> None:
    """One line if `trace` holds no joint attention (not an SD3 trace, or recorded without it)."""
    if "joint_attention" not in trace.tensors:
        raise InvalidArgumentError("the trace holds no joint attention: it comes from a model with cross-attention "
                                   "(a U-Net) or was recorded without it; trace an SD3 model with `diffx trace`")


def quadrant_shares(trace: Trace) -> np.ndarray:
    """(4, blocks, steps): each quadrant's share of its queries' attention, per joint block and step."""
    check_joint(trace)
    shares = trace.tensors["joint_attention"].float().numpy()  # (steps, blocks, 4)
    return shares.transpose(2, 1, 0)


def quadrant_heatmaps(trace: Trace, panel: int = EXPLORER_PANEL) -> Image.Image:
    """Four block × step heatmaps (rows: joint blocks first to last, top to bottom; columns: steps, first to
    last), coloured 0 to 1 on one scale, each titled with its quadrant and its mean share."""
    shares = quadrant_shares(trace)
    blocks, steps = shares.shape[1:]
    panel = max(panel, QUADRANT_PANEL)
    size = (panel, max(panel // 2, round(panel * blocks / max(steps, 1))))
    cells = [upscale(heatmap(quadrant, vmin=0.0, vmax=1.0), size) for quadrant in shares]
    labels = [f"{name}: {note} (mean {100 * float(q.mean()):.0f}%)"
              for name, note, q in zip(QUADRANTS, QUADRANT_NOTES, shares, strict=True)]
    grid = make_grid([cells], cell_labels=[labels], cell_size=size,
                     title=f"{prompt_title(trace)} · joint attention: where each kind of query sends its attention")
    under = caption_bar(grid, f"rows: {blocks} joint blocks (first on top) · columns: {steps} steps (first at left)")
    return legend_bar(under, colorbar(64, 8), "0%", "100%", "an image query's 100% splits over the first two, "
                                                            "a text query's over the last two")


def word_directions(trace: Trace, step: int | None = None, panel: int = EXPLORER_PANEL, preview: str = "auto",
                    model: StableDiffusion3 | None = None) -> Image.Image:
    """Each word both ways at the 1-based `step` (None: the mean over the steps): its image→text map (the patches
    that read it; DAAM's map) and its text→image map (the patches it reads), over that step's x̂0."""
    check_joint(trace)
    index = check_step(trace, step)
    tensors = trace.tensors
    if "attention" not in tensors:
        raise InvalidArgumentError("the trace holds no word maps; record it with attention (diffx trace does)")

    def at(key: str):
        return tensors[key].float().mean(0) if index is None else tensors[key][index].float()

    rows = [("image→text: the patches that read each word", at("attention"), index),
            ("text→image: the patches each word reads", at("text_to_image"), index)]
    when = "the mean over the steps" if index is None else f"step {index + 1}"
    return token_rows(trace, rows, f"{prompt_title(trace)} · each word both ways, {when}", panel, preview, model,
                      padding=False, shares=[lambda m: float(m.mean()), lambda m: float(m.sum())], note=WORDS_NOTE)


def write_joint_views(trace: Trace, out: str | os.PathLike, step: int | None = None, force: bool = False,
                      preview: str = "auto", model: StableDiffusion3 | None = None) -> list[Path]:
    """Write the explorer: `out` the quadrant heatmaps, `<out>_words.png` the words both ways; every argument
    is checked before any work. Returns the paths written."""
    check_joint(trace)
    check_step(trace, step)
    words = companion_path(out, "words")
    check_outputs([words], force, picture=Path(out))
    preview = resolve_preview(preview, trace, model)
    pictures = {Path(out): quadrant_heatmaps(trace), words: word_directions(trace, step, preview=preview,
                                                                           model=model)}
    return [save_png(picture, path, force) for path, picture in pictures.items()]

