"""An interactive, self-contained HTML page for one trace or a sweep of traces (`diffx report --html`).

A GIF plays at its own pace; this page lets a learner stop the denoising loop at any step and look
inside it: the model input x_t, the predicted final image x̂0, the guided noise ε̂, the guidance
direction ε_c − ε_u, where each prompt word attends (DAAM maps, Tang et al. 2023), the step's t, σ, ᾱ
(σ = √((1−ᾱ)/ᾱ), as everywhere in diffx) and its place on the noise schedule — for several traces side
by side (e.g. a guidance sweep), all driven by one slider.

Every picture is computed here, in Python, with `diffx.render`; the page's JavaScript only swaps
precomputed images, moves the schedule marker and toggles classes. The file references nothing
outside itself (CSS, script and images as data: URIs are inline), so it opens from disk with no server
and no network.

Size — a 50-step, 512 px SD1.5 trace stays under 12 MB even when every tensor is random
(tests/report/test_report.py measures it):
- pictures are base64-encoded in data: URIs (+33 %); the panels whose colours are numbers (ε̂, ε_c − ε_u,
  latent previews, attention heatmaps) losslessly, as the smaller of PNG and lossless WebP, so the page
  shows exactly what `diffx.render` drew; pictures at the image size (VAE decodes of x̂0, x_t drawn over
  them, the final image) as lossy WebP at quality 75 (`report_columns.data_uri` says why each);
- latent-grid pictures (x_t and x̂0 previews, ε̂, ε_c − ε_u) stay at the latent resolution (64×64 for
  SD1.5) and the browser enlarges them with `image-rendering: pixelated`, which also shows honestly
  how coarse the latent grid is;
- VAE-decoded x̂0 frames (with `preview` "vae", or "auto" as every command resolves it: from the trace's
  `decode_every`, the rest decoded here by `model`) are downscaled to at most 256 px (`DECODED_SIZE`);
- attention maps are stored as coloured heatmaps at the attention grid's resolution (64×64) and laid
  over x̂0 by the browser (CSS opacity) rather than baked into one overlay per word: one x̂0 frame
  serves every word.
Measured on random tensors (the worst case for compression), base64 included, per step: 33 kB for ε̂ and
ε_c − ε_u, 19 kB for x_t and 36 kB for x̂0 (decoded), and 12 kB per prompt word for its two heatmaps; a
50-step 512 px trace with a 12-word prompt and x̂0 decoded at every step gives 11.5 MB. Real attention maps
are smooth and compress to a fraction of that.

Traces from `diffx attention` add a layer menu (and a head menu): every layer's heatmap per word and
step at the layer's own grid, on the per-word scale only (one scale halves the frames). Measured on the
embedded model (25 steps, 7 words, 10 layers of 4 heads, x̂0 decoded at every step): 0.31 MB without
them, 0.68 MB with the layers (~210 B a heatmap), 2.15 MB with the heads too. Per-head heatmaps are left
out of pages that would carry more than `report_columns.HEAD_FRAMES_MAX` (20,000) of them, as SD1.5's
50 steps × 12 words × 128 heads would; its 9,600 per-layer heatmaps (five of its sixteen layers at
64×64) add an estimated 20 MB (not measured).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from diffx.experiments.trajectories import convergence_section
from diffx.files import atomic_output
from diffx.report.columns import (
    check_traces,
    colorbar_css,
    column_data,
    column_label,
    default_word,
    schedule_charts_html,
    shorten,
)
from diffx.report.sections import (
    attention_mass_section,
    header_html,
    loop_section,
    panels_for,
    pipeline_section,
    tokens_section,
)
from diffx.trace.record import Trace

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

TEMPLATE_PATH = Path(__file__).with_name("template.html")


def render_report_html(traces: Sequence[Trace] | Trace, model: StableDiffusion | None = None,
                       preview: str = "auto") -> str:
    """The report page as one HTML string. See `write_report`."""
    traces = check_traces(traces)
    columns = [column_data(trace, index, column_label(traces, trace, index), model, preview)
               for index, trace in enumerate(traces)]
    charts_svg = schedule_charts_html(traces, columns)
    words = traces[0].words
    data = {
        "num_steps": traces[0].num_steps,
        "panels": {key: f"{title}: {caption}" for key, (title, caption) in panels_for(traces).items()},
        "default_words": [default_word(words)] if words else [],
        "columns": columns,
    }
    body = "\n".join([
        header_html(traces[0]),
        "<main>",
        pipeline_section(traces),
        loop_section(traces, columns, charts_svg),
        convergence_section(traces),
        attention_mass_section(traces[0]),
        tokens_section(traces[0]),
        "</main>",
        f"<footer>Made by diffx {html.escape(str(traces[0].meta.get('versions', {}).get('diffx', '')))}: "
        "every picture was computed from the trace file; this page needs no network.</footer>",
    ])
    prompt = traces[0].settings.prompt
    slots = {
        "TITLE": html.escape(f"diffx · {shorten(prompt, 60) or 'trace'}"),
        "COLORBAR": colorbar_css(),
        "BODY": body,
        # "</" inside a <script> element would end it early; JSON allows the escaped form "<\/".
        "DATA": json.dumps(data, ensure_ascii=False).replace("</", "<\\/"),
    }
    # One pass, so a prompt that happens to contain "__DATA__" is not filled in a second time.
    return re.sub(r"__(TITLE|COLORBAR|BODY|DATA)__", lambda match: slots[match.group(1)],
                  TEMPLATE_PATH.read_text(encoding="utf-8"))


def report_style() -> str:
    """The report page's stylesheet (its `<style>` element's text, colour bar filled in), which the live page
    (`diffx.studio`) uses too, so the two look alike."""
    template = TEMPLATE_PATH.read_text(encoding="utf-8")
    style = template[template.index("<style>") + len("<style>"):template.index("</style>")]
    return style.replace("__COLORBAR__", colorbar_css())


def write_report(traces: Sequence[Trace] | Trace, path: str | Path, force: bool = False,
                 model: StableDiffusion | None = None, preview: str = "auto") -> Path:
    """Write the interactive HTML report of `traces` to `path` and return the path.

    This is what `diffx report TRACE --html out.html` and `--html` on `diffx trace` / `diffx cfg-sweep`
    call, e.g. `write_report([load_trace(p) for p in paths], "out.html", force=True)`.

    `traces`: one trace, or several with the same number of steps (e.g. the traces of a guidance sweep),
    shown as side-by-side columns driven by one timestep slider. `preview`: how x̂0 is drawn, as in every
    view (`views.steps.resolve_preview`): "vae" decodes (the trace's stored decodes, the other steps decoded
    with `model`, the model that made the traces), "fast" the latent preview, "auto" decodes when the trace
    holds every decode or `model`'s decoder is cheap. A trace of another model than `model` is not decoded
    with it (its column says so). `force`: overwrite an existing file.
    The page shows the pipeline with the run's settings, the tokens and the 77-token window, and per
    step x_t, x̂0, ε̂, ε_c − ε_u, the selected words' attention over x̂0 and the schedule position.
    Raises InvalidArgumentError for no traces or traces of different lengths, OutputPathError when
    `path` exists (without `force`) or cannot be written.
    """
    page = render_report_html(traces, model=model, preview=preview)
    with atomic_output(path, force=force) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(path)


