"""The HTML sections of the report page (`diffx.report`): header, the pipeline with the run's settings,
the denoising loop with its panels and charts, and the tokens with the 77-position window."""

from __future__ import annotations

import html

from diffx.models.tokenizer import CONTEXT_LENGTH
from diffx.report.columns import (
    HEAD_FRAMES_MAX,
    data_uri,
    fit_picture,
    format_value,
    head_frames,
    model_description,
    models_differ,
    shorten,
)
from diffx.trace.record import Trace
from diffx.views.attention import layer_title, mass_shares
from diffx.views.steps import is_flow
from diffx.views.tables import word_rows

# Panel key -> (title, caption); the key names the frames in the page's data.
PANELS = {
    "xt": ("x_t", "the U-Net's input at this step, drawn as √ᾱ x̂0 + √(1−ᾱ) ε̂ so the picture shows through"),
    "x0": ("x̂0", "the model's guess of the final image: (x_t − √(1−ᾱ) ε̂) / √ᾱ"),
    "eps": ("ε̂", "guided noise prediction ε_u + w (ε_c − ε_u), channels 1–3 as RGB"),
    "guide": ("ε_c − ε_u", "what the prompt changes in the noise prediction (scaled by w)"),
}
# A rectified-flow run's (SD3): its state is x_s = (1 − s) x̂0 + s ε̂ and its network predicts the velocity v̂.
FLOW_PANELS = {
    **PANELS,
    "xt": ("x_s", "the MMDiT's input at this step, (1 − s) x̂0 + s ε̂, drawn so the picture shows through"),
    "x0": ("x̂0", "the model's guess of the final image: x_s − s v̂"),
}


VP_NOTE = ("At every step the sampler feeds x_t to the U-Net, which predicts the noise ε̂; removing it gives x̂0, the "
           "model's current guess of the final image. Above the panels: the step's timestep t, its noise level "
           "σ = √((1−ᾱ)/ᾱ) (x_t / √ᾱ = x̂0 + σ ε̂) and ᾱ; x_t itself scales the noise by √(1−ᾱ).")
FLOW_NOTE = ("At every step the sampler feeds x_s = (1 − s) x̂0 + s ε̂ to the MMDiT, which predicts the velocity "
             "v̂ = ε̂ − x̂0 of the straight line from picture to noise; x̂0 = x_s − s v̂ is the model's current guess "
             "of the final image. Above the panels: the step's timestep t = 1000 s and s, the share of noise in x_s "
             "(1 at the start, 0 at the end).")


def panels_for(traces: list[Trace]) -> dict[str, tuple[str, str]]:
    """The panels' titles and captions in the runs' own terms: a flow run's (x_s, s) or the VP ones."""
    return FLOW_PANELS if is_flow(traces[0]) else PANELS


def _settings_value(traces: list[Trace], key: str) -> str:
    """A setting's value; where the traces differ, all their values joined by " / "."""
    values = list(dict.fromkeys(format_value(getattr(t.settings, key)) for t in traces))
    return " / ".join(values)


def header_html(trace: Trace) -> str:
    prompt = trace.settings.prompt
    negative = trace.settings.negative_prompt
    negative_line = f' · negative: <q>{html.escape(negative)}</q>' if negative else ""
    return (f'<header><h1>diffx trace report</h1><p class="prompt-line">Prompt: <q>{html.escape(prompt)}</q>'
            f"{negative_line}</p></header>")


def pipeline_section(traces: list[Trace]) -> str:
    """Prompt → tokenizer → text encoder → U-Net loop × N with CFG → VAE decoder → image, with settings."""
    meta, first = traces[0].meta, traces[0].settings
    config = meta.get("model", {}).get("config", {})
    text_config, vae_config = config.get("text_encoder", {}), config.get("vae", {})
    tokens = traces[0].tokens
    latent_shape = "×".join(str(d) for d in traces[0].tensors["latents"].shape[1:]) \
        if "latents" in traces[0].tensors else "?"
    size = f"{_settings_value(traces, 'width')}×{_settings_value(traces, 'height')}"
    cut = tokens.truncated_text
    value = {key: html.escape(_settings_value(traces, key)) for key in
             ("sampler", "schedule", "spacing", "steps", "guidance", "seed", "eta", "strength")}
    image = traces[0].tensors.get("image")
    result = (f'<img src="{data_uri(fit_picture(image.numpy(), 144), lossy=True)}" alt="the final image of the run">'
              if image is not None else "")
    mode = meta.get("mode", "text2img")
    karras = " (Karras σ)" if all(trace.settings.karras for trace in traces) else ""  # only where every run used it
    start = ("seed " + value["seed"] + " → x_T ~ N(0, I)" if mode == "text2img" else
             f"input image → VAE encoder → noised to strength {value['strength']}")
    if "mmdit" in config:  # SD3: three text encoders, the MMDiT, rectified flow
        t5 = config.get("t5")
        context = f"{CONTEXT_LENGTH}+{config.get('t5_max_length', '?')}×{config['mmdit'].get('context_dim', '?')}"
        encoder = ("Text encoders", f"CLIP-L + OpenCLIP bigG{' + T5' if t5 else ' (no T5: zero rows)'} → "
                   f"context c: {context}, pooled 2048")
        loop = (f"MMDiT loop ↻ × {value['steps']}",
                f"{start.replace('x_T', 'x_1')} · sampler {value['sampler']} · rectified flow, shift "
                f"{config.get('scheduler', {}).get('shift', '?')} · CFG v̂ = v_u + w (v_c − v_u), "
                f"w = {value['guidance']} · latent {latent_shape}")
    else:
        encoder = ("Text encoder", f"CLIP transformer, {text_config.get('num_hidden_layers', '?')} layers → "
                   f"context c: {CONTEXT_LENGTH}×{text_config.get('hidden_size', '?')}")
        loop = (f"U-Net loop ↻ × {value['steps']}",
                f"{start} · sampler {value['sampler']}{karras} · schedule {value['schedule']} ({value['spacing']}) · "
                f"CFG ε̂ = ε_u + w (ε_c − ε_u), w = {value['guidance']} · latent {latent_shape}")
    stages = [
        ("", "Prompt", f"“{html.escape(shorten(first.prompt, 70))}”"),
        ("", "Tokenizer", f"CLIP BPE · {tokens.num_tokens} of {CONTEXT_LENGTH} tokens"
         + (f' · <span class="cut-text">cut: “{html.escape(shorten(cut, 40))}”</span>' if cut else "")),
        ("", *encoder),
        ("loop", *loop),
        ("", "VAE decoder", f"latent {latent_shape} → image {html.escape(size)} "
         f"(×{2 ** (len(vae_config.get('ch_mult', (1,))) - 1)} per side)"),
        ("result", "Image", result),
    ]
    boxes = '<span class="arrow" aria-hidden="true">→</span>'.join(
        f'<div class="stage {kind}"><b>{title}</b><span>{text}</span></div>' for kind, title, text in stages)
    models = list(dict.fromkeys(model_description(trace) for trace in traces))
    settings = [("models" if len(models) > 1 else "model", " / ".join(models)), ("mode", mode),
                ("sampler", _settings_value(traces, "sampler")), ("schedule", _settings_value(traces, "schedule")),
                ("spacing", _settings_value(traces, "spacing")), ("steps", _settings_value(traces, "steps")),
                ("guidance w", _settings_value(traces, "guidance")), ("seed", _settings_value(traces, "seed")),
                ("size", size), ("η (eta)", _settings_value(traces, "eta"))]
    if mode != "text2img":
        settings.append(("strength", _settings_value(traces, "strength")))
    if first.negative_prompt:
        settings.append(("negative prompt", shorten(first.negative_prompt, 60)))
    wide = ' class="wide"'  # the model line (name, hashes, path) spans the row
    items = "".join(f'<div{wide if k.startswith("model") else ""}><dt>{html.escape(k)}</dt>'
                    f"<dd>{html.escape(v)}</dd></div>" for k, v in settings)
    return (f'<section class="card" aria-labelledby="pipeline-title"><h2 id="pipeline-title">The pipeline</h2>'
            f'<div class="pipeline">{boxes}</div><dl class="settings">{items}</dl></section>')


def loop_section(traces: list[Trace], columns: list[dict], charts_svg: str) -> str:
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
        '<span class="small" aria-hidden="true">low <span class="colorbar"></span> high</span>'
        f'{_layer_picker(traces, columns)}</div>'
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
    show_model = models_differ(traces)
    column_html = "\n".join(_column_html(c, column, panels_for(traces), show_model) for c, column in enumerate(columns))
    return (
        '<section class="card" aria-labelledby="loop-title"><h2 id="loop-title">Inside the denoising loop</h2>'
        '<p class="note">Drag the slider, press ← / → (Home / End), or play. '
        f"{FLOW_NOTE if is_flow(traces[0]) else VP_NOTE} "
        "Latent pictures are shown at the latent resolution, one square per latent pixel, and "
        "stored losslessly, as are the attention maps: their colours are the model's numbers. Pictures at the "
        "image size (VAE decodes of x̂0, x_t drawn over them, the final image) are lossy WebP, like photos.</p>"
        f'{controls}<div class="loop-body"><div class="columns{" multi" if len(columns) > 1 else ""}">'
        f'{column_html}</div>'
        f'<aside class="side" aria-label="noise schedule"><h2>Where this step sits on the schedule</h2>'
        f'{charts_svg}<p class="note">Dots: the steps the sampler visits, from high t (pure noise) down to '
        "t ≈ 0. Ring: the current step.</p></aside></div></section>")


def _layer_picker(traces: list[Trace], columns: list[dict]) -> str:
    """The layer menu (the DAAM aggregate, then every recorded layer) and, when heads were recorded, the
    head menu (or a note when there are too many for the page); empty without per-layer maps. Layers and
    heads show each map on its own scale."""
    layers = columns[0]["layers"]
    if not layers:
        return ""
    left_out = (any(key.startswith("head_attention.") for key in traces[0].tensors) and not head_frames(traces[0]))
    options = '<option value="-1" selected>aggregate (DAAM: all layers, upsampled, mean)</option>' + "".join(
        f'<option value="{i}">{html.escape(layer["label"])}</option>' for i, layer in enumerate(layers))
    picker = (f'<label class="small" for="layer">layer <select id="layer" aria-label="attention layer">{options}'
              "</select></label>")
    heads = max((len(layer["heads"] or []) for layer in layers), default=0)
    if heads:
        head_options = '<option value="-1" selected>mean of heads</option>' + "".join(
            f'<option value="{h}">head {h + 1}</option>' for h in range(heads))
        picker += (f'<label class="small" for="head">head <select id="head" aria-label="attention head">'
                   f"{head_options}</select></label>")
    if left_out:
        picker += (f'<span class="hint">per-head maps left out of this page (over {HEAD_FRAMES_MAX:,} heatmaps): '
                   "see <code>diffx attention --trace … --layer …</code></span>")
    return picker + '<span class="hint" id="layer-note"></span>'


def attention_mass_section(trace: Trace) -> str:
    """Where the attention goes, per layer: the shares of the start token, the words, the end token and the
    padding (mean over steps and pixels); empty without per-layer maps."""
    if not trace.attention_layers:
        return ""
    rows = []
    for layer in (None, *range(len(trace.attention_layers))):
        shares = mass_shares(trace, layer)
        cells = "".join(f"<td>{100 * shares[key]:.1f}%</td>" for key in ("start", "words", "end", "padding"))
        rows.append(f"<tr><td>{html.escape(layer_title(trace, layer))}</td>{cells}</tr>")
    count = trace.tokens.num_tokens
    return (
        '<section class="card" aria-labelledby="mass-title"><h2 id="mass-title">Where the attention goes</h2>'
        f'<p class="note">Each pixel spreads one unit of cross-attention over all {CONTEXT_LENGTH} positions. The '
        f"prompt's words get a share; the rest goes to the start token and to the {CONTEXT_LENGTH - count} "
        "padding positions (copies of the end token, which carry a summary of the prompt rather than a word). "
        "That is why a word's map is stretched to its own range: it wins some pixels while holding little of "
        "the total. Shares are the mean over all steps and pixels; a word of several BPE tokens is the mean "
        "of its tokens' maps.</p><div class=\"table-wrap\"><table><thead><tr><th scope=\"col\">layer</th>"
        '<th scope="col">start</th><th scope="col">words</th><th scope="col">end</th>'
        f'<th scope="col">padding</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div></section>')


def _icon(path: str) -> str:
    """A 16×16 inline SVG icon (fonts may lack the media-control characters)."""
    return f'<svg viewBox="0 0 16 16" aria-hidden="true"><path d="{path}"/></svg>'


def _column_html(c: int, column: dict, panels: dict[str, tuple[str, str]], show_model: bool = False) -> str:
    figures = []
    for key, (title, caption) in panels.items():
        if key == "x0":
            title = column["x0_label"]
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
            f'{_model_line(column, show_model)}<p class="step-info" data-col="{c}">{html.escape(column["info"][0])}</p>'
            f'<div class="panels">{"".join(figures)}{image}</div></div>')


def _model_line(column: dict, show_model: bool) -> str:
    """The column's model, when the page's columns come from different models; a note on skipped decodes."""
    line = f'<p class="note column-model">model: {html.escape(column["model"])}</p>' if show_model else ""
    note = column.get("decode_note")
    return line + (f'<p class="note decode-note">{html.escape(note)}</p>' if note else "")


def _cut_words(trace: Trace) -> set[int]:
    """Words none of whose tokens made it into the 77-token window."""
    return {index for index, row in enumerate(word_rows(trace.tokens)) if not row.positions}


def tokens_section(trace: Trace) -> str:
    """Word → BPE tokens → ids, and the 77-position window the text encoder sees."""
    tokens = trace.tokens
    count = tokens.num_tokens
    token_strings, ids = tokens.tokens, tokens.ids
    # The padding token: SD1.x pads with the end token, SD 2.x and SDXL's bigG with "!".
    pad_token, pad_id = token_strings[-1], ids[-1]
    cells, rows = [], []
    for position in range(CONTEXT_LENGTH):
        if position < count:
            word = tokens.word_ids[position]
            kind = "special" if word is None else f"w{word % 2}"
            tip = f"{position}: {token_strings[position]} ({ids[position]})"
        else:
            kind, tip = "", f"{position}: padding {pad_token} ({pad_id})"
        cells.append(f'<span class="{kind}" title="{html.escape(tip)}"></span>')
    rows.append(f'<tr class="special"><td>start</td><td class="mono">{html.escape(token_strings[0])}</td>'
                f"<td>{ids[0]}</td><td>0</td></tr>")
    for row in word_rows(tokens):
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
        rows.append(f'<tr class="special"><td>padding</td><td class="mono">{html.escape(pad_token)} '
                    f"× {CONTEXT_LENGTH - count}</td><td>{pad_id}</td><td>{count}–{CONTEXT_LENGTH - 1}</td></tr>")
    cut = tokens.truncated_text
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
