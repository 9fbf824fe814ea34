"""The attention explorer: cross-attention per layer, per head and per step beside the DAAM aggregate,
and self-attention (where one pixel looks; the principal components), from a trace recorded with
`explorer_options()` (`diffx attention` writes these pictures).

Layers are named by their place in the U-Net and their grid: "down.0 64×64" is the first cross-attention
of the encoder, "mid 8×8" the bottleneck's, "up.8 64×64" the decoder's last. Each layer's map is the mean
over its heads, drawn at its own resolution with one square per grid cell; the aggregate is DAAM's
(Tang et al. 2023): every layer upsampled (bicubic) to the largest grid and averaged.

Under the maps, in grey: at one step (a row of `steps_grid`, `--step`), that step's own x̂0 — what the network
predicts then, so at t = 999 the objects have not appeared yet — drawn with the chosen `preview` (a VAE decode
or the latent preview, `views.steps.resolve_preview`); for the mean over all steps, the final image.

Columns: the start token, each prompt word, the end token and the padding. A word of several BPE tokens
is the mean of its tokens' maps (DAAM's rule). Under each panel: the token's share of the attention mass
(the mean of its map over the query pixels; each pixel's 77 weights sum to 1). Most of the mass goes
to the start token and the padding — positions that carry no word; a word's map is bright where it
wins the pixel, even when its share is a few percent. The padding column is 1 − Σ over the K kept
positions: the 77 − K padding positions are not stored (`Trace.token_columns`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from torch import Tensor

from diffx.errors import InvalidArgumentError, elide
from diffx.files import check_outputs, companion_path
from diffx.models.attention import AttentionLayer
from diffx.pipeline.denoiser import grid_for
from diffx.render import caption_bar, make_grid, normalize_maps, overlay, save_png, upscale
from diffx.render.attention import (
    component_grey,
    components_rgb,
    grid_heat,
    mark_pixel,
    self_attention_components,
)
from diffx.render.grid import TITLE_SCALE, font_size_for
from diffx.trace.attention import layer_labels
from diffx.trace.record import Trace
from diffx.trace.tracer import DEFAULT_RECORD, TraceOptions
from diffx.views.steps import (
    ATTENTION_ALPHA,
    attention_legend,
    fit_panel,
    format_timestep,
    prompt_title,
    resolve_preview,
    step_indices,
    x0_panels,
)

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion
    from diffx.pipeline.settings import ResolvedSettings

EXPLORER_PANEL = 128  # pixels per panel: grids of 10+ layers × 10+ tokens stay readable on a screen
PADDING_NOTE = ("% = the token's share of the attention mass; ⟨padding⟩ = 1 − Σ of the kept tokens: "
                "what the unused positions draw; a word = the mean of its BPE tokens")


def explorer_options(heads: bool = False) -> TraceOptions:
    """What the explorer records: the default trace, every layer's cross-attention (every head's too
    when `heads`) and the self-attention maps of the 16×16 layers."""
    return TraceOptions(record=(*DEFAULT_RECORD, "self_attention_maps"),
                        attention_detail="heads" if heads else "layers")


def layer_title(trace: Trace, layer: int | None) -> str:
    """"down.0 16×16" for a recorded layer, "aggregate (DAAM) 16×16" for None."""
    if layer is None:
        rows, cols = trace.tensors["attention"].shape[-2:]
        return f"aggregate (DAAM) {rows}×{cols}"
    info = trace.attention_layers[layer]
    return f"{info['label']} {info['grid'][0]}×{info['grid'][1]}"


def step_title(trace: Trace, step: int | None) -> str:
    """"step 3/25 · t=921" for a 0-based step, "mean over all 25 steps" for None."""
    if step is None:
        return f"mean over all {trace.num_steps} steps"
    return f"step {step + 1}/{trace.num_steps} · t={format_timestep(float(trace.tensors['timesteps'][step]))}"


def check_step(trace: Trace, step: int | None) -> int | None:
    """A 1-based step number (or None = all steps) → the 0-based index, refused when out of range."""
    return None if step is None else step_indices(trace.num_steps, [step])[0]


def backgrounds(trace: Trace, steps: Sequence[int | None], size: tuple[int, int], preview: str = "auto",
                model: StableDiffusion | None = None) -> tuple[list[np.ndarray], str]:
    """The pictures under attention maps, at panel `size`: for each 0-based step its own x̂0 (`preview`: auto,
    fast or vae, as `views.steps.x0_pictures`), for None (a mean over all steps) the final image; and the x̂0
    label ("x̂0 (VAE decode)", "x̂0 (latent preview)"; "" when every step is None)."""
    if "image" not in trace.tensors:
        raise InvalidArgumentError("the trace has no final image to draw attention over; record a full trace")
    indices = sorted({step for step in steps if step is not None})
    x0, x0_label = x0_panels(trace, indices, preview, model, size) if indices else ([], "")
    final = fit_panel(trace.tensors["image"].numpy(), size, smooth=True)
    return [final if step is None else x0[indices.index(step)] for step in steps], x0_label


def _under(steps: Sequence[int | None], x0_label: str) -> str:
    """What the rows' maps are drawn over, for a caption."""
    if all(step is None for step in steps):
        return "maps over the final image, in grey"
    if len(set(steps)) == 1:
        return f"maps over that step's {x0_label}, in grey"
    return f"maps over each row's own step's {x0_label}, in grey"


def token_rows(trace: Trace, rows: Sequence[tuple[str, Tensor, int | None]], title: str, panel: int = EXPLORER_PANEL,
               preview: str = "auto", model: StableDiffusion | None = None, padding: bool = True,
               shares: Sequence[Callable[[Tensor], float]] | None = None, note: str = PADDING_NOTE) -> Image.Image:
    """A grid of token-column panels: one row per (label, (K, r, c) maps, 0-based step or None for a mean over
    the steps), columns from `Trace.token_columns` (without the padding column unless `padding`); each map
    stretched to its own maximum over, in grey, the row's step's x̂0 (with `preview`) or the final image
    (`backgrounds`; a caption says which). Under each panel its share in percent: per row `shares[i](map)`, by
    default the map's mean (the token's share of the attention mass); `note` says what the percentages mean."""
    size = (panel, panel)
    steps = [step for _, _, step in rows]
    pictures, x0_label = backgrounds(trace, steps, size, preview, model)
    shares = shares or [lambda m: float(m.mean())] * len(rows)
    cells, cell_labels, labels = [], [], []
    for (_, maps, _), picture, share in zip(rows, pictures, shares, strict=True):
        labels, columns = trace.token_columns(maps)
        if not padding:
            labels, columns = labels[:-1], columns[:-1]
        shown = normalize_maps(columns, "word")  # (columns, r, c) in [0, 1]
        cells.append([overlay(picture, grid_heat(m, size), ATTENTION_ALPHA, grey=True) for m in shown])
        cell_labels.append([f"{100 * share(m):.1f}%" for m in columns])
    grid = make_grid(cells, row_labels=[label for label, _, _ in rows], col_labels=labels, cell_labels=cell_labels,
                     title=title, cell_size=size)
    under = caption_bar(grid, _under(steps, x0_label), font_size=round(TITLE_SCALE * font_size_for(*size)))
    return attention_legend(caption_bar(under, note), "word")


def layer_grid(trace: Trace, step: int | None = None, panel: int = EXPLORER_PANEL, preview: str = "auto",
               model: StableDiffusion | None = None) -> Image.Image:
    """Rows: the DAAM aggregate, then every recorded layer in U-Net order ("down.0 16×16" …); columns:
    start, words, end, padding. `step`: 1-based (the maps over that step's x̂0, drawn with `preview`), or
    None = the mean over all steps (over the final image)."""
    index = check_step(trace, step)
    rows = [(layer_title(trace, None), trace.token_maps(index), index)]
    rows += [(layer_title(trace, i), trace.token_maps(index, i), index) for i in range(len(trace.attention_layers))]
    if len(rows) == 1:
        trace.layer_index(0)  # says how to record per-layer maps
    title = f"{prompt_title(trace)}: cross-attention per layer (mean over heads), {step_title(trace, index)}"
    return token_rows(trace, rows, title, panel, preview, model)


def head_grid(trace: Trace, layer: str | int, step: int | None = None, panel: int = EXPLORER_PANEL,
              preview: str = "auto", model: StableDiffusion | None = None) -> Image.Image:
    """One layer's heads (rows: their mean, then head 1 … H) × token columns, at `step` (1-based; over its
    x̂0) or the mean over all steps (over the final image)."""
    index, which = check_step(trace, step), trace.layer_index(layer)
    heads = trace.attention_layers[which]["heads"]
    rows = [(f"{layer_title(trace, which)} mean of {heads} heads", trace.token_maps(index, which), index)]
    rows += [(f"head {h + 1}", trace.token_maps(index, which, h), index) for h in range(heads)]
    title = f"{prompt_title(trace)}: layer {layer_title(trace, which)} per head, {step_title(trace, index)}"
    return token_rows(trace, rows, title, panel, preview, model)


def steps_grid(trace: Trace, layer: str | int | None = None, steps: Sequence[int] | None = None,
               panel: int = EXPLORER_PANEL, preview: str = "auto", model: StableDiffusion | None = None
               ) -> Image.Image:
    """One layer (None = the aggregate) over the steps (rows; default 8 spread over the run) × token columns,
    each row over its own step's x̂0 (`preview`): at t = 999 the objects have not formed yet."""
    which = None if layer is None else trace.layer_index(layer)
    rows = [(step_title(trace, i), trace.token_maps(i, which), i) for i in step_indices(trace.num_steps, steps)]
    title = f"{prompt_title(trace)}: {layer_title(trace, which)} over the denoising steps"
    return token_rows(trace, rows, title, panel, preview, model)


def check_new_run(model: StableDiffusion, settings: ResolvedSettings, layer: str | int | None,
                  pixel: tuple[int, int] | None, step: int | None = None) -> None:
    """`layer`, `pixel` and `step` (1-based) of an explorer run checked against the model's cross-attention layers,
    the picture's size and the run's model evaluations before the generation runs (a typo must not cost a run)."""
    names = [module.layer_name for part in model.modules().values() for module in part.modules()
             if isinstance(module, AttentionLayer) and module.kind == "cross"]
    labels = layer_labels(names)
    if layer is not None and str(layer) not in {*labels, *names, *map(str, range(len(names)))}:
        raise InvalidArgumentError(f"unknown layer {elide(str(layer), 30)}; choose one of: {', '.join(labels)}")
    if pixel is not None and not (0 <= pixel[0] < settings.width and 0 <= pixel[1] < settings.height):
        raise InvalidArgumentError(f"pixel {pixel} is outside the {settings.width}×{settings.height} picture; "
                                   f"pick x in 0…{settings.width - 1} and y in 0…{settings.height - 1}")
    if step is not None:
        step_indices(len(grid_for(model, settings).model_timesteps()), [step])  # the trace's steps: one per evaluation


def check_pixel(trace: Trace, pixel: tuple[int, int] | None) -> tuple[int, int]:
    """(x, y) in the final image's pixels, default its centre; refused outside the picture."""
    height, width = trace.tensors["image"].shape[:2]
    if pixel is None:
        return width // 2, height // 2
    x, y = pixel
    if not (0 <= x < width and 0 <= y < height):
        raise InvalidArgumentError(f"pixel ({x}, {y}) is outside the {width}×{height} picture; "
                                   f"pick x in 0…{width - 1} and y in 0…{height - 1}")
    return x, y


def self_attention_view(trace: Trace, pixel: tuple[int, int] | None = None, step: int | None = None,
                        panel: int = 192, preview: str = "auto", model: StableDiffusion | None = None
                        ) -> Image.Image:
    """Where one pixel looks and what self-attention groups: the picture with the query pixel marked,
    its self-attention row as a heatmap over the picture in grey, the first three principal components
    as one RGB picture and each one in grey (prompt-to-prompt notebook style). `pixel`: (x, y) in the
    final image (default: the centre); `step`: 1-based (the picture is that step's x̂0, drawn with `preview`),
    or None = the mean over all steps (the picture is the final image)."""
    if "self_attention_maps" not in trace.tensors:
        raise InvalidArgumentError("the trace has no self_attention_maps; record them with "
                                   "TraceOptions(record=(..., 'self_attention_maps')) or `diffx attention`")
    index = check_step(trace, step)
    x, y = check_pixel(trace, pixel)
    rows, cols = trace.meta["self_attention_grid"]
    maps = trace.tensors["self_attention_maps"].float()
    matrix = maps.mean(0) if index is None else maps[index]  # (N, N)
    height, width = trace.tensors["image"].shape[:2]
    query = (y * rows // height) * cols + x * cols // width  # the grid cell holding the pixel
    size = (panel, round(panel * height / width))
    (picture,), x0_label = backgrounds(trace, [index], size, preview, model)
    where = (x + 0.5) / width, (y + 0.5) / height
    row = normalize_maps(matrix[query].reshape(1, rows, cols), "word")[0]
    components, shares = self_attention_components(matrix, rows, cols)
    panels = [(mark_pixel(picture, *where), f"{x0_label or 'final image'}, query pixel ({x}, {y})"),
              (mark_pixel(overlay(picture, grid_heat(row, size), ATTENTION_ALPHA, grey=True), *where),
               f"where ({x}, {y}) looks: its {rows}×{cols} row, own max")]
    if len(components) == 3:
        panels.append((upscale(components_rgb(components), size), "RGB = PC1, PC2, PC3 (each own range)"))
    panels += [(upscale(component_grey(c), size), f"PC{i + 1}: {100 * share:.0f}% of variance, black→white")
               for i, (c, share) in enumerate(zip(components, shares, strict=True))]
    title = (f"{prompt_title(trace)}: self-attention at the {rows}×{cols} layers (mean over heads and layers), "
             f"{step_title(trace, index)}")
    return make_grid([[picture for picture, _ in panels]], cell_labels=[[label for _, label in panels]], title=title,
                     cell_size=size)


def write_attention_views(trace: Trace, out: str | os.PathLike, layer: str | int | None = None,
                          step: int | None = None, pixel: tuple[int, int] | None = None,
                          force: bool = False, preview: str = "auto", model: StableDiffusion | None = None
                          ) -> list[Path]:
    """Write the explorer's pictures of `trace` and return their paths:
    `out` the layer grid (`layer_grid`), `<out>_steps.png` the chosen `layer` (default: the aggregate)
    over the steps, `<out>_heads.png` that layer's heads when the trace holds them (default layer: the
    first of the largest grid), `<out>_self.png` the self-attention view when recorded. `step` (1-based)
    and `pixel` as in `layer_grid` and `self_attention_view`; a step's maps lie over its x̂0, drawn with
    `preview` (auto, fast or vae; `model` decodes what the trace did not store). Every argument is checked
    before any work."""
    if not trace.attention_layers:
        raise InvalidArgumentError("the trace holds no per-layer attention maps (`diffx trace` keeps the aggregate "
                                   "only); record one with `diffx attention --save-trace`")
    check_step(trace, step)
    which = None if layer is None else trace.layer_index(layer)
    has_heads = any(key.startswith("head_attention.") for key in trace.tensors)
    has_self = "self_attention_maps" in trace.tensors
    if has_self:
        check_pixel(trace, pixel)
    heads_layer = which if which is not None else _largest_layer(trace)
    paths = {"grid": Path(out), "steps": companion_path(out, "steps"),
             "heads": companion_path(out, "heads") if has_heads else None,
             "self": companion_path(out, "self") if has_self else None}
    check_outputs([paths["steps"], paths["heads"], paths["self"]], force, picture=paths["grid"])
    preview = resolve_preview(preview, trace, model)
    pictures = {"grid": layer_grid(trace, step, preview=preview, model=model),
                "steps": steps_grid(trace, which, preview=preview, model=model)}
    if has_heads:
        pictures["heads"] = head_grid(trace, heads_layer, step, preview=preview, model=model)
    if has_self:
        pictures["self"] = self_attention_view(trace, pixel, step, preview=preview, model=model)
    return [save_png(picture, paths[key], force) for key, picture in pictures.items()]


def _largest_layer(trace: Trace) -> int:
    """The first recorded layer with the finest grid (the encoder's first at full latent resolution)."""
    sides = [info["grid"][0] for info in trace.attention_layers]
    return sides.index(max(sides))


def mass_shares(trace: Trace, layer: int | None = None) -> dict[str, float]:
    """Where one layer's (None: the aggregate's) attention mass goes, over all steps: the shares of the
    start token, the words together, the end token and the padding (they sum to 1)."""
    kept = trace.token_maps(None, layer).mean((1, 2))  # (K,): each position's share
    padding = float((1 - trace.token_maps(None, layer).sum(0)).clamp_min(0).mean())
    return {"start": float(kept[0]), "words": float(kept[1:-1].sum()), "end": float(kept[-1]), "padding": padding}

