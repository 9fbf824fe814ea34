"""diffx in Jupyter (Colab, VS Code, JupyterLab): results that show themselves, and a progress bar.

`import diffx.notebook` (or `%load_ext diffx.notebook`) once in a notebook, and then the last expression
of a cell shows as a picture or a page instead of a repr:

- a `Trace` or a `TracedGeneration`: the interactive HTML report (`diffx.report.render_report_html`,
  self-contained as it is) in an iframe `srcdoc`, with the result as a PNG for front ends without HTML;
- a `Generation`: its images in a row (`Generation._repr_png_`, which needs no import of this module);
- `CfgSweep`, `Comparison`, `NoiseViews` (`diffx.experiments`): their grid as a PNG;
- the views (`diffx.views.*`) already return PIL images, which Jupyter shows.

`report(traces)` shows several traces in one page (columns synced to one slider), `StepBar()` is a
`progress=` callback for `generate`, `generate_traced` and the experiments: a `tqdm.auto` bar, a widget
where ipywidgets is installed and a text bar elsewhere.

The lower layers know nothing of notebooks: this module (in the views layer, above the trace, the
experiments and the report) registers IPython display formatters for their types when it is imported.
"""

from __future__ import annotations

import html
import io
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image
from tqdm import TqdmWarning

from diffx.errors import DiffxError
from diffx.experiments.sweeps import CfgSweep, Comparison, NoiseViews
from diffx.pipeline.generation import Generation
from diffx.report.page import render_report_html
from diffx.sampling.samplers import StepRecord
from diffx.trace.record import Trace
from diffx.trace.tracer import TracedGeneration

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

with warnings.catch_warnings():  # without ipywidgets tqdm.auto says so, then draws a text bar, which Jupyter shows
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm

REPORT_HEIGHT = 900  # px; the page scrolls inside its frame


def report_iframe(traces: Sequence[Trace] | Trace, model: StableDiffusion | None = None,
                  height: int = REPORT_HEIGHT) -> str:
    """The report page of `traces` as an <iframe srcdoc=…>: the page's own scripts run inside it, nothing
    is fetched, and the notebook's styles do not leak in (nor the page's out)."""
    page = render_report_html(traces, model)
    return (f'<iframe srcdoc="{html.escape(page, quote=True)}" sandbox="allow-scripts" '
            f'style="width: 100%; height: {int(height)}px; border: 1px solid #ddd" loading="lazy"></iframe>')


@dataclass
class ReportFrame:
    """`report(...)`: shows the report page of several traces inline (and `.html` is the page's iframe)."""

    html: str

    def _repr_html_(self) -> str:
        return self.html


def report(traces: Sequence[Trace] | Trace, model: StableDiffusion | None = None,
           height: int = REPORT_HEIGHT) -> ReportFrame:
    """The interactive report of `traces` (e.g. `[g.traces[0] for g in sweep.generations]`), inline."""
    return ReportFrame(report_iframe(traces, model, height))


def png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def trace_html(trace: Trace) -> str | None:
    """A trace's report in an iframe, or None (the front end then shows the PNG) when it lacks what the
    page needs (e.g. one recorded with latents and x̂0 only)."""
    try:
        return report_iframe(trace)
    except DiffxError:
        return None


def trace_png(trace: Trace) -> bytes | None:
    """The trace's final image, when the trace holds one (`generate_traced` stores it)."""
    image = trace.tensors.get("image")
    if image is None:
        return None
    picture = Image.fromarray(image.numpy())
    factor = max(1, 192 // picture.height)  # as Generation._repr_png_: small pictures enlarged, pixels kept
    return png_bytes(picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST))


def traced_generation_html(generation: TracedGeneration) -> str | None:
    try:
        return report_iframe(generation.traces) if generation.traces else None
    except DiffxError:
        return None


def grid_png(result: CfgSweep | Comparison | NoiseViews) -> bytes:
    return png_bytes(result.grid)


def summary(result: object) -> str:
    """One line instead of a dataclass repr full of tensors (the text shown beside the picture)."""
    if isinstance(result, Trace):
        return f"Trace({result.settings.prompt!r}, {result.num_steps} steps, keys: {', '.join(result.tensors)})"
    if isinstance(result, Generation):
        first = result.settings[0]
        traced = f", {len(result.traces)} traces" if isinstance(result, TracedGeneration) else ""
        return (f"{type(result).__name__}({first.prompt!r}, {len(result.images)} image(s), {first.sampler}, "
                f"{first.steps} steps, seeds {[s.seed for s in result.settings]}{traced})")
    width, height = result.grid.size
    return f"{type(result).__name__}(grid {width}x{height})"


def pretty_summary(result: object, printer, cycle: bool) -> None:
    printer.text(summary(result))


HTML_FORMATTERS = {Trace: trace_html, TracedGeneration: traced_generation_html}
PNG_FORMATTERS = {Trace: trace_png, CfgSweep: grid_png, Comparison: grid_png, NoiseViews: grid_png}
TEXT_FORMATTERS = {kind: pretty_summary for kind in (Trace, Generation, CfgSweep, Comparison, NoiseViews)}


def register(ipython=None) -> bool:
    """Register the display formatters with `ipython` (default: the running shell). False outside IPython."""
    if ipython is None:
        module = sys.modules.get("IPython")
        ipython = module.get_ipython() if module is not None else None
    if ipython is None:
        return False
    formatters = ipython.display_formatter.formatters
    for mime, table in (("text/html", HTML_FORMATTERS), ("image/png", PNG_FORMATTERS),
                        ("text/plain", TEXT_FORMATTERS)):
        for kind, function in table.items():
            formatters[mime].for_type(kind, function)
    return True


def load_ipython_extension(ipython) -> None:
    """`%load_ext diffx.notebook`."""
    register(ipython)


class StepBar:
    """A `progress=` callback that draws one `tqdm.auto` bar per run (a run starts at a record with
    index 0): step i/N and the timestep, in a notebook as a widget (a text bar without ipywidgets)."""

    def __init__(self, description: str = "denoising"):
        self.description, self.run, self.bar = description, 0, None

    def __call__(self, record: StepRecord) -> None:
        if record.index == 0 or self.bar is None:
            self.close()
            self.run += 1
            label = self.description if self.run == 1 else f"{self.description} ({self.run})"
            self.bar = tqdm(total=record.num_steps, desc=label, unit="step", leave=True)
        self.bar.set_postfix_str(f"t={record.timestep:g}", refresh=False)
        self.bar.update(record.index + 1 - self.bar.n)
        if record.index + 1 >= record.num_steps:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


register()
