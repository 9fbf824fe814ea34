"""An interactive, self-contained HTML page for one trace or a sweep of traces (`diffx report --html`).

A GIF plays at its own pace; this page lets a learner stop the denoising loop at any step and look
inside it: the model input x_t, the predicted final image x̂0, the guided noise ε̂, the guidance
direction ε_c − ε_u, where each prompt word attends (DAAM maps, Tang et al. 2023), the step's t, σ, ᾱ
and its place on the noise schedule — for several traces side by side (e.g. a guidance sweep), all
driven by one slider.

Every picture is computed here, in Python, with `diffx.render`; the page's JavaScript only swaps
precomputed images, moves the schedule marker and toggles classes. The file references nothing
outside itself (CSS, script and images as data: URIs are inline), so it opens from disk with no server
and no network.

Size — a 50-step, 512 px SD1.5 trace stays well under 10 MB (tests/test_report.py measures it):
- pictures are lossy WebP at quality 75 (Pillow), base64-encoded in data: URIs (+33 %);
- latent-grid pictures (x_t and x̂0 previews, ε̂, ε_c − ε_u) stay at the latent resolution (64×64 for
  SD1.5) and the browser enlarges them with `image-rendering: pixelated`, which also shows honestly
  how coarse the latent grid is;
- VAE-decoded x̂0 frames (from the trace's `decode_every`, or decoded here when `model` is given) are
  downscaled to at most 256 px (`DECODED_SIZE`);
- attention maps are stored as coloured heatmaps at the attention grid's resolution (64×64) and laid
  over x̂0 by the browser (CSS opacity) rather than baked into one overlay per word: one x̂0 frame
  serves every word, and a heatmap frame costs ~3 kB even for random maps, far less for real ones.
Measured on random tensors (the worst case for compression), base64 included, per step: 10 kB for the
four latent pictures, 36 kB for a decoded x̂0, and 7 kB per prompt word for its two heatmaps; a 50-step
512 px trace with a 12-word prompt and x̂0 decoded at every step gives 6.8 MB. Real attention maps are
smooth and compress to a fraction of that.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from PIL import Image
from torch import Tensor

from diffx.errors import InvalidArgumentError
from diffx.files import atomic_output
from diffx.models.configs import SchedulerConfig
from diffx.models.tokenizer import CONTEXT_LENGTH
from diffx.pipeline import schedule_from_config
from diffx.render.charts import schedule_charts
from diffx.render.colormap import NORMALIZE_SCALES, heatmap, normalize_maps
from diffx.render.latents import visualize_noise
from diffx.tables import word_rows
from diffx.trace import Trace
from diffx.views import format_timestep, latent_preview

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

TEMPLATE_PATH = Path(__file__).with_name("report_template.html")
WEBP_QUALITY = 75
DECODED_SIZE = 256  # longest side of VAE-decoded pictures in the page, in pixels
COLORMAP = "viridis"
COLUMN_COLOURS = ("#d1495b", "#1b7f8c", "#e08e0b", "#5a8f3c", "#6a4c93", "#2e4057")

# Panel key -> (title, caption); the key names the frames in the page's data.
PANELS = {
    "xt": ("x_t", "the U-Net's input at this step (latent preview)"),
    "x0": ("x̂0", "the model's guess of the final image: (x_t − √(1−ᾱ) ε̂) / √ᾱ"),
    "eps": ("ε̂", "guided noise prediction ε_u + w (ε_c − ε_u), channels 1–3 as RGB"),
    "guide": ("ε_c − ε_u", "what the prompt changes in the noise prediction (scaled by w)"),
}
# Settings that may differ between the traces of one page, in the order they label the columns.
COLUMN_KEYS = ("guidance", "seed", "sampler", "schedule", "spacing", "karras", "eta", "strength", "steps",
               "prompt", "negative_prompt")


def render_report_html(traces: Sequence[Trace] | Trace, model: StableDiffusion | None = None) -> str:
    """The report page as one HTML string. See `write_report`."""
    traces = _check_traces(traces)
    columns = [_column(trace, index, _column_label(traces, trace, index), model)
               for index, trace in enumerate(traces)]
    charts_svg = _schedule_charts(traces, columns)
    words = traces[0].words
    data = {
        "num_steps": traces[0].num_steps,
        "panels": {key: f"{title}: {caption}" for key, (title, caption) in PANELS.items()},
        "default_words": [_default_word(words)] if words else [],
        "columns": columns,
    }
    body = "\n".join([
        _header(traces[0]),
        "<main>",
        _pipeline_section(traces),
        _loop_section(traces, columns, charts_svg),
        _tokens_section(traces[0]),
        "</main>",
        f"<footer>Made by diffx {html.escape(str(traces[0].meta.get('versions', {}).get('diffx', '')))}: "
        "every picture was computed from the trace file; this page needs no network.</footer>",
    ])
    prompt = traces[0].meta.get("prompt", "")
    slots = {
        "TITLE": html.escape(f"diffx · {_shorten(prompt, 60) or 'trace'}"),
        "COLORBAR": _colorbar_css(),
        "BODY": body,
        # "</" inside a <script> element would end it early; JSON allows the escaped form "<\/".
        "DATA": json.dumps(data, ensure_ascii=False).replace("</", "<\\/"),
    }
    # One pass, so a prompt that happens to contain "__DATA__" is not filled in a second time.
    return re.sub(r"__(TITLE|COLORBAR|BODY|DATA)__", lambda match: slots[match.group(1)],
                  TEMPLATE_PATH.read_text(encoding="utf-8"))


def write_report(traces: Sequence[Trace] | Trace, path: str | Path, force: bool = False,
                 model: StableDiffusion | None = None) -> Path:
    """Write the interactive HTML report of `traces` to `path` and return the path.

    This is what `diffx report TRACE --html out.html` and `--html` on `diffx trace` / `diffx cfg-sweep`
    call, e.g. `write_report([load_trace(p) for p in paths], "out.html", force=True)`.

    `traces`: one trace, or several with the same number of steps (e.g. the traces of a guidance sweep),
    shown as side-by-side columns driven by one timestep slider. `model` (optional): the model that
    made the traces; when given, x̂0 is VAE-decoded at every step the trace did not decode itself
    (otherwise those steps show the latent preview). `force`: overwrite an existing file.
    The page shows the pipeline with the run's settings, the tokens and the 77-token window, and per
    step x_t, x̂0, ε̂, ε_c − ε_u, the selected words' attention over x̂0 and the schedule position.
    Raises InvalidArgumentError for no traces or traces of different lengths, OutputPathError when
    `path` exists (without `force`) or cannot be written.
    """
    page = render_report_html(traces, model=model)
    with atomic_output(path, force=force) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(path)


# ---------------------------------------------------------------------------------------------
# The data behind the page: one "column" of precomputed frames per trace


def _check_traces(traces: Sequence[Trace] | Trace) -> list[Trace]:
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


def _column(trace: Trace, index: int, label: str, model: StableDiffusion | None) -> dict:
    """Every frame and number one column of the page shows, for each step (lists indexed by step)."""
    tensors = trace.tensors
    steps = range(trace.num_steps)
    frames: dict[str, list[str]] = {}
    if "latents" in tensors:
        frames["xt"] = [_data_uri(latent_preview(trace, "latents", s)) for s in steps]
    # VAE decodes of x̂0: the trace's own, and with a model every other step too (else the latent preview).
    decoded = trace.decoded_steps()
    if model is not None and "x0" in tensors:
        decoded = dict(enumerate(trace.decoded_x0(steps, model)))
    if "x0" in tensors:
        frames["x0"] = [_data_uri(_fit(decoded[s])) if s in decoded else
                        _data_uri(latent_preview(trace, "x0", s)) for s in steps]
    if "eps" in tensors:
        frames["eps"] = [_data_uri(visualize_noise(tensors["eps"][s])) for s in steps]
    if "eps_cond" in tensors and "eps_uncond" in tensors:
        frames["guide"] = [_data_uri(visualize_noise(tensors["eps_cond"][s].float() - tensors["eps_uncond"][s].float()))
                           for s in steps]
    return {
        "label": label,
        "guidance": trace.meta.get("settings", {}).get("guidance"),
        "colour": COLUMN_COLOURS[index % len(COLUMN_COLOURS)],
        "words": trace.words,
        "info": [_step_info(trace, s) for s in steps],
        "frames": frames,
        "x0_decoded": [s in decoded for s in steps],
        "heat": _attention_frames(trace) if "attention" in tensors else None,
        "aspect": _aspect(trace),
        "image": _data_uri(_fit(tensors["image"].numpy())) if "image" in tensors else None,
    }


def _attention_frames(trace: Trace) -> dict[str, list[list[str]]]:
    """Heatmaps scale -> word -> step, for both colour scales of `normalize_maps`.

    "word": each word's map stretched to its own range (its shape is always visible); "shared": one
    range over all words of the step (a word that gets little attention stays dark).
    """
    words = trace.words
    frames: dict[str, list[list[str]]] = {scale: [[] for _ in words] for scale in NORMALIZE_SCALES}
    for step in range(trace.num_steps):
        maps = trace.word_maps(step)  # (words, a, a')
        for scale in NORMALIZE_SCALES:
            for word, values in enumerate(normalize_maps(maps, scale)):
                frames[scale][word].append(_data_uri(heatmap(values, 0.0, 1.0, cmap=COLORMAP)))
    return frames


def _data_uri(picture: np.ndarray) -> str:
    """A uint8 (H, W, 3) picture as a lossy-WebP data: URI."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="WEBP", quality=WEBP_QUALITY, method=4)
    return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _fit(picture: np.ndarray, size: int = DECODED_SIZE) -> np.ndarray:
    """Downscale a decoded picture so its longest side is at most `size` (Lanczos, no upscaling)."""
    height, width = picture.shape[:2]
    scale = size / max(height, width)
    if scale >= 1:
        return picture
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(picture).resize(new_size, Image.Resampling.LANCZOS))


def _aspect(trace: Trace) -> str:
    settings = trace.meta.get("settings", {})
    if settings.get("width") and settings.get("height"):
        return f"{settings['width']} / {settings['height']}"
    height, width = trace.tensors["latents"].shape[-2:] if "latents" in trace.tensors else (1, 1)
    return f"{width} / {height}"


def _step_info(trace: Trace, step: int) -> str:
    tensors = trace.tensors
    return (f"t = {format_timestep(float(tensors['timesteps'][step]))} · σ = {float(tensors['sigmas'][step]):.4g} · "
            f"ᾱ = {float(tensors['alphas_cumprod'][step]):.4g}")


def _column_label(traces: list[Trace], trace: Trace, index: int) -> str:
    """Name a column by the settings that differ between the traces ("guidance 7.5"), else by number;
    a lone trace by its guidance and seed."""
    settings = [t.meta.get("settings", {}) for t in traces]
    differing = [key for key in COLUMN_KEYS if len({json.dumps(s.get(key)) for s in settings}) > 1]
    if len(traces) == 1:
        differing = ["guidance", "seed"]
    elif not differing:
        return f"trace {index + 1}"
    own = trace.meta.get("settings", {})
    return " · ".join(f"{key.replace('_', ' ')} {_format(own.get(key))}" for key in differing)


def _default_word(words: list[str]) -> int:
    """The word selected when the page opens: the longest one, usually a noun the image is about."""
    return max(range(len(words)), key=lambda i: (len(words[i]), -i))


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return _shorten(value, 40)
    return str(value)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _colorbar_css() -> str:
    """The colormap as a CSS gradient, for the legend next to the attention controls."""
    stops = ", ".join(matplotlib.colors.to_hex(matplotlib.colormaps[COLORMAP](v)) for v in np.linspace(0, 1, 9))
    return f"linear-gradient(to right, {stops})"


# ---------------------------------------------------------------------------------------------
# The noise schedule as inline SVG, with a marker the page moves to the current step


def _train_alphas_cumprod(meta: dict) -> Tensor:
    """ᾱ_t for every training timestep of the trace's schedule (as `diffx.pipeline.schedule_for` picks it)."""
    config = SchedulerConfig(**meta.get("model", {}).get("config", {}).get("scheduler", {}))
    name = meta.get("settings", {}).get("schedule") or config.beta_schedule
    return schedule_from_config(config, name).alphas_cumprod


def _schedule_charts(traces: list[Trace], columns: list[dict]) -> str:
    """The schedule charts of `diffx.render.charts` for these traces; stores each column's markers."""
    curves = {}  # schedule name -> ᾱ over all training timesteps
    for trace in traces:
        curves.setdefault(trace.meta.get("settings", {}).get("schedule", "schedule"),
                          _train_alphas_cumprod(trace.meta).double().numpy())
    visited = [(trace.tensors["timesteps"].double().numpy(), trace.tensors["alphas_cumprod"].double().numpy())
               for trace in traces]
    svg, markers = schedule_charts(curves, visited, [column["colour"] for column in columns])
    for column, column_markers in zip(columns, markers, strict=True):
        column["markers"] = column_markers
    return svg


# ---------------------------------------------------------------------------------------------
# HTML sections


def _settings_value(traces: list[Trace], key: str) -> str:
    """A setting's value; where the traces differ, all their values joined by " / "."""
    values = list(dict.fromkeys(_format(t.meta.get("settings", {}).get(key)) for t in traces))
    return " / ".join(values)


def _header(trace: Trace) -> str:
    prompt = trace.meta.get("prompt", "")
    negative = trace.meta.get("negative_prompt", "")
    negative_line = f' · negative: <q>{html.escape(negative)}</q>' if negative else ""
    return (f'<header><h1>diffx trace report</h1><p class="prompt-line">Prompt: <q>{html.escape(prompt)}</q>'
            f"{negative_line}</p></header>")


def _pipeline_section(traces: list[Trace]) -> str:
    """Prompt → tokenizer → text encoder → U-Net loop × N with CFG → VAE decoder → image, with settings."""
    meta = traces[0].meta
    config = meta.get("model", {}).get("config", {})
    text_config, vae_config = config.get("text_encoder", {}), config.get("vae", {})
    tokens = meta["tokens"]
    latent_shape = "×".join(str(d) for d in traces[0].tensors["latents"].shape[1:]) \
        if "latents" in traces[0].tensors else "?"
    size = f"{_settings_value(traces, 'width')}×{_settings_value(traces, 'height')}"
    cut = tokens.get("truncated_text")
    value = {key: html.escape(_settings_value(traces, key)) for key in
             ("sampler", "schedule", "spacing", "steps", "guidance", "seed", "eta", "strength", "karras")}
    image = traces[0].tensors.get("image")
    result = (f'<img src="{_data_uri(_fit(image.numpy(), 144))}" alt="the final image of the run">'
              if image is not None else "")
    mode = meta.get("mode", "text2img")
    start = ("seed " + value["seed"] + " → x_T ~ N(0, I)" if mode == "text2img" else
             f"input image → VAE encoder → noised to strength {value['strength']}")
    stages = [
        ("", "Prompt", f"“{html.escape(_shorten(meta.get('prompt', ''), 70))}”"),
        ("", "Tokenizer", f"CLIP BPE · {tokens['num_tokens']} of {CONTEXT_LENGTH} tokens"
         + (f' · <span class="cut-text">cut: “{html.escape(_shorten(cut, 40))}”</span>' if cut else "")),
        ("", "Text encoder", f"CLIP transformer, {text_config.get('num_hidden_layers', '?')} layers → "
         f"context c: {CONTEXT_LENGTH}×{text_config.get('hidden_size', '?')}"),
        ("loop", f"U-Net loop ↻ × {value['steps']}",
         f"{start} · sampler {value['sampler']}{' (Karras σ)' if value['karras'] == 'True' else ''} · "
         f"schedule {value['schedule']} ({value['spacing']}) · CFG ε̂ = ε_u + w (ε_c − ε_u), "
         f"w = {value['guidance']} · latent {latent_shape}"),
        ("", "VAE decoder", f"latent {latent_shape} → image {html.escape(size)} "
         f"(×{2 ** (len(vae_config.get('ch_mult', (1,))) - 1)} per side)"),
        ("result", "Image", result),
    ]
    boxes = '<span class="arrow" aria-hidden="true">→</span>'.join(
        f'<div class="stage {kind}"><b>{title}</b><span>{text}</span></div>' for kind, title, text in stages)
    model = meta.get("model", {})
    settings = [("model", f"{model.get('name', '?')} ({model.get('source', '?')})"), ("mode", mode),
                ("sampler", _settings_value(traces, "sampler")), ("schedule", _settings_value(traces, "schedule")),
                ("spacing", _settings_value(traces, "spacing")), ("steps", _settings_value(traces, "steps")),
                ("guidance w", _settings_value(traces, "guidance")), ("seed", _settings_value(traces, "seed")),
                ("size", size), ("η (eta)", _settings_value(traces, "eta"))]
    if mode != "text2img":
        settings.append(("strength", _settings_value(traces, "strength")))
    if meta.get("negative_prompt"):
        settings.append(("negative prompt", _shorten(meta["negative_prompt"], 60)))
    items = "".join(f"<div><dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd></div>" for k, v in settings)
    return (f'<section class="card" aria-labelledby="pipeline-title"><h2 id="pipeline-title">The pipeline</h2>'
            f'<div class="pipeline">{boxes}</div><dl class="settings">{items}</dl></section>')


def _loop_section(traces: list[Trace], columns: list[dict], charts_svg: str) -> str:
    """The timestep controls, the prompt's words, one column of panels per trace, and the schedule."""
    count = traces[0].num_steps
    words = traces[0].words
    cut_words = _cut_words(traces[0])
    chips = "".join(
        f'<button type="button" class="word{" cut" if i in cut_words else ""}" data-word="{i}" aria-pressed="false" '
        f'aria-label="show the attention of “{html.escape(word)}”'
        f'{" (cut by the 77-token window: no attention)" if i in cut_words else ""}">{html.escape(word)}</button>'
        for i, word in enumerate(words))
    has_attention = any(column["heat"] for column in columns)
    attention_controls = (
        f'<div class="words" role="group" aria-label="prompt words"><span class="hint">Attention of '
        f'(click a word; Shift-click adds one):</span>{chips}'
        '<span class="toggle" role="radiogroup" aria-label="heatmap colour scale">'
        '<input type="radio" name="scale" id="scale-word" value="word" checked>'
        '<label for="scale-word" title="each word stretched to its own range">per-word scale</label>'
        '<input type="radio" name="scale" id="scale-shared" value="shared">'
        '<label for="scale-shared" title="one range over all words at this step">shared scale</label></span>'
        '<label class="small" for="opacity">overlay <input type="range" id="opacity" min="0" max="100" value="60" '
        'aria-label="heatmap opacity over x̂0"></label>'
        '<span class="small" aria-hidden="true">low <span class="colorbar"></span> high</span></div>'
        if has_attention and words else "")
    controls = (
        '<div class="controls" role="toolbar" aria-label="timestep controls">'
        f'<button type="button" id="first" aria-label="first step">{_icon("M3 2h2v12H3zM14 2v12L6 8z")}</button>'
        f'<button type="button" id="prev" aria-label="previous step">{_icon("M12 2v12L4 8z")}</button>'
        '<button type="button" id="play" aria-label="Play the denoising steps">'
        f'<span class="play">{_icon("M4 2v12l10-6z")} Play</span>'
        f'<span class="pause">{_icon("M3 2h4v12H3zM9 2h4v12H9z")} Pause</span></button>'
        f'<button type="button" id="next" aria-label="next step">{_icon("M4 2v12l8-6z")}</button>'
        f'<button type="button" id="last" aria-label="last step">{_icon("M11 2h2v12h-2zM2 2v12l8-6z")}</button>'
        f'<input type="range" id="step" min="1" max="{count}" value="1" step="1" aria-label="denoising step">'
        f'<span id="step-label" aria-live="polite">step 1 / {count}</span>'
        '<label class="small" for="fps">speed <select id="fps" aria-label="playback speed">'
        '<option value="2">2 steps/s</option><option value="5" selected>5 steps/s</option>'
        '<option value="10">10 steps/s</option></select></label>'
        f"{attention_controls}</div>")
    column_html = "\n".join(_column_html(c, column) for c, column in enumerate(columns))
    return (
        '<section class="card" aria-labelledby="loop-title"><h2 id="loop-title">Inside the denoising loop</h2>'
        '<p class="note">Drag the slider, press ← / → (Home / End), or play. At every step the sampler feeds x_t '
        "to the U-Net, which predicts the noise ε̂; removing it gives x̂0, the model's current guess of the "
        "final image. Latent pictures are shown at the latent resolution, one square per latent pixel.</p>"
        f'{controls}<div class="loop-body"><div class="columns{" multi" if len(columns) > 1 else ""}">'
        f'{column_html}</div>'
        f'<aside class="side" aria-label="noise schedule"><h2>Where this step sits on the schedule</h2>'
        f'{charts_svg}<p class="note">Dots: the steps the sampler visits, from high t (pure noise) down to '
        "t ≈ 0. Ring: the current step.</p></aside></div></section>")


def _icon(path: str) -> str:
    """A 16×16 inline SVG icon (fonts may lack the media-control characters)."""
    return f'<svg viewBox="0 0 16 16" aria-hidden="true"><path d="{path}"/></svg>'


def _column_html(c: int, column: dict) -> str:
    figures = []
    for key, (title, caption) in PANELS.items():
        missing = ("guidance w = 1: only ε_c is computed, so there is no ε_c − ε_u"
                   if key == "guide" and column["guidance"] == 1 else "not recorded in this trace")
        inner = (f'<img data-col="{c}" data-panel="{key}" class="pixelated" alt="{html.escape(title)}">'
                 if key in column["frames"] else f'<div class="missing">{html.escape(missing)}</div>')
        figures.append(f'<figure class="panel"><div class="frame">{inner}</div>'
                       f"<figcaption><b>{html.escape(title)}</b> — {html.escape(caption)}</figcaption></figure>")
    figures.append(f'<div class="attention" data-col="{c}"></div>')
    image = (f'<figure class="panel"><div class="frame"><img src="{column["image"]}" alt="the final image, '
             f'{html.escape(column["label"])}"></div><figcaption><b>final image</b> — the VAE decode of the last '
             "latent</figcaption></figure>") if column["image"] else ""
    return (f'<div class="column" style="--aspect: {column["aspect"]}"><h3><span class="swatch" '
            f'style="background: {column["colour"]}"></span>{html.escape(column["label"])}</h3>'
            f'<p class="step-info" data-col="{c}">{html.escape(column["info"][0])}</p>'
            f'<div class="panels">{"".join(figures)}{image}</div></div>')


def _cut_words(trace: Trace) -> set[int]:
    """Words none of whose tokens made it into the 77-token window."""
    word_ids = set(trace.meta["tokens"]["word_ids"])
    return {i for i in range(len(trace.words)) if i not in word_ids}


def _tokens_section(trace: Trace) -> str:
    """Word → BPE tokens → ids, and the 77-position window the text encoder sees."""
    tokens = trace.meta["tokens"]
    count = tokens["num_tokens"]
    token_strings, ids, word_ids = tokens["tokens"], tokens["ids"], tokens["word_ids"]
    cells, rows = [], []
    for position in range(CONTEXT_LENGTH):
        if position < count:
            word = word_ids[position]
            kind = "special" if word is None else f"w{word % 2}"
            tip = f"{position}: {token_strings[position]} ({ids[position]})"
        else:
            kind, tip = "", f"{position}: padding <|endoftext|>"
        cells.append(f'<span class="{kind}" title="{html.escape(tip)}"></span>')
    rows.append(f'<tr class="special"><td>start</td><td class="mono">{html.escape(token_strings[0])}</td>'
                f"<td>{ids[0]}</td><td>0</td></tr>")
    for row in word_rows(trace.words, token_strings, ids, word_ids):
        if not row.positions:
            rows.append(f'<tr><td>{html.escape(row.word)}</td><td class="cut-text" colspan="3">cut by the '
                        f"{CONTEXT_LENGTH}-token window</td></tr>")
            continue
        rows.append(f"<tr><td>{html.escape(row.word)}</td>"
                    f'<td class="mono">{html.escape(" ".join(row.tokens))}</td>'
                    f'<td>{" ".join(map(str, row.ids))}</td>'
                    f'<td>{", ".join(map(str, row.positions))}</td></tr>')
    rows.append(f'<tr class="special"><td>end</td><td class="mono">{html.escape(token_strings[count - 1])}</td>'
                f"<td>{ids[count - 1]}</td><td>{count - 1}</td></tr>")
    if count < CONTEXT_LENGTH:
        rows.append(f'<tr class="special"><td>padding</td><td class="mono">{html.escape(token_strings[count - 1])} '
                    f"× {CONTEXT_LENGTH - count}</td><td>{ids[count - 1]}</td><td>{count}–{CONTEXT_LENGTH - 1}</td>"
                    "</tr>")
    cut = tokens.get("truncated_text")
    cut_note = (f'<p class="note cut-text">Cut off by the {CONTEXT_LENGTH}-token window (the model never saw it): '
                f"“{html.escape(cut)}”</p>" if cut else "")
    return (
        '<section class="card" aria-labelledby="tokens-title"><h2 id="tokens-title">Tokens</h2>'
        f'<p class="note">The text encoder always reads {CONTEXT_LENGTH} positions: a start token, the prompt as '
        "byte-pair-encoded (BPE) tokens (<code>&lt;/w&gt;</code> marks the end of a word; long or rare words "
        f"split into several tokens), an end token, then padding. This prompt uses {count} of them.</p>"
        f'<div class="window" role="img" aria-label="{count} of {CONTEXT_LENGTH} token positions used">'
        f'{"".join(cells)}</div>{cut_note}'
        '<div class="table-wrap"><table><thead><tr><th scope="col">word</th><th scope="col">BPE tokens</th>'
        f'<th scope="col">ids</th><th scope="col">positions</th></tr></thead><tbody>{"".join(rows)}</tbody>'
        "</table></div></section>")
