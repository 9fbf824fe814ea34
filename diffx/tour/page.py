"""The tour's index page: every stop's caption, the command that made its files (copyable) and the files
themselves, linked relative to the page, so the folder is the page (no network, nothing embedded twice)."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from diffx.files import atomic_output
from diffx.tour.stops import INDEX_NAME, STOPS, Stop

PICTURE_SUFFIXES = (".png", ".gif", ".jpg", ".webp")

STYLE = """
:root { --ink: #1c2230; --muted: #5a6374; --line: #d9dee7; --bg: #f4f6f9; --card: #fff; --accent: #3557c8;
        --accent-soft: #e9eefc; --warn: #fff4d6; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       background: var(--bg); }
header, main, footer { max-width: 1240px; margin: 0 auto; padding: 0 18px; }
header { padding-top: 18px; }
h1 { font-size: 1.5rem; margin: 0 0 6px; }
h2 { font-size: 1.12rem; margin: 0 0 8px; }
.lead { margin: 0 0 8px; max-width: 80ch; }
.meta { color: var(--muted); margin: 0 0 8px; font-size: .9rem; }
.warning { background: var(--warn); border: 1px solid #e6cf87; border-radius: 8px; padding: 8px 12px;
           max-width: 80ch; }
nav ol { columns: 3 260px; margin: 8px 0 0; padding-left: 22px; font-size: .92rem; }
a { color: var(--accent); }
section.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 16px 18px;
               margin: 14px 0; }
section.card p { max-width: 95ch; margin: 0 0 10px; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .88em;
       background: #f0f2f6; border-radius: 4px; padding: 0 3px; }
.command { display: flex; align-items: flex-start; gap: 8px; margin: 0 0 12px; }
.command pre { flex: 1; margin: 0; padding: 8px 10px; background: #1c2230; color: #e8ecf4; border-radius: 8px;
               white-space: pre-wrap; overflow-wrap: anywhere; }
.command pre code { background: none; padding: 0; color: inherit; }
.command button { font: inherit; font-size: .85rem; border: 1px solid var(--line); background: #fff;
                  border-radius: 6px; padding: 6px 10px; cursor: pointer; }
.command .time { color: var(--muted); font-size: .85rem; white-space: nowrap; padding-top: 7px; }
.made-by { color: var(--muted); }
.files { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
figure { margin: 0; max-width: 100%; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px;
             background: #fff; }
figcaption, .other { color: var(--muted); font-size: .88rem; margin-top: 4px; }
.other { flex-basis: 100%; margin: 0; }
footer { color: var(--muted); font-size: .9rem; padding-bottom: 24px; }
"""

COPY_SCRIPT = """
for (const button of document.querySelectorAll(".command button")) {
  button.addEventListener("click", () => {
    const text = button.parentElement.querySelector("pre").textContent;
    const select = () => { const range = document.createRange();
      range.selectNodeContents(button.parentElement.querySelector("pre"));
      getSelection().removeAllRanges(); getSelection().addRange(range); button.textContent = "selected"; };
    if (navigator.clipboard) navigator.clipboard.writeText(text).then(() => button.textContent = "copied", select);
    else select();
  });
}
"""


@dataclass(frozen=True)
class TourRun:
    """What `diffx tour` ran: each stop's command line (as a learner types it in the tour folder) and its seconds,
    on which model and device, at full or quick settings."""

    commands: dict[str, str]  # stop name → command line; stops without a command of their own are absent
    seconds: dict[str, float]
    model: str
    device: str
    quick: bool = False
    embedded: bool = True  # the captions describe the embedded model's pictures


def inline_markdown(text: str) -> str:
    """A caption's inline markdown (the README's) as HTML: `code` spans, and a [link](#section) to one of the
    README's own sections as the section's name."""
    parts = re.split(r"(`[^`]+`)", text)
    return "".join(f"<code>{html.escape(part[1:-1])}</code>" if part.startswith("`") else
                   re.sub(r"\[([^\]]+)\]\(#[^)]*\)", r"<cite>\1</cite> (a section of the README)", html.escape(part))
                   for part in parts)


def _file_html(name: str, label: str) -> str:
    """A picture inline with its label; any other file (a trace, a page) as a link with its label."""
    target, text = html.escape(name), inline_markdown(label)
    if Path(name).suffix.lower() in PICTURE_SUFFIXES:
        return (f'<figure><a href="{target}"><img src="{target}" alt="{html.escape(label)}" loading="lazy"></a>'
                f"<figcaption>{text} · <code>{target}</code></figcaption></figure>")
    return f'<p class="other"><a href="{target}">{target}</a>: {text}</p>'


def _command_html(command: str, seconds: float) -> str:
    return (f'<div class="command"><pre><code>{html.escape(command)}</code></pre><button type="button">copy</button>'
            f'<span class="time">{seconds:.1f} s</span></div>')


def _stop_html(number: int, stop: Stop, run: TourRun, numbers: dict[str, int], titles: dict[str, str]) -> str:
    parts = [f'<section class="card" id="{stop.name}">', f"<h2>{number}. {html.escape(stop.title)}</h2>"]
    parts += [f"<p>{inline_markdown(paragraph)}</p>" for paragraph in stop.caption]
    if stop.made_by:
        maker = stop.made_by
        parts.append(f'<p class="made-by">Made by the command of <a href="#{maker}">{numbers[maker]}. '
                     f"{html.escape(titles[maker])}</a>: <code>{html.escape(run.commands[maker])}</code></p>")
    else:
        parts.append(_command_html(run.commands[stop.name], run.seconds[stop.name]))
    parts.append('<div class="files">' + "".join(_file_html(file.name, file.label) for file in stop.files)
                 + "</div></section>")
    return "\n".join(parts)


def _warnings(run: TourRun) -> list[str]:
    """What makes these pictures differ from the ones the captions describe."""
    notes = []
    if run.quick:
        notes.append("A quick look (<code>--quick</code>): fewer steps and runs than the README's tour, so the "
                     "pictures are rougher and the captions' numbers (t = 719, 34 dB, …) describe the full tour's "
                     "pictures. <code>diffx tour</code> without <code>--quick</code> makes those.")
    if not run.embedded:
        notes.append(f"The captions describe the embedded model's pictures; this tour ran on "
                     f"{html.escape(run.model)}, so what you see may differ from what they say.")
    return [f'<p class="warning">{note}</p>' for note in notes]


def render_index(run: TourRun, stops: Sequence[Stop] = STOPS) -> str:
    """The index page of a tour folder as HTML: a heading, a short introduction, what ran (model, device,
    settings, time), the contents, then one card per stop."""
    numbers = {stop.name: number for number, stop in enumerate(stops, 1)}
    titles = {stop.name: stop.title for stop in stops}
    total = sum(run.seconds.values())
    settings = "quick (--quick)" if run.quick else "full, as in the README"
    contents = "".join(f'<li><a href="#{stop.name}">{html.escape(stop.title)}</a></li>' for stop in stops)
    head = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="diffx">',
        "<title>diffx — the guided tour</title>", '<link rel="icon" href="data:,">', f"<style>{STYLE}</style>",
        "</head>", "<body>", "<header>", "<h1>diffx — the guided tour</h1>",
        '<p class="lead">Stable Diffusion from the inside, one concept per stop: what the pipeline does at every '
        "step, drawn. Each stop says what its pictures show and what to notice in them, and gives the command that "
        "made them: run it in this folder to make them again (add <code>--force</code> to overwrite), or change its "
        "options to see what changes.</p>",
        f'<p class="meta">model {html.escape(run.model)} · device {html.escape(run.device)} · settings {settings} · '
        f"{len(run.commands)} commands in {total:.0f} s</p>",
        *_warnings(run), f"<nav><ol>{contents}</ol></nav>", "</header>", "<main>"]
    cards = [_stop_html(number, stop, run, numbers, titles) for number, stop in enumerate(stops, 1)]
    tail = ["</main>", "<footer><p>Every command's <code>--help</code> lists its options and ends with an example; "
            "<code>examples/tour.ipynb</code> is this tour in a notebook, through the Python API.</p></footer>",
            f"<script>{COPY_SCRIPT}</script>", "</body>", "</html>", ""]
    return "\n".join(head + cards + tail)


def write_index(folder: Path, run: TourRun, stops: Sequence[Stop] = STOPS, force: bool = False) -> Path:
    """Write `folder`/index.html (`render_index`) atomically; return its path."""
    path = Path(folder) / INDEX_NAME
    with atomic_output(path, force) as tmp:
        tmp.write_text(render_index(run, stops), encoding="utf-8")
    return path
