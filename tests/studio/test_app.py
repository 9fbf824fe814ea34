"""The studio's ASGI app in-process (Starlette's test client): every step arrives as an event and the run equals
`diffx.pipeline.generate`; downloads are valid files; Host, Origin and the token are enforced; bad values answer
one line; the browser never names a file; closing the event stream cancels the run."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from diffx.pipeline import GenerationSettings, generate
from diffx.studio import create_app
from diffx.studio.engine import drawing_threads
from diffx.threads import torch_threads
from diffx.trace import load_trace
from diffx.views.steps import resolve_preview
from tests.models.sd3_tiny import tiny_sd3

SETTINGS = {"prompt": "a red circle", "steps": 3, "seed": 5, "guidance": 2.0}


@pytest.fixture(scope="module")
def client(tiny_model):
    app = create_app(tiny_model, token="secret", hosts=("testserver",))
    with TestClient(app) as test_client:
        test_client.get("/?token=secret")  # sets the cookie, as the browser's first visit does
        yield test_client


def _events(client, run_id, start=0):
    """The run's events (kind, data) up to its end, read from the SSE stream."""
    events, kind = [], None
    with client.stream("GET", f"/api/runs/{run_id}/events?from={start}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind:
                events.append((kind, json.loads(line.split(":", 1)[1])))
                if kind in ("done", "failed", "cancelled"):
                    break
    return events


def _picture(uri):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def test_every_step_arrives_and_the_run_is_the_pipeline_s(client, tiny_model, tmp_path):
    run_id = client.post("/api/runs", json={"client": "tab", "settings": SETTINGS}).json()["id"]
    events = _events(client, run_id)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done" and kinds.count("step") == 3, kinds
    start = dict(events)["start"]
    assert start["steps"] == 3 and start["words"] == ["a", "red", "circle"]
    assert start["command"].startswith("diffx trace --prompt 'a red circle'") and "--seed 5" in start["command"]
    steps = [data for kind, data in events if kind == "step"]
    assert [step["index"] for step in steps] == [0, 1, 2]
    assert set(steps[0]["frames"]) == {"xt", "x0", "eps", "guide"} and len(steps[0]["heat"]["word"]) == 3
    # The sampler's threads are the studio's (one fewer than all, one drawing), which its command line passes as
    # --threads: 1 and 2 threads may round one grey level apart on some CPUs (AVX-512 here).
    with torch_threads(drawing_threads(resolve_preview("auto", model=tiny_model, live=True))[0]):
        expected = generate(tiny_model, GenerationSettings(**SETTINGS)).images[0]
    assert np.array_equal(_picture(dict(events)["image"]["image"]), expected)  # the same pixels as the CLI's
    trace_file = tmp_path / "run.safetensors"
    trace_file.write_bytes(client.get(f"/api/runs/{run_id}/trace.safetensors").content)
    trace = load_trace(trace_file)  # a valid trace file, checked as `diffx render` checks it
    assert np.array_equal(trace.tensors["image"].numpy(), expected) and trace.num_steps == 3
    gif = client.get(f"/api/runs/{run_id}/trace.gif")
    assert gif.headers["content-type"] == "image/gif" and Image.open(io.BytesIO(gif.content)).n_frames == 3
    page = client.get(f"/api/runs/{run_id}/report.html")
    assert page.status_code == 200 and "Inside the denoising loop" in page.text
    # A page that reconnects reads the events again from where it stopped.
    assert _events(client, run_id, start=len(events) - 1) == events[-1:]


@pytest.mark.parametrize(("headers", "path"), [
    ({"host": "evil.example"}, "/api/info"),  # DNS rebinding: another name pointed at 127.0.0.1
    ({"origin": "http://evil.example"}, "/api/info"),  # another site's page
    ({"origin": "http://testserver.evil.example"}, "/api/info"),
])
def test_foreign_hosts_and_origins_are_refused(client, headers, path):
    response = client.get(path, headers=headers)
    assert response.status_code in (400, 403) and "Traceback" not in response.text


def test_same_origin_requests_pass(client):
    assert client.get("/api/info", headers={"origin": "http://testserver"}).status_code == 200


def test_the_token_is_required(tiny_model):
    app = create_app(tiny_model, token="secret", hosts=("testserver",))
    with TestClient(app) as fresh:
        assert fresh.get("/").status_code == 403
        assert fresh.get("/api/info").status_code == 403
        assert fresh.get("/?token=wrong").status_code == 403
        page = fresh.get("/?token=secret")
        assert page.status_code == 200 and "HttpOnly" in page.headers["set-cookie"]
        assert fresh.get("/api/info").status_code == 200  # the cookie now carries it


@pytest.mark.parametrize(("body", "named"), [
    ({"client": "t", "settings": {"steps": 0}}, "steps"),
    ({"client": "t", "settings": {"steps": "many"}}, "steps"),
    (b'{"client": "t", "settings": {"guidance": NaN}}', "guidance"),  # Python's JSON reader takes NaN
    (b'{"client": "t", "settings": {"guidance": -Infinity}}', "guidance"),
    ({"client": "t", "settings": {"sampler": "nope"}}, "sampler"),
    ({"client": "t", "settings": {"prompt": "x" * 5000}}, "prompt"),
    ({"client": "t", "settings": {"height": 64}}, "unknown setting"),
    ({"client": "t", "settings": {"seed": -1}}, "seed"),
    ({"client": "t", "settings": {"karras": True, "sampler": "ddim"}}, "karras"),
    # check_settings, as the CLI's: an empty name is not the default, prompts of spaces or broken weights refused
    ({"client": "t", "settings": {"sampler": ""}}, "sampler"),
    ({"client": "t", "settings": {"negative_prompt": "   "}}, "negative prompt"),
    ({"client": "t", "settings": {"prompt": "a (red circle"}}, "prompt"),
    ({"settings": {}}, "client"),
    ({"client": "t", "settings": "a cat"}, "JSON object"),
])
def test_bad_values_answer_one_line_and_run_nothing(client, body, named):
    response = client.post("/api/runs", content=body) if isinstance(body, bytes) else \
        client.post("/api/runs", json=body)
    error = response.json()["error"]
    assert response.status_code == 400 and named in error and len(error) <= 300 and "\n" not in error


def test_bodies_are_size_limited_and_must_be_json(client):
    assert "kB" in client.post("/api/runs", content=b"{" + b" " * 100_000).json()["error"]
    assert "JSON" in client.post("/api/runs", content=b"not json").json()["error"]


@pytest.mark.parametrize("name", ["../app.py", "..%2Fapp.py", "studio.html", "/etc/passwd", "__init__.py"])
def test_static_files_come_from_a_fixed_list(client, name):
    assert client.get(f"/static/{name}").status_code == 404


def test_downloads_are_refused_for_unknown_runs_and_names(client):
    assert client.get("/api/runs/nosuchrun/trace.gif").status_code == 404
    run_id = client.post("/api/runs", json={"client": "dl", "settings": SETTINGS}).json()["id"]
    _events(client, run_id)
    assert client.get(f"/api/runs/{run_id}/passwd").status_code == 404


def test_an_edit_runs_prompt_to_prompt_on_a_finished_run(client):
    run_id = client.post("/api/runs", json={"client": "ed", "settings": SETTINGS}).json()["id"]
    _events(client, run_id)
    bad = client.post("/api/edits", json={"client": "ed", "run": run_id, "to": "a blue circle", "tau": 2})
    assert bad.status_code == 400 and "tau" in bad.json()["error"]
    bad = client.post("/api/edits", json={"client": "ed", "run": run_id, "to": "a [blue:0.5] circle"})
    assert bad.status_code == 400 and "edit prompt" in bad.json()["error"]  # checked before the edit is queued
    edit_id = client.post("/api/edits", json={"client": "ed", "run": run_id, "to": "a blue circle",
                                              "tau": 0.6, "reweight": {"blue": 2}}).json()["id"]
    events = _events(client, edit_id)
    edit = dict(events)["edit"]
    assert set(edit["pictures"]) == {"source", "plain", "injected"}
    assert [data["done"] for kind, data in events if kind == "progress"] == list(range(1, 10))
    source = dict(_events(client, run_id))["image"]["image"]
    # The edit computes its source again, recording attention to inject: the same picture to float rounding, which
    # on one thread (the test's under README's two workers) moves a value by one grey level in a few pixels.
    difference = np.abs(_picture(edit["pictures"]["source"]).astype(int) - _picture(source).astype(int))
    assert difference.max() <= 1 and difference.mean() < 0.01


def test_closing_the_event_stream_cancels_the_run(client):
    run_id = client.post("/api/runs", json={"client": "closer", "settings": {**SETTINGS, "steps": 200}}).json()["id"]
    with client.stream("GET", f"/api/runs/{run_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("event: step"):
                break  # the tab closes after its first step
    run = client.app.state.runs.get(run_id)
    for _ in range(500):
        if run.finished:
            break
        import time
        time.sleep(0.02)
    assert run.state == "cancelled" and sum(kind == "step" for kind, _ in run.events) < 200


def test_an_empty_prompt_runs_unconditionally_with_no_words(client):
    run_id = client.post("/api/runs", json={"client": "empty", "settings": {**SETTINGS, "prompt": ""}}).json()["id"]
    events = _events(client, run_id)
    assert events[-1][0] == "done" and dict(events)["start"]["words"] == []
    assert all(data["heat"] == {"word": [], "shared": []} for kind, data in events if kind == "step")


def test_info_speaks_the_models_vocabulary(client):
    """A U-Net model's page offers spacings and calls its input x_t; an SD3 model's (a flow grid: no spacing to
    choose) calls it x_s and offers the flow samplers."""
    unet = client.get("/api/info").json()
    assert unet["input_name"] == "x_t" and unet["spacings"] and "ddim" in unet["samplers"]
    with TestClient(create_app(tiny_sd3(), hosts=("testserver",))) as flow_client:
        flow = flow_client.get("/api/info").json()
    assert flow["input_name"] == "x_s" and flow["spacings"] == [] and flow["schedules"] == ["flow"]
