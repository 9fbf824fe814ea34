"""What the studio runs: a page's request checked into `ResolvedSettings` (the same checks as the CLI's), and
the generation that streams each step to the page as it is computed, drawn by the report's own components
(`diffx.report.columns.step_frames`), so the live page and the saved report never show a step differently.

The run is `diffx.trace.generate_traced` with a tracer listening — the same numbers as `diffx trace`, bit for
bit — plus a hook after every step that turns the step just recorded into the page's frames.
"""

from __future__ import annotations

import math
import queue
import shlex
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from diffx.errors import InvalidArgumentError, elide
from diffx.pipeline.denoiser import grid_for, schedule_for
from diffx.pipeline.observers import ImageRun
from diffx.pipeline.settings import GenerationSettings, ResolvedSettings, resolve_settings
from diffx.render.charts import schedule_charts
from diffx.report.columns import COLUMN_COLOURS, data_uri, fit_picture, step_frames
from diffx.sampling.flow import FLOW_SCHEDULE
from diffx.studio.runs import Emit
from diffx.threads import default_threads, torch_threads
from diffx.trace.checks import model_identity
from diffx.trace.record import Trace, trace_meta
from diffx.trace.tracer import Tracer, generate_traced
from diffx.views.steps import X0_LABELS, resolve_preview, x0_pictures

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

MAX_PROMPT_CHARS = 2000  # far more than CLIP's 77 tokens read; the page says which words were cut
# The settings a page may send, with their types; anything else in a request is refused by name.
KIND_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}
FIELDS: dict[str, type] = {"prompt": str, "negative_prompt": str, "sampler": str, "steps": int, "guidance": float,
                           "schedule": str, "spacing": str, "seed": int, "karras": bool, "eta": float,
                           "guidance_rescale": float}
# The CLI option that sets each field, for the command line the page shows.
OPTIONS = {"negative_prompt": "--negative-prompt", "sampler": "--sampler", "steps": "--steps",
           "guidance": "--guidance", "schedule": "--schedule", "spacing": "--spacing", "seed": "--seed",
           "guidance_rescale": "--guidance-rescale"}


def parse_settings(model: StableDiffusion, request: object) -> ResolvedSettings:
    """A page's JSON settings → `ResolvedSettings`, every value checked as the CLI checks it (one-line errors)."""
    if not isinstance(request, dict):
        raise InvalidArgumentError("the request must be a JSON object of settings, such as {\"prompt\": \"a cat\"}")
    unknown = sorted(set(request) - set(FIELDS))
    if unknown:
        raise InvalidArgumentError(f"unknown setting {elide(unknown[0], 30)}; the settings are {', '.join(FIELDS)}")
    values = {}
    for name, value in request.items():
        kind = FIELDS[name]
        if value is None:
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InvalidArgumentError(f"{name} must be {KIND_NAMES[kind]}, got {elide(str(value), 30)}")
        if kind is float and not math.isfinite(value):
            raise InvalidArgumentError(f"{name} must be a finite number, got {value}")
        if kind is str and len(value) > MAX_PROMPT_CHARS:
            raise InvalidArgumentError(f"{name} has {len(value)} characters; the text encoder reads 77 tokens, "
                                       f"so keep it under {MAX_PROMPT_CHARS}")
        values[name] = value
    return resolve_settings(model, GenerationSettings(**values))


def command_line(settings: ResolvedSettings, model_arg: str | None, threads: int | None = None) -> str:
    """The `diffx trace` command that makes the same run (defaults the model fills in are left out). `threads`: the
    CPU threads the run's network computed with, named when the CLI would use another count — a float sum split
    among other threads rounds differently, so the same pixels need the same count."""
    parts = ["diffx", "trace", "--prompt", settings.prompt]
    for name, option in OPTIONS.items():
        value = getattr(settings, name)
        if name == "negative_prompt" and not value or name == "guidance_rescale" and not value:
            continue
        parts += [option, f"{value:g}" if isinstance(value, float) else str(value)]
    if settings.karras:
        parts.append("--karras")
    if model_arg:
        parts += ["--model", model_arg]
    if threads is not None and threads != default_threads():
        parts += ["--threads", str(threads)]
    parts += ["--gif", "trace.gif", "--html", "trace.html"]
    return shlex.join(parts)


def schedule_chart(model: StableDiffusion, settings: ResolvedSettings) -> tuple[str, dict]:
    """The report's schedule charts for the steps this run will visit, and each step's marker positions."""
    schedule = schedule_for(model, settings.schedule)
    timesteps = np.asarray(grid_for(model, settings).model_timesteps(), dtype=np.float64)
    train_abar = schedule.alphas_cumprod.double().numpy()
    visited = np.interp(timesteps, np.arange(len(train_abar)), train_abar)
    svg, markers = schedule_charts({settings.schedule: train_abar}, [(timesteps, visited)], COLUMN_COLOURS[:1],
                                   flow=settings.schedule == FLOW_SCHEDULE)
    return svg, markers[0]


def drawing_threads(preview: str) -> tuple[int, int]:
    """(sampler, drawing) CPU threads out of this thread's count: one goes to drawing when it decodes. Read in the
    sampler's thread before the drawing thread starts (that one sets its own count, and a thread that has not
    computed yet would take it)."""
    total = torch.get_num_threads()
    return (max(1, total - 1), 1) if preview != "fast" else (total, 1)


class StepStreamer:
    """The hook after every step: the step just recorded → the page's frames, sent with `emit`.

    Drawing a step (decoding its x̂0, encoding the panels) runs on a thread of its own, beside the sampler: while
    the network computes step k + 1, step k is drawn on another core, so a run takes about as long as its
    denoising alone instead of denoising plus drawing (when drawing costs less than a step: the tiny decoder,
    latent previews; a VAE decode costs more, and then the run waits for the drawing instead). While a decoder
    draws, the sampler gives up one of its CPU threads to it (`threads`; on the embedded model one thread
    computes a step about as fast as two), none to latent previews (mostly PNG encoding, while a large model
    needs every thread). Steps reach the page in order; the run's end waits for the last one. `check` raises
    `RunCancelled` once the run was cancelled, so it stops at its next step, its queued steps dropped.
    """

    def __init__(self, model: StableDiffusion, preview: str, emit: Emit, check: Callable[[], None], identity: dict):
        self.model, self.preview, self.emit, self.check, self.identity = model, preview, emit, check, identity
        self.meta: dict | None = None
        self._drawn = 0
        self.threads = drawing_threads(preview)
        self._steps: queue.Queue[Trace | None] = queue.Queue()
        self._failure: BaseException | None = None
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._draw_steps, name="diffx-studio-frames", daemon=True)

    def __enter__(self) -> StepStreamer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            self._cancelled.set()  # the run failed or was cancelled: its remaining steps are not drawn
        self._steps.put(None)
        self._thread.join()
        if self._failure is not None and kind is None:
            raise self._failure

    def __call__(self, run: ImageRun, tracer: Tracer) -> None:
        self.check()
        if self._failure is not None:
            raise self._failure
        if self.meta is None:  # the same for every step of the run: made once, not 25 times
            self.meta = trace_meta(self.model, run, self.identity)
        self._steps.put(tracer.latest(run, self.meta))

    def _draw(self, step: Trace) -> None:
        """Emit one step's frames (steps are drawn in the order they come, so the count is the step's index)."""
        decoded = None if self.preview == "fast" else fit_picture(x0_pictures(step, [0], self.preview, self.model)[0])
        self.emit("step", {"index": self._drawn, **step_frames(step, 0, decoded)})
        self._drawn += 1

    def _draw_steps(self) -> None:
        torch.set_num_threads(self.threads[1])
        while (step := self._steps.get()) is not None:
            if self._cancelled.is_set() or self._failure is not None:
                continue
            try:
                with torch.inference_mode():
                    self._draw(step)
            except BaseException as error:  # noqa: BLE001 - handed to the sampler's thread, which raises it
                self._failure = error


def refine_steps(model: StableDiffusion, trace: Trace, emit: Emit, check: Callable[[], None]) -> None:
    """After a run previewed with the tiny decoder: every step's x̂0 decoded by the VAE, the exact picture, sent as a
    "refine" event (a "step" event's frames, `x0_label` the VAE's) that replaces the step's preview on the page.

    The tiny decoder approximates (fine fills such as dots and stripes, flat backgrounds: it reaches ~22 dB PSNR to
    the VAE on the embedded model), so the steps a learner scrubs through after the run are the VAE's own, as in a
    saved report; while it runs, the cheap preview keeps each step's arrival live. On every thread, after sampling.
    """
    with torch.inference_mode():
        for index in range(trace.num_steps):
            check()
            decoded = fit_picture(x0_pictures(trace, [index], "vae", model)[0])
            emit("refine", {"index": index, "x0_label": X0_LABELS["vae"], **step_frames(trace, index, decoded)})


def generation_work(model: StableDiffusion, settings: ResolvedSettings, preview: str = "auto",
                    model_arg: str | None = None) -> Callable[[Emit, Callable[[], None]], Trace]:
    """The studio run for `settings`: emits "start" (the plan: words, steps, chart, command line, x̂0 label),
    one "step" per sampler step, "image" (the final picture) and, when the steps were previewed with the tiny
    decoder, one "refine" per step (`refine_steps`); returns the run's `Trace`."""
    chosen = resolve_preview(preview, model=model, live=True)
    chart, markers = schedule_chart(model, settings)

    def work(emit: Emit, check: Callable[[], None]) -> Trace:
        tokens = model.tokenizer.encode(settings.prompt)
        emit("start", {"steps": settings.steps, "words": tokens.words, "cut": tokens.truncated_text,
                       "chart": chart, "markers": markers,
                       "command": command_line(settings, model_arg, drawing_threads(chosen)[0]),
                       "x0_label": X0_LABELS[chosen], "settings": settings.as_dict(),
                       "aspect": f"{settings.width} / {settings.height}"})
        with StepStreamer(model, chosen, emit, check, model_identity(model)) as streamer, torch_threads(
                streamer.threads[0]), torch.inference_mode():
            generation = generate_traced(model, settings, after_step=streamer)
        emit("image", {"image": data_uri(generation.images[0])})  # the very pixels of `diffx denoise`
        if chosen == "tiny":
            refine_steps(model, generation.traces[0], emit, check)
        return generation.traces[0]

    return work
