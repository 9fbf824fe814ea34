"""The studio's ASGI app (Starlette): one page, a small JSON API, and each run's steps as Server-Sent Events.

Routes (every one behind `diffx.studio.security`'s Host, Origin and token checks):

    GET  /                          the page (from the package, never from a path a request names)
    GET  /static/{name}             the page's script and style, by name from a fixed list
    GET  /api/info                  the model and its defaults, the choices the form offers
    POST /api/runs                  {"client": tab id, "settings": {...}} → {"id": run id}; the tab's earlier
                                    run is cancelled at its next step
    POST /api/edits                 {"client", "run": a finished run's id, "to": prompt, "tau", "self_tau",
                                    "reweight": {word: factor}} → {"id"}: prompt-to-prompt on that run
    GET  /api/runs/{id}/events      the run's events from `?from=N` on, as SSE; closing it cancels the run
    POST /api/runs/{id}/cancel      cancel a run
    GET  /api/runs/{id}/{download}  trace.safetensors, trace.gif or report.html of a finished run, made in memory

A bad value answers 400 with {"error": one line} — the same checks and words as the CLI's.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from diffx.errors import DiffxError, InvalidArgumentError, error_line
from diffx.pipeline.settings import GenerationSettings, resolve_settings
from diffx.report.page import render_report_html, report_style
from diffx.report.sections import FLOW_PANELS, PANELS
from diffx.sampling.flow import FLOW_SAMPLERS, FLOW_SCHEDULE
from diffx.sampling.grids import KARRAS_SAMPLERS, SAMPLERS
from diffx.sampling.schedules import BETA_SCHEDULES, SPACINGS
from diffx.studio.edits import edit_work, parse_edit
from diffx.studio.engine import MAX_PROMPT_CHARS, generation_work, parse_settings
from diffx.studio.runs import RunManager
from diffx.studio.security import guards
from diffx.trace.record import Trace, trace_bytes

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

MAX_BODY_BYTES = 64 * 1024  # a request's JSON body at most (two prompts of MAX_PROMPT_CHARS fit easily)
STATIC = Path(__file__).with_name("static")
STATIC_FILES = {"studio.js": "text/javascript", "studio.css": "text/css"}
KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies and the browser from closing an idle stream
DOWNLOADS = ("trace.safetensors", "trace.gif", "report.html")


class BadRequest(Exception):
    """A request the API refuses with a one-line message (the body is too large or not JSON)."""


async def _json_body(request: Request) -> object:
    """The request's JSON body, refused past MAX_BODY_BYTES before it is all read."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest(f"the request is over {MAX_BODY_BYTES // 1024} kB; send shorter prompts")
    try:
        return json.loads(body or b"{}")
    except ValueError:
        raise BadRequest("the request is not JSON; send the settings as a JSON object") from None


def _refusal(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": error_line(message)}, status_code=status)


def create_app(model: StableDiffusion, *, token: str | None = None, model_arg: str | None = None,
               hosts: tuple[str, ...] | None = None, preview: str = "auto", keep: int | None = None) -> Starlette:
    """The studio for `model` as an ASGI app (serve it with uvicorn; tests drive it in-process).

    `token`: the per-launch secret every request must carry (None: no token, as `--no-token`). `model_arg`: how
    the command line the page shows names the model. `hosts`: the Host names the server answers to (default:
    this machine's loopback names). `preview`: x̂0 pictures ("auto" decodes when the VAE is cheap, as the CLI).
    `keep`: finished runs kept for scrubbing and downloads (an LRU; default `runs.KEEP_FINISHED`).
    """
    runs = RunManager() if keep is None else RunManager(keep=keep)
    # The report's stylesheet inlined, so the live page and the saved report look alike.
    page = (STATIC / "studio.html").read_text(encoding="utf-8").replace("__REPORT_CSS__", report_style())

    def run_of(request: Request) -> object:
        run = runs.get(request.path_params["run_id"])
        if run is None:
            return _refusal("no such run (finished runs are kept only for a while); run it again", 404)
        return run

    async def index(_request: Request) -> Response:
        return HTMLResponse(page)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:  # a fixed list: no path a request names is ever opened
            return _refusal(f"no static file {name[:40]!r}", 404)
        return Response((STATIC / name).read_bytes(), media_type=STATIC_FILES[name])

    async def info(_request: Request) -> Response:
        defaults = resolve_settings(model, GenerationSettings())
        flow = defaults.schedule == FLOW_SCHEDULE  # an SD3 model: its own samplers, schedule and panel names
        return JSONResponse({"model": model.config.name, "source": model_arg or "the embedded default model",
                             "defaults": defaults.as_dict(), "samplers": list(FLOW_SAMPLERS if flow else SAMPLERS),
                             "karras_samplers": [] if flow else list(KARRAS_SAMPLERS),
                             "schedules": [FLOW_SCHEDULE] if flow else list(BETA_SCHEDULES),
                             # a flow grid has no spacing to choose; its noisy input is x_s, s the noise share
                             "spacings": [] if flow else list(SPACINGS), "input_name": "x_s" if flow else "x_t",
                             "max_prompt_chars": MAX_PROMPT_CHARS,
                             "panels": {key: list(text) for key, text in (FLOW_PANELS if flow else PANELS).items()}})

    async def start_run(request: Request) -> Response:
        try:
            body = await _json_body(request)
            client = _client(body)
            settings = parse_settings(model, body.get("settings", {}))
            run = runs.submit(client, generation_work(model, settings, preview, model_arg))
        except (BadRequest, DiffxError) as error:
            return _refusal(str(error))
        return JSONResponse({"id": run.id})

    async def start_edit(request: Request) -> Response:
        try:
            body = await _json_body(request)
            client = _client(body)
            source = runs.get(str(body.get("run", "")))
            if source is None or not isinstance(source.result, Trace):
                raise InvalidArgumentError("edit a finished run: run a prompt first, then change a word")
            edit = parse_edit(source.result.settings, body)
            run = runs.submit(client, edit_work(model, edit))
        except (BadRequest, DiffxError) as error:
            return _refusal(str(error))
        return JSONResponse({"id": run.id})

    async def events(request: Request) -> Response:
        run = run_of(request)
        if isinstance(run, Response):
            return run
        try:
            start = max(0, int(request.query_params.get("from", "0")))
        except ValueError:
            return _refusal("from must be an event number")

        async def stream() -> AsyncIterator[dict]:
            index = start
            try:
                while True:
                    while index < len(run.events):
                        kind, data = run.events[index]
                        yield {"event": kind, "id": str(index), "data": json.dumps(data)}
                        index += 1
                    if run.finished and index >= len(run.events):
                        return
                    await run.wait_beyond(index, KEEPALIVE_S)
            finally:
                if not run.finished:  # the tab closed (or navigated away) mid-run: stop its work
                    runs.cancel(run.id)

        return EventSourceResponse(stream(), ping=int(KEEPALIVE_S))

    async def cancel(request: Request) -> Response:
        run = run_of(request)
        if isinstance(run, Response):
            return run
        runs.cancel(run.id)
        return JSONResponse({"id": run.id})

    async def download(request: Request) -> Response:
        run = run_of(request)
        if isinstance(run, Response):
            return run
        what = request.path_params["what"]
        if what not in DOWNLOADS:
            return _refusal(f"downloads are {', '.join(DOWNLOADS)}", 404)
        if not isinstance(run.result, Trace):
            return _refusal("the run has not finished; download it once its last step has arrived", 409)
        content, media = await run_in_threadpool(runs.with_model, _download, model, run.result, what, preview)
        return Response(content, media_type=media,
                        headers={"content-disposition": f'attachment; filename="diffx-{run.id}-{what}"'})

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        runs.stop()  # Ctrl-C: cancel what runs and end the worker thread

    app = Starlette(routes=[
        Route("/", index), Route("/static/{name}", static), Route("/api/info", info),
        Route("/api/runs", start_run, methods=["POST"]), Route("/api/edits", start_edit, methods=["POST"]),
        Route("/api/runs/{run_id}/events", events), Route("/api/runs/{run_id}/cancel", cancel, methods=["POST"]),
        Route("/api/runs/{run_id}/{what}", download),
    ], middleware=guards(token, hosts) if hosts is not None else guards(token), lifespan=lifespan)
    app.state.runs = runs
    return app


def _client(body: object) -> str:
    """The tab a request comes from (its runs cancel one another), checked."""
    if not isinstance(body, dict):
        raise InvalidArgumentError("the request must be a JSON object")
    client = body.get("client")
    if not isinstance(client, str) or not 1 <= len(client) <= 64:
        raise InvalidArgumentError("client must be the tab's id, a string of 1-64 characters")
    return client


def _download(model: StableDiffusion, trace: Trace, what: str, preview: str) -> tuple[bytes, str]:
    """A finished run as a file's bytes, made in memory (the GIF through a temporary folder of its own)."""
    if what == "trace.safetensors":
        return trace_bytes(trace), "application/octet-stream"
    if what == "report.html":
        return render_report_html(trace, model).encode("utf-8"), "text/html"
    from diffx.render.io import save_animation
    from diffx.views.steps import trace_frames

    with tempfile.TemporaryDirectory(prefix="diffx-studio-") as folder:
        path = Path(folder) / "trace.gif"
        save_animation(trace_frames(trace, preview, model=model), path)
        return path.read_bytes(), "image/gif"
