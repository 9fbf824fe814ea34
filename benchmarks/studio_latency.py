"""How live the studio is: the embedded model served by uvicorn on the loopback, driven over real HTTP and SSE.

(a) Latency: a client posts a Run (default settings: 25 DDIM steps, x̂0 VAE-decoded at every step) and reads the
    event stream; `first_step_s` is Run → the first step's event, `run_s` Run → the last step's (medians of
    REPEATS, after a warm-up). Also printed: the same generation untraced, in-process (`generate`), for scale.
(b) Load: CLIENTS concurrent clients each start RUNS_PER_CLIENT runs one after another (bounded in count and in
    time: DEADLINE_S, loopback only) and read every stream to its end; every run must end "done" or, for the
    runs a client cancels on purpose (each client's last but one, cancelled after its first step), "cancelled".
    The server's resident memory (this process's RSS) is sampled throughout; its peak must stay under RSS_BOUND_MB.

Targets (issue #33), on 2 CPU cores: first step ≤ 0.3 s, run ≤ 1.5 s, 40/40 runs ok.
Run from the repository root (pause other CPU work first):  python -m benchmarks.studio_latency
The last line: `first_step_s=… run_s=… runs_ok=N/40 rss_mb=…`.
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvicorn

from diffx.pipeline import GenerationSettings, generate
from diffx.studio import create_app
from diffx.weights import load_model

REPEATS = 5
CLIENTS = 8
RUNS_PER_CLIENT = 5
DEADLINE_S = 600.0  # the load test stops by itself after this, whatever is left
RSS_BOUND_MB = 2048
PROMPT = "a yellow heart above a blue circle"


def rss_mb() -> float:
    """This process's resident memory now (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(model) -> tuple[uvicorn.Server, threading.Thread, int]:
    server = uvicorn.Server(uvicorn.Config(create_app(model), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, server.servers[0].sockets[0].getsockname()[1]


def post(port: int, path: str, body: dict) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", path, json.dumps(body), {"content-type": "application/json"})
    answer = json.loads(connection.getresponse().read())
    connection.close()
    return answer


def follow(port: int, run_id: str, on_step=None) -> tuple[str, list[float]]:
    """Read a run's SSE stream to its end: its final state and the time each step arrived."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("GET", f"/api/runs/{run_id}/events")
    response = connection.getresponse()
    kind, arrivals = None, []
    try:
        while True:
            line = response.readline().decode().strip()
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
                if kind == "step":
                    arrivals.append(time.perf_counter())
                    if on_step is not None:
                        on_step(len(arrivals))
                if kind in ("done", "failed", "cancelled"):
                    return kind, arrivals
            if not line and response.isclosed():
                return "lost", arrivals
    finally:
        connection.close()


def latency(port: int) -> tuple[float, float]:
    firsts, wholes = [], []
    for repeat in range(REPEATS + 1):
        start = time.perf_counter()
        run_id = post(port, "/api/runs", {"client": "latency", "settings": {"prompt": PROMPT, "seed": repeat}})["id"]
        state, arrivals = follow(port, run_id)
        assert state == "done", state
        if repeat:  # the first run warms up
            firsts.append(arrivals[0] - start)
            wholes.append(arrivals[-1] - start)
    print(f"(a) first step {', '.join(f'{t:.3f}' for t in firsts)} s; run {', '.join(f'{t:.3f}' for t in wholes)} s")
    return statistics.median(firsts), statistics.median(wholes)


def load(port: int) -> tuple[int, float]:
    """Returns how many of the CLIENTS × RUNS_PER_CLIENT runs ended as asked, and the peak RSS."""
    peak, stop, deadline = [rss_mb()], threading.Event(), time.monotonic() + DEADLINE_S

    def sample() -> None:
        while not stop.wait(0.1):
            peak.append(rss_mb())

    def client(index: int) -> int:
        ok = 0
        for run in range(RUNS_PER_CLIENT):
            if time.monotonic() > deadline:
                break
            run_id = post(port, "/api/runs", {"client": f"load-{index}",
                                              "settings": {"prompt": PROMPT, "seed": index * 10 + run}})["id"]
            cancel_this = run == RUNS_PER_CLIENT - 2

            def cancel(count: int, run_id: str = run_id, cancel_this: bool = cancel_this) -> None:
                if cancel_this and count == 1:
                    post(port, f"/api/runs/{run_id}/cancel", {})

            state, _ = follow(port, run_id, cancel)
            ok += state == ("cancelled" if cancel_this else "done")
        return ok

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(client, range(CLIENTS)))
    stop.set()
    return sum(results), max(peak)


def main() -> None:
    model = load_model(None)
    start = time.perf_counter()
    generate(model, GenerationSettings(prompt=PROMPT))
    print(f"untraced generate(), in-process, for scale: {time.perf_counter() - start:.3f} s")
    server, thread, port = start_server(model)
    try:
        first, whole = latency(port)
        ok, peak = load(port)
    finally:
        server.should_exit = True
        thread.join(10)
    total = CLIENTS * RUNS_PER_CLIENT
    print(f"(b) {ok}/{total} runs ended as asked; peak RSS {peak:.0f} MB (bound {RSS_BOUND_MB} MB)")
    print(f"first_step_s={first:.3f} run_s={whole:.3f} runs_ok={ok}/{total} rss_mb={peak:.0f}")


if __name__ == "__main__":
    main()
