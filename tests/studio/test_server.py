"""`diffx studio`'s launch: the address is checked before the model loads (one line, exit 2), the loopback is the
default, another host is served only after a warning, and the printed URL carries the token."""

import socket

import pytest
from typer.testing import CliRunner

from diffx.cli import app
from diffx.studio import server as serve_module


@pytest.fixture
def no_server(monkeypatch):
    """uvicorn.run recorded instead of serving; the model load made to fail if a bad address ever reached it."""
    calls = []
    monkeypatch.setattr(serve_module.uvicorn, "run", lambda application, **options: calls.append(options))
    return calls


@pytest.mark.parametrize(("args", "named"), [
    (["--port", "0"], "--port 0"),
    (["--port", "70000"], "--port 70000"),
    (["--host", "no-such-host.invalid"], "--host"),
    (["--preview", "sometimes"], "preview"),
])
def test_bad_addresses_are_refused_in_one_line_before_the_model_loads(args, named, monkeypatch, no_server):
    monkeypatch.setattr("diffx.cli.options.ModelChoice.load", lambda self: pytest.fail("the model was loaded"))
    result = CliRunner().invoke(app, ["studio", *args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and named in lines[0] and len(lines[0]) <= 300, result.stderr
    assert not no_server


def test_a_port_in_use_is_refused(monkeypatch, no_server):
    monkeypatch.setattr("diffx.cli.options.ModelChoice.load", lambda self: pytest.fail("the model was loaded"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["studio", "--port", str(port)])
    assert result.exit_code == 2 and "in use" in result.stderr and not no_server


def test_the_loopback_is_the_default_and_the_url_carries_a_token(tiny_model_dir, no_server):
    result = CliRunner().invoke(app, ["studio", "--model", str(tiny_model_dir), "--port", "7861"])
    assert result.exit_code == 0, result.stderr
    assert no_server[0]["host"] == "127.0.0.1" and no_server[0]["port"] == 7861
    assert "http://127.0.0.1:7861/?token=" in result.stderr and "warning" not in result.stderr


def test_another_host_is_served_after_a_warning(tiny_model, no_server):
    lines = []
    serve_module.serve(tiny_model, "0.0.0.0", 7862, token=False, say=lines.append)
    assert lines[0].startswith("warning: serving on 0.0.0.0") and no_server[0]["host"] == "0.0.0.0"
    assert lines[1].endswith("http://127.0.0.1:7862/  (Ctrl-C stops it)")  # no token asked for: none in the URL


def test_ctrl_c_stops_the_server_cleanly_even_mid_run(tiny_model_dir, tmp_path):
    """A real `diffx studio` process: a run in progress, then SIGINT: the process ends by itself, exit 0."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "diffx", "studio", "--model", str(tiny_model_dir), "--port",
                                str(port), "--no-token"], stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert "diffx studio: open" in process.stderr.readline()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/runs", method="POST",
                                         data=json.dumps({"client": "t", "settings": {"steps": 500}}).encode(),
                                         headers={"content-type": "application/json"})
        for _ in range(100):  # uvicorn may take a moment after the line is printed
            try:
                run_id = json.loads(urllib.request.urlopen(request, timeout=10).read())["id"]
                break
            except OSError:
                time.sleep(0.1)
        events = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs/{run_id}/events", timeout=30)
        line = b""
        while not line.startswith(b"event: step"):  # the run is under way once a step arrives
            line = events.readline()
            assert line and not line.startswith(b"event: failed"), line
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
        assert "Traceback" not in process.stderr.read()
    finally:
        process.kill()
