"""Views of diffusion: the pictures and animations that show what happens at every step.

Each view turns recorded data (a `Trace`, generations, an input image) into PIL images, or into lists
of equal-size frames for a GIF; `save_animation` and `write_trace_views` write them through the atomic
writers of `diffx.render.io`. The `diffx` command line is a thin layer over these functions.

Step numbers here are the ones shown in captions: 1 = the first step, N = the last ("step 3/25").
Every panel says what it shows. x̂0 is either a real VAE decode ("x̂0 (VAE decode)") or the fast latent
preview ("x̂0 (latent preview)", `latent_to_rgb_fast`: a per-latent-pixel map fitted to the VAE);
`preview="auto"` decodes whenever the model's decoder is cheap (`AUTO_DECODE_GFLOPS`, counted by
`pipeline.decoder_gflops`). x_t is drawn as the mixture it is, √ᾱ x̂0 + √(1 − ᾱ) ε̂, scaled so the picture
emerges from the noise (`render.latents.noisy_picture`). Pictures are scaled smoothly, latent grids (ε̂) with
visible squares. Attention is a perceptual colour map over the picture in grey, with a colour bar saying what
the scale is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from diffx.errors import InvalidArgumentError, check_choice
from diffx.files import check_outputs, companion_path
from diffx.images import image_to_tensor
from diffx.pipeline.codec import decode_tiny, decoder_gflops
from diffx.render import (
    caption_bar,
    colorbar,
    latent_to_rgb_fast,
    legend_bar,
    make_grid,
    normalize_maps,
    overlay,
    save_animation,
    save_png,
    to_pil,
    upscale,
    visualize_noise,
)
from diffx.render.colormap import NORMALIZE_SCALES
from diffx.render.grid import balanced_columns, note_font_size
from diffx.render.image import PictureLike
from diffx.render.latents import noisy_picture
from diffx.sampling.flow import FLOW_SCHEDULE, FLOW_TIME_SCALE
from diffx.trace.record import Trace
from diffx.trace.tracer import TraceOptions

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

PREVIEWS = ("auto", "fast", "tiny", "vae")
# --preview auto decodes x̂0 with the VAE when one image costs at most this: the embedded model's decoder
# (7.7 GFLOPs at 128 px) is decoded, SD1.5's (2,480 GFLOPs at 512 px) gets the latent preview.
AUTO_DECODE_GFLOPS = 10.0
X0_LABELS = {"vae": "x̂0 (VAE decode)", "tiny": "x̂0 (tiny decoder ≈ VAE)", "fast": "x̂0 (latent preview)"}
XT_LABEL = "x_t = √ᾱ x̂0 + √(1−ᾱ) ε̂"
XS_LABEL = "x_s = (1−s) x̂0 + s ε̂"  # a flow state: the same picture as x_t up to scale (noisy_picture normalises)
ATTENTION_SCALES = NORMALIZE_SCALES
ATTENTION_NOTES = {"word": "each word's map scaled to its own maximum (shapes compare, brightness does not)",
                   "shared": "one scale for every word and step (brightness compares across words)"}
PANEL_RANGE = (192, 256)  # default panel width: the image width, clamped to this range
ATTENTION_ALPHA = 0.6  # heatmap opacity over the picture
GRID_STEPS = 8  # grids over steps show this many steps by default
WORDS_PER_ROW = 6  # panels per frame row at most, unless the step's own panels are more
# Under every trace frame: x_t stays visibly noisy to the end (at t = 39, √(1−ᾱ) = 0.2 of unit noise), because it is
# the last step's input; that step's x̂0 is the result (the final image, up to ᾱ_0 ≈ 0.999 for DDIM).
XT_NOTE = "x_t is the sampler's state (each step's input, still noisy at the last step); the result is the last x̂0"
XS_NOTE = XT_NOTE.replace("x_t", "x_s", 1)  # a flow run's state is x_s (s: the share of noise)


# ---------------------------------------------------------------------------------------------------
# Pictures of one step


def panel_size(width: int, height: int, panel: int | None = None) -> tuple[int, int]:
    """Display (width, height) of one panel: `panel` pixels wide (default: the image width clamped to
    PANEL_RANGE), with the image's aspect ratio."""
    side = panel or max(PANEL_RANGE[0], min(PANEL_RANGE[1], width))
    return side, max(1, round(side * height / width))


def fit_panel(picture: PictureLike, size: tuple[int, int], smooth: bool = False) -> np.ndarray:
    """Resize for display. A latent grid (`smooth=False`) is enlarged with nearest neighbours, so a latent
    pixel stays a visible square; a picture (`smooth=True`) is scaled bilinearly, as a picture should be."""
    enlarge = size[0] >= to_pil(picture).width
    return upscale(picture, size, "nearest" if enlarge and not smooth else "bilinear")


def latent_preview(trace: Trace, key: str, index: int) -> np.ndarray:
    """Fast RGB preview (h, w, 3) of the recorded latent `key` ("latents" or "x0") at 0-based step `index`,
    with the trace's model's preview factors."""
    return latent_to_rgb_fast(trace.tensors[key][index], **trace.latent_preview())


def _require(trace: Trace, *keys: str) -> None:
    missing = [key for key in keys if key not in trace.tensors]
    if missing:
        raise InvalidArgumentError(
            f"the trace has no {', '.join(missing)}; record it (TraceOptions(record=...) or `diffx trace`)")


def step_indices(count: int, steps: Sequence[int] | None) -> list[int]:
    """Step numbers (1..count) → 0-based indices; None → GRID_STEPS steps spread from the first to the last."""
    if steps is None:
        if count <= GRID_STEPS:
            return list(range(count))
        return sorted({round(i * (count - 1) / (GRID_STEPS - 1)) for i in range(GRID_STEPS)})
    for step in steps:
        if not 1 <= step <= count:
            raise InvalidArgumentError(f"step {step} is out of range: the trace has {count} steps; pick 1 to {count}")
    return [step - 1 for step in steps]


def format_timestep(t: float) -> str:
    """981 for an integer timestep, 981.4 for a fractional one (Euler and Heun on a linspace grid)."""
    return f"{t:.0f}" if float(t).is_integer() else f"{t:.1f}"


def is_flow(trace: Trace) -> bool:
    """Whether a rectified-flow sampler made the trace (SD3): its states are x_s = (1 − s) x̂0 + s ε̂."""
    return trace.settings.schedule == FLOW_SCHEDULE


def step_caption(trace: Trace, index: int) -> str:
    """"step 3/25 · t=921 · σ=5.41" for the 0-based step `index`; a flow run's "step 3/28 · t=921 · s=0.921" (its
    time s = t/T, the share of noise in x_s: SD3's σ)."""
    t = float(trace.tensors["timesteps"][index])
    if is_flow(trace):
        return f"step {index + 1}/{trace.num_steps} · t={format_timestep(t)} · s={t / FLOW_TIME_SCALE:.3g}"
    sigma = float(trace.tensors["sigmas"][index])
    return f"step {index + 1}/{trace.num_steps} · t={format_timestep(t)} · σ={sigma:.3g}"


def missing_decodes(trace: Trace) -> list[int]:
    """Step numbers whose x̂0 has no stored VAE decode (`preview="vae"` needs a model for those)."""
    stored = {int(s) for s in trace.tensors.get("decoded_steps", [])}
    return [index + 1 for index in range(trace.num_steps) if index not in stored]


def resolve_preview(preview: str, trace: Trace | None = None, model: StableDiffusion | None = None,
                    live: bool = False) -> str:
    """"fast", "tiny" or "vae" for `preview`; "auto" is "vae" when the trace holds every decode or `model`'s
    decoder costs at most AUTO_DECODE_GFLOPS per image, else "fast". "tiny" (the model's distilled preview
    decoder, `models.tiny_decoder`) needs a `model` that has one. `live` (a page that decodes every step as it
    arrives, `diffx.studio`): "auto" is "tiny" when `model` has a tiny decoder — there the decode is paid at
    every step, while the user waits."""
    check_choice("preview", preview, PREVIEWS)
    if preview == "tiny" and (model is None or model.tiny_decoder is None):
        name = "no model was loaded" if model is None else f"{model.config.name} has none"
        raise InvalidArgumentError(f"--preview tiny draws x̂0 with the model's tiny preview decoder, but {name}; "
                                   "use --preview vae or fast (or make one: diffx train-preview)")
    if preview != "auto":
        return preview
    if live and model is not None and model.tiny_decoder is not None:
        return "tiny"
    if trace is not None and "x0" in trace.tensors and not missing_decodes(trace):
        return "vae"
    if model is not None:
        height, width = trace.tensors["image"].shape[:2] if trace is not None and "image" in trace.tensors \
            else (None, None)
        if decoder_gflops(model, height, width) <= AUTO_DECODE_GFLOPS:
            return "vae"
    return "fast"


def x0_pictures(trace: Trace, indices: Sequence[int], preview: str = "auto",
                model: StableDiffusion | None = None) -> list[np.ndarray]:
    """The predicted clean image x̂0 at 0-based step `indices`: the fast latent preview (h, w, 3), or VAE
    decodes (H, W, 3), taken from the trace where it stores them and decoded with `model` otherwise."""
    preview = resolve_preview(preview, trace, model)
    _require(trace, "x0")
    if preview == "fast":
        return [latent_preview(trace, "x0", i) for i in indices]
    if preview == "tiny":
        return decode_tiny(model, trace.tensors["x0"][list(indices)])
    return trace.decoded_x0(indices, model)


# What the x_t / x̂0 views need: x_t is drawn as the mixture √ᾱ x̂0 + √(1−ᾱ) ε̂ (`xt_pictures`), so ε̂ too;
# without it x_t falls back to its raw latent preview, whose noise clips to saturated colours.
TRACE_RECORD_STEPS = TraceOptions(record=("latents", "eps", "x0"))


def xt_pictures(trace: Trace, indices: Sequence[int], x0: Sequence[np.ndarray]) -> list[np.ndarray]:
    """x_t at 0-based step `indices`, drawn as √ᾱ x̂0 + √(1 − ᾱ) ε̂ from the x̂0 pictures `x0` of those steps
    and the recorded ε̂ (`render.latents.noisy_picture`); without ε̂, the latent preview of x_t."""
    if "eps" not in trace.tensors:
        return [latent_preview(trace, "latents", i) for i in indices]
    alphas = trace.tensors["alphas_cumprod"]
    return [noisy_picture(image_to_tensor(picture)[0], trace.tensors["eps"][i], float(alphas[i]))
            for i, picture in zip(indices, x0, strict=True)]


def xt_label(trace: Trace) -> str:
    if is_flow(trace):
        return XS_LABEL if "eps" in trace.tensors else "x_s (latent preview)"
    return XT_LABEL if "eps" in trace.tensors else "x_t (latent preview)"


def attention_legend(frame: PictureLike, scale: str) -> Image.Image:
    """The colour bar under attention tiles, with what the scale means."""
    return legend_bar(frame, colorbar(64, 8), "attention 0", "max", ATTENTION_NOTES[scale])


def attention_maps(trace: Trace, indices: Sequence[int], scale: str = "word") -> np.ndarray:
    """Per-word cross-attention maps (steps, words, a, a') in [0, 1] for display.

    "shared": one range over every map returned (all words, all steps), so brightness compares across
    words and time; "word": each map stretched on its own, to see its shape even when it is faint.
    """
    check_choice("attention scale", scale, ATTENTION_SCALES)
    _require(trace, "attention")
    if not trace.words:
        raise InvalidArgumentError("the prompt has no words to show attention for; give a prompt")
    maps = torch.stack([trace.word_maps(i) for i in indices])  # (S, W, a, a')
    return normalize_maps(maps.flatten(0, 1), scale).reshape(maps.shape)


def _labelled_panels(rows: list[list[tuple[np.ndarray, str]]], size: tuple[int, int]) -> Image.Image:
    """Rows of (picture, label) panels, each resized to `size` (already sized pictures pass through, latent
    grids keep their squares), the label under each panel."""
    cells = [[fit_panel(picture, size) for picture, _ in row] for row in rows]
    labels = [[label for _, label in row] for row in rows]
    return make_grid(cells, cell_labels=labels, cell_size=size)


# ---------------------------------------------------------------------------------------------------
# Views of a trace


def trace_panel_size(trace: Trace, panel: int | None) -> tuple[int, int]:
    height, width = trace.tensors["image"].shape[:2] if "image" in trace.tensors else trace.tensors["x0"].shape[-2:]
    return panel_size(width, height, panel)


def x0_panels(trace: Trace, indices: Sequence[int], preview: str, model: StableDiffusion | None,
              size: tuple[int, int]) -> tuple[list[np.ndarray], str]:
    """x̂0 at 0-based step `indices` as panels of `size` (decodes scaled smoothly, the latent preview with its
    squares), and their label: "x̂0 (VAE decode)" or "x̂0 (latent preview)"."""
    preview = resolve_preview(preview, trace, model)
    pictures = x0_pictures(trace, indices, preview, model)
    return [fit_panel(p, size, smooth=preview != "fast") for p in pictures], X0_LABELS[preview]


def _step_pictures(trace: Trace, indices: list[int], preview: str, model: StableDiffusion | None,
                   size: tuple[int, int]) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """x_t and x̂0 pictures at `indices`, both at panel `size`, and the x̂0 label."""
    preview = resolve_preview(preview, trace, model)
    x0 = x0_pictures(trace, indices, preview, model)
    xt = [fit_panel(p, size, smooth=preview != "fast") for p in xt_pictures(trace, indices, x0)]
    return xt, [fit_panel(p, size, smooth=preview != "fast") for p in x0], X0_LABELS[preview]


def pack_rows(main: list, tiles: list, most: int = WORDS_PER_ROW) -> list[list]:
    """A frame's rows: the step's own panels `main` (x_t, x̂0, ε̂, …) on the first, the word tiles wrapped
    below in rows of one width (`render.grid.balanced_columns`: 7 words under 4 panels are 4 + 3, not 6 + 1),
    so no word stands alone on a row when another width avoids it; all on one row when they fit `most`."""
    if len(main) + len(tiles) <= most:
        return [main + tiles]
    columns = balanced_columns(len(tiles), most=max(most, len(main)), least=len(main))
    return [main, *(tiles[start:start + columns] for start in range(0, len(tiles), columns))]


def trace_frames(trace: Trace, preview: str = "auto", attn_scale: str = "word",
                 model: StableDiffusion | None = None, panel: int | None = None) -> list[Image.Image]:
    """One frame per recorded step: x_t, x̂0, ε̂, ε_c − ε_u (when recorded) and one attention heatmap
    per prompt word over the x̂0 picture in grey (`pack_rows`), with a caption "step i/N · t=… · σ=…", a line
    saying where the result is (`XT_NOTE`, a flow run's `XS_NOTE`) and a colour bar. Frames share one size."""
    _require(trace, "latents", "x0")
    indices = list(range(trace.num_steps))
    size = trace_panel_size(trace, panel)
    xt, x0, x0_label = _step_pictures(trace, indices, preview, model, size)
    tensors = trace.tensors
    has_guidance = "eps_cond" in tensors and "eps_uncond" in tensors
    maps = attention_maps(trace, indices, attn_scale) if "attention" in tensors and trace.words else None
    frames = []
    for i in indices:
        main = [(xt[i], xt_label(trace)), (x0[i], x0_label)]
        if "eps" in tensors:
            main.append((visualize_noise(tensors["eps"][i]), "ε̂ (latent, RGB = channels 1–3)"))
        if has_guidance:
            main.append((visualize_noise(tensors["eps_cond"][i].float() - tensors["eps_uncond"][i].float()),
                         "ε_c − ε_u (latent)"))
        tiles = [] if maps is None else [(overlay(x0[i], maps[i, w], ATTENTION_ALPHA, grey=True), f"“{word}”")
                                         for w, word in enumerate(trace.words)]
        frame = caption_bar(_labelled_panels(pack_rows(main, tiles), size), step_caption(trace, i))
        frame = caption_bar(frame, XS_NOTE if is_flow(trace) else XT_NOTE, font_size=note_font_size(*frame.size))
        frames.append(attention_legend(frame, attn_scale) if maps is not None else frame)
    return frames


def prompt_title(trace: Trace) -> str:
    prompt = trace.settings.prompt
    return f"“{prompt}”" if prompt else "unconditional (empty prompt)"


def _step_grid(trace: Trace, indices: list[int], rows: list[tuple[str, list[np.ndarray]]], title: str,
               size: tuple[int, int]) -> Image.Image:
    """Rows of pictures over steps, one column per step, labelled with its timestep."""
    timesteps = trace.tensors["timesteps"]
    return make_grid([[fit_panel(p, size) for p in pictures] for _, pictures in rows],
                     row_labels=[label for label, _ in rows],
                     col_labels=[f"t={format_timestep(float(timesteps[i]))}" for i in indices],
                     title=title, cell_size=size)


def attention_grid(trace: Trace, steps: Sequence[int] | None = None, attn_scale: str = "word",
                   preview: str = "auto", model: StableDiffusion | None = None,
                   panel: int | None = None) -> Image.Image:
    """Word × timestep grid: each word's cross-attention heatmap (rows) at the chosen steps (columns,
    default GRID_STEPS spread over the run), over the x̂0 picture of that step in grey; the prompt and
    what the picture under the heat is as title, the colour bar and its scale under the grid."""
    indices = step_indices(trace.num_steps, steps)
    maps = attention_maps(trace, indices, attn_scale)  # (S, W, a, a')
    size = trace_panel_size(trace, panel)
    preview = resolve_preview(preview, trace, model)
    x0 = [fit_panel(p, size, smooth=preview != "fast") for p in x0_pictures(trace, indices, preview, model)]
    rows = [(f"“{word}”", [overlay(x0[s], maps[s, w], ATTENTION_ALPHA, grey=True) for s in range(len(indices))])
            for w, word in enumerate(trace.words)]
    title = f"{prompt_title(trace)}: cross-attention per word over {X0_LABELS[preview]}"
    return attention_legend(_step_grid(trace, indices, rows, title, size), attn_scale)


def denoise_frames(trace: Trace, preview: str = "auto", model: StableDiffusion | None = None,
                   panel: int | None = None) -> list[Image.Image]:
    """One frame per step with x_t and x̂0 side by side and the step caption."""
    _require(trace, "latents")
    indices = list(range(trace.num_steps))
    size = trace_panel_size(trace, panel)
    xt, x0, x0_label = _step_pictures(trace, indices, preview, model, size)
    return [caption_bar(_labelled_panels([[(xt[i], xt_label(trace)), (x0[i], x0_label)]], size),
                        step_caption(trace, i)) for i in indices]


def denoise_grid(trace: Trace, steps: Sequence[int] | None = None, preview: str = "auto",
                 model: StableDiffusion | None = None, panel: int | None = None) -> Image.Image:
    """Two rows over the chosen steps: the model input x_t and the predicted x̂0."""
    _require(trace, "latents")
    indices = step_indices(trace.num_steps, steps)
    size = trace_panel_size(trace, panel)
    xt, x0, x0_label = _step_pictures(trace, indices, preview, model, size)
    return _step_grid(trace, indices, [(xt_label(trace), xt), (x0_label, x0)], f"{prompt_title(trace)}: denoising",
                      size)


def write_trace_views(trace: Trace, animation: str | os.PathLike | None, image: str | os.PathLike | None,
                      preview: str = "auto", attn_scale: str = "word", model: StableDiffusion | None = None,
                      frame_ms: int = 100, force: bool = False, panel: int | None = None) -> list[Path]:
    """Write the trace's frames as `animation`, and the final image as `image` with (when the prompt has words)
    the word × timestep attention grid as `<image>_attention.png`. `animation` None: no frames; `image` None:
    neither the image nor its grid. Returns the paths written."""
    attention = image is not None and "attention" in trace.tensors and bool(trace.words)
    grid_path = companion_path(image, "attention") if attention else None
    check_outputs([image, grid_path], force, animation)
    _require(trace, "image")
    frames = trace_frames(trace, preview, attn_scale, model, panel) if animation is not None else None
    grid = attention_grid(trace, attn_scale=attn_scale, preview=preview, model=model, panel=panel) if attention \
        else None
    written = [] if frames is None else [save_animation(frames, animation, frame_ms, force)]
    if image is not None:
        written.append(save_png(trace.tensors["image"].numpy(), image, force))
    if grid is not None:
        written.append(save_png(grid, grid_path, force))
    return written
