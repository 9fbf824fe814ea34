"""The data behind the report page (`diffx.report`): one "column" of precomputed frames per trace —
x_t, x̂0, ε̂, ε_c − ε_u and attention heatmaps as data: URIs (lossless, but for pictures at the image
size: see `data_uri`) — and the schedule charts' markers."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from PIL import Image
from torch import Tensor

from diffx.errors import InvalidArgumentError
from diffx.models.configs import SchedulerConfig
from diffx.pipeline.denoiser import schedule_from_config
from diffx.render.charts import schedule_charts
from diffx.render.colormap import NORMALIZE_SCALES, heatmap, normalize_maps
from diffx.render.latents import visualize_noise
from diffx.sampling.flow import FLOW_SCHEDULE, FLOW_TIME_SCALE
from diffx.trace.attention import merge_words
from diffx.trace.checks import describe_identity, model_mismatch
from diffx.trace.record import Trace
from diffx.views.attention import layer_title
from diffx.views.steps import (
    X0_LABELS,
    format_timestep,
    is_flow,
    latent_preview,
    resolve_preview,
    x0_pictures,
    xt_pictures,
)

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion


# Quality of the lossy WebP pictures (`data_uri(..., lossy=True)`): VAE decodes and x_t drawn over them.
WEBP_QUALITY = 75


DECODED_SIZE = 256  # longest side of VAE-decoded pictures in the page, in pixels


COLORMAP = "viridis"


# Per-head heatmaps in one page at most (~210 B each at 16×16, up to ~6 kB at 64×64): the embedded
# model's 25 steps × 7 words × 40 heads (7,000) fit; SD1.5's 50 × 12 × 128 (76,800) are left out.
HEAD_FRAMES_MAX = 20_000


COLUMN_COLOURS = ("#d1495b", "#1b7f8c", "#e08e0b", "#5a8f3c", "#6a4c93", "#2e4057")


# Settings that may differ between the traces of one page, in the order they label the columns.
COLUMN_KEYS = ("guidance", "seed", "sampler", "schedule", "spacing", "karras", "eta", "strength", "steps",
               "prompt", "negative_prompt")


def check_traces(traces: Sequence[Trace] | Trace) -> list[Trace]:
    traces = [traces] if isinstance(traces, Trace) else list(traces)
    if not traces:
        raise InvalidArgumentError("no traces to report; pass at least one trace file")
    lengths = sorted({trace.num_steps for trace in traces})
    if len(lengths) > 1:
        raise InvalidArgumentError(
            f"the traces have different numbers of steps ({', '.join(map(str, lengths))}); a report compares "
            "traces step by step, so give traces made with the same --steps")
    if lengths[0] == 0:
        raise InvalidArgumentError("the trace has no steps; record one with `diffx trace`")
    return traces


def step_frames(trace: Trace, step: int, decoded: np.ndarray | None = None) -> dict:
    """Every frame and number of one step of `trace` (0-based `step`): "info" (t, σ, ᾱ), "frames" (x_t, x̂0, ε̂,
    ε_c − ε_u as data: URIs, those recorded), "decoded" (whether x̂0 is the VAE decode `decoded`, else the latent
    preview) and "heat" (scale → one heatmap per word, or None without attention).

    The report's columns are these steps in a row; the live page (`diffx.studio`) sends each as it arrives.
    """
    tensors = trace.tensors
    frames: dict[str, str] = {}
    if "x0" in tensors:
        x0 = fit_picture(decoded) if decoded is not None else latent_preview(trace, "x0", step)
        # A decode is a picture at the image size, and so is x_t drawn over it: lossy; latent previews are exact.
        frames["x0"] = data_uri(x0, lossy=decoded is not None)
        if "latents" in tensors:
            frames["xt"] = data_uri(xt_pictures(trace, [step], [x0])[0], lossy=decoded is not None)
    elif "latents" in tensors:
        frames["xt"] = data_uri(latent_preview(trace, "latents", step))
    if "eps" in tensors:
        frames["eps"] = data_uri(visualize_noise(tensors["eps"][step]))
    if "eps_cond" in tensors and "eps_uncond" in tensors:
        frames["guide"] = data_uri(visualize_noise(tensors["eps_cond"][step].float() -
                                                   tensors["eps_uncond"][step].float()))
    heat = None
    if "attention" in tensors:  # an empty prompt has no words, so no maps
        maps = trace.word_maps(step)
        heat = {scale: [data_uri(heatmap(values, 0.0, 1.0, cmap=COLORMAP))
                        for values in (normalize_maps(maps, scale) if len(maps) else [])] for scale in NORMALIZE_SCALES}
    return {"info": _step_info(trace, step), "frames": frames, "decoded": decoded is not None, "heat": heat}


def column_data(trace: Trace, index: int, label: str, model: StableDiffusion | None, preview: str = "auto") -> dict:
    """Every frame and number one column of the page shows, for each step (lists indexed by step); x̂0 drawn
    with `preview` as every view draws it (`resolve_preview`)."""
    tensors = trace.tensors
    steps = list(range(trace.num_steps))
    # Another model's traces are never decoded with `model` (under "auto" they get the latent preview unless
    # they stored their decodes; "vae" is refused): the column says so.
    mismatch = model_mismatch(trace.meta, model) if model is not None and "x0" in tensors else None
    shown = resolve_preview(preview, trace, None if mismatch else model) if "x0" in tensors else "fast"
    decodes = x0_pictures(trace, steps, shown, model) if shown != "fast" else [None] * len(steps)
    per_step = [step_frames(trace, s, decodes[s]) for s in steps]
    heat = None
    if per_step[0]["heat"] is not None:  # scale -> word -> step
        heat = {scale: [[step["heat"][scale][word] for step in per_step] for word in range(len(trace.words))]
                for scale in NORMALIZE_SCALES}
    return {
        "label": label,
        "model": model_description(trace),
        "decode_note": (f"not decoded with the given model: {mismatch.split(';')[0]}" if mismatch else None),
        "guidance": trace.settings.guidance,
        "colour": COLUMN_COLOURS[index % len(COLUMN_COLOURS)],
        "words": trace.words,
        "info": [step["info"] for step in per_step],
        "frames": {key: [step["frames"][key] for step in per_step] for key in per_step[0]["frames"]},
        "x0_decoded": [shown != "fast"] * trace.num_steps,
        "x0_label": X0_LABELS[shown],
        "heat": heat,
        "layers": _layer_frames(trace) if "attention" in tensors else [],
        "aspect": _aspect(trace),
        "image": data_uri(fit_picture(tensors["image"].numpy()), lossy=True) if "image" in tensors else None,
    }


def _heat_frames(per_step: Sequence[Tensor], scales: Sequence[str]) -> dict[str, list[list[str]]]:
    """Heatmap data URIs scale -> word -> step from per-step (words, r, c) maps."""
    frames: dict[str, list[list[str]]] = {scale: [[] for _ in range(len(per_step[0]))] for scale in scales}
    for maps in per_step:
        for scale in scales:
            for word, values in enumerate(normalize_maps(maps, scale)):
                frames[scale][word].append(data_uri(heatmap(values, 0.0, 1.0, cmap=COLORMAP)))
    return frames


def _layer_frames(trace: Trace) -> list[dict]:
    """Per recorded layer: its label ("up.4 16×16"), its heatmaps word -> step (mean over heads), and its
    heads' (head -> word -> step) when the trace holds them; each map on its own scale ("word")."""
    def frames(layer: int, head: int | None) -> list[list[str]]:
        per_step = [merge_words(trace.token_maps(step, layer, head), trace.tokens)
                    for step in range(trace.num_steps)]  # (words, r, c) each
        return _heat_frames(per_step, ("word",))["word"]

    return [{"label": layer_title(trace, index), "heat": frames(index, None),
             "heads": [frames(index, head) for head in range(info["heads"])] if head_frames(trace) else None}
            for index, info in enumerate(trace.attention_layers)]


def head_frames(trace: Trace) -> int:
    """How many per-head heatmaps the page carries for `trace`: steps × words × all layers' heads, or 0
    when the trace has no head maps or they exceed HEAD_FRAMES_MAX (the page then says so)."""
    if not any(key.startswith("head_attention.") for key in trace.tensors):
        return 0
    count = trace.num_steps * len(trace.words) * sum(info["heads"] for info in trace.attention_layers)
    return count if count <= HEAD_FRAMES_MAX else 0


def data_uri(picture: np.ndarray, lossy: bool = False) -> str:
    """A uint8 (H, W, 3) picture as a data: URI: lossless (the smaller of PNG and lossless WebP), or lossy WebP.

    Lossless is the default because most panels are numbers drawn as colours — ε̂ and ε_c − ε_u with channels
    1–3 as R, G, B, latent previews, attention heatmaps — and the page must show the numbers the renderer
    drew. Lossy WebP (VP8) keeps colour at half resolution (4:2:0 chroma), which on a 16×16 latent mixes each
    pixel's channels with its neighbours': on the embedded model's page, R and B of ε̂ correlated 0.51–0.53
    with what `visualize_noise` drew, B of ε_c − ε_u 0.16, and heatmaps read back up to 0.3 off on their
    0–1 scale. `lossy=True` is for pictures at the image size (VAE decodes of x̂0, x_t drawn over them, the
    final image): there one latent pixel spans 8×8 image pixels, larger than a 2×2 chroma cell, so the
    colours survive (x_t's channels correlate 0.94–0.96), and a lossless decode costs ~10× the bytes (the
    embedded model's x̂0: 9.3 kB a frame instead of 0.9 kB).
    """
    if lossy:
        return _encoded(picture, "WEBP", quality=WEBP_QUALITY, method=4)
    # PNG wins on tiny noisy frames (a 16×16 ε̂: 852 B against 1,002 B), lossless WebP on the rest (its
    # colour-indexing transform stores a 256-colour heatmap at a byte a pixel: 16×16, 502 B against 852 B).
    return min(_encoded(picture, "PNG", optimize=True), _encoded(picture, "WEBP", lossless=True, quality=50, method=2),
               key=len)


def _encoded(picture: np.ndarray, image_format: str, **options: object) -> str:
    """`picture` saved by Pillow in `image_format` with `options`, as a base64 data: URI."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format=image_format, **options)
    return f"data:image/{image_format.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def fit_picture(picture: np.ndarray, size: int = DECODED_SIZE) -> np.ndarray:
    """Downscale a decoded picture so its longest side is at most `size` (Lanczos, no upscaling)."""
    height, width = picture.shape[:2]
    scale = size / max(height, width)
    if scale >= 1:
        return picture
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(picture).resize(new_size, Image.Resampling.LANCZOS))


def _aspect(trace: Trace) -> str:
    return f"{trace.settings.width} / {trace.settings.height}"


def _step_info(trace: Trace, step: int) -> str:
    tensors = trace.tensors
    t = float(tensors["timesteps"][step])
    if is_flow(trace):  # a rectified-flow run: its time s is the share of noise in x_s
        return f"t = {format_timestep(t)} · s = {t / FLOW_TIME_SCALE:.4g}"
    return (f"t = {format_timestep(t)} · σ = {float(tensors['sigmas'][step]):.4g} · "
            f"ᾱ = {float(tensors['alphas_cumprod'][step]):.4g}")


def model_key(trace: Trace) -> str:
    """What tells the traces' models apart: the config and weights hashes, else the name and source."""
    model = trace.meta.get("model") or {}
    identity = model.get("identity") or {}
    if identity.get("config_hash") or identity.get("weights_hash"):
        return f"{identity.get('config_hash')}/{identity.get('weights_hash')}"
    return f"{model.get('name', '?')}/{model.get('source', '?')}"


def model_description(trace: Trace) -> str:
    """The model that made a trace: its name and source, and its hashes where the trace records them."""
    model = trace.meta.get("model") or {}
    identity = model.get("identity")
    name = describe_identity(identity) if identity else model.get("name", "?")
    return f"{name} from {model.get('source', '?')}"


def models_differ(traces: list[Trace]) -> bool:
    return len({model_key(trace) for trace in traces}) > 1


def column_label(traces: list[Trace], trace: Trace, index: int) -> str:
    """Name a column by the settings that differ between the traces ("guidance 7.5"), else by number;
    a lone trace by its guidance and seed. Traces of different models are named by their model first."""
    differing = [key for key in COLUMN_KEYS if len({getattr(t.settings, key) for t in traces}) > 1]
    model = ""
    if models_differ(traces):
        own_model = trace.meta.get("model") or {}
        names = {(t.meta.get("model") or {}).get("name") for t in traces}
        hashes = (own_model.get("identity") or {}).get("weights_hash")
        model = f"model {own_model.get('name', '?')}" + (f" ({hashes[:8]})" if len(names) == 1 and hashes else "")
    if len(traces) == 1:
        differing = ["guidance", "seed"]
    elif not differing:
        return model or f"trace {index + 1}"
    parts = [model] if model else []
    return " · ".join(parts + [f"{key.replace('_', ' ')} {format_value(getattr(trace.settings, key))}"
                               for key in differing])


def default_word(words: list[str]) -> int:
    """The word selected when the page opens: the longest one, usually a noun the image is about."""
    return max(range(len(words)), key=lambda i: (len(words[i]), -i))


def colorbar_css() -> str:
    """The colormap as a CSS gradient, for the legend next to the attention controls."""
    stops = ", ".join(matplotlib.colors.to_hex(matplotlib.colormaps[COLORMAP](v)) for v in np.linspace(0, 1, 9))
    return f"linear-gradient(to right, {stops})"


def _train_alphas_cumprod(trace: Trace) -> Tensor:
    """ᾱ_t for every training timestep of the trace's schedule (as `diffx.pipeline.schedule_for` picks it)."""
    config = SchedulerConfig(**trace.meta.get("model", {}).get("config", {}).get("scheduler", {}))
    return schedule_from_config(config, trace.settings.schedule).alphas_cumprod


def schedule_charts_html(traces: list[Trace], columns: list[dict]) -> str:
    """The schedule charts of `diffx.render.charts` for these traces; stores each column's markers."""
    curves = {}  # schedule name -> ᾱ over all training timesteps
    for trace in traces:
        curves.setdefault(trace.settings.schedule, _train_alphas_cumprod(trace).double().numpy())
    visited = [(trace.tensors["timesteps"].double().numpy(), trace.tensors["alphas_cumprod"].double().numpy())
               for trace in traces]
    svg, markers = schedule_charts(curves, visited, [column["colour"] for column in columns],
                                   flow=set(curves) == {FLOW_SCHEDULE})
    for column, column_markers in zip(columns, markers, strict=True):
        column["markers"] = column_markers
    return svg


def format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return shorten(value, 40)
    return str(value)


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
