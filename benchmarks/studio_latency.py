"""How live the studio is: `diffx studio` (the real command, in its own process, as a user starts it) serving the
embedded model on the loopback, driven over real HTTP and SSE by this process (as a browser would be: another
process).

(a) Latency: a client posts a Run (default settings: 25 DDIM steps, x̂0 drawn at every step with the studio's
    live preview, `--preview`) and reads the event stream; `first_step_s` is Run → the first step's event,
    `run_s` Run → the last step's, `done_s` Run → the run's end (after a tiny-decoder preview: every step's x̂0
    decoded again by the VAE, sent as "refine" events), medians of REPEATS, after a warm-up.
(b) Load: CLIENTS concurrent clients each start RUNS_PER_CLIENT runs one after another (bounded in count and in
    time: DEADLINE_S, loopback only) and read every stream to its end; every run must end "done" or, for the
    runs a client cancels on purpose (each client's last but one, cancelled after its first step), "cancelled".
    The server process's resident memory is sampled throughout; its peak must stay under RSS_BOUND_MB.

Targets (issue #33), on 2 CPU cores: first step ≤ 0.3 s, run ≤ 1.5 s, 40/40 runs ok.
Run from the repository root (pause other CPU work first):
    python -m benchmarks.studio_latency [--preview auto|tiny|vae|fast] [--model M] [--skip-load]
The last line: `first_step_s=… run_s=… done_s=… runs_ok=N/40 rss_mb=… preview=…`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPEATS = 5
CLIENTS = 8
RUNS_PER_CLIENT = 5
DEADLINE_S = 600.0  # the load test stops by itself after this, whatever is left
RSS_BOUND_MB = 2048
PROMPT = "a yellow heart above a blue circle"


def rss_mb(pid: int) -> float:
    """Process `pid`'s resident memory now (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, int]:
    """`diffx studio` in a process of its own; returns once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "diffx", "studio", "--no-token", "--port", str(port), "--preview", args.preview]
    if args.model:
        command += ["--model", args.model]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"diffx studio stopped: {server.stderr.read()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/")
            connection.getresponse().read()
            return server, port
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("diffx studio did not answer within 120 s")


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


def latency(port: int) -> tuple[float, float, float]:
    """Medians of Run → first step, Run → last step, and Run → done (after a tiny-decoder run: every step's x̂0
    decoded again by the VAE, the "refine" events)."""
    firsts, wholes, dones = [], [], []
    for repeat in range(REPEATS + 1):
        start = time.perf_counter()
        run_id = post(port, "/api/runs", {"client": "latency", "settings": {"prompt": PROMPT, "seed": repeat}})["id"]
        state, arrivals = follow(port, run_id)
        assert state == "done", state
        if repeat:  # the first run warms up
            firsts.append(arrivals[0] - start)
            wholes.append(arrivals[-1] - start)
            dones.append(time.perf_counter() - start)
    print(f"(a) first step {', '.join(f'{t:.3f}' for t in firsts)} s; run {', '.join(f'{t:.3f}' for t in wholes)} s; "
          f"done {', '.join(f'{t:.3f}' for t in dones)} s")
    return statistics.median(firsts), statistics.median(wholes), statistics.median(dones)


def load(port: int, pid: int) -> tuple[int, float]:
    """Returns how many of the CLIENTS × RUNS_PER_CLIENT runs ended as asked, and the server's peak RSS."""
    peak, stop, deadline = [rss_mb(pid)], threading.Event(), time.monotonic() + DEADLINE_S

    def sample() -> None:
        while not stop.wait(0.1):
            peak.append(rss_mb(pid))

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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preview", default="auto", help="the studio's --preview (auto: its live default)")
    parser.add_argument("--model", default=None, help="the studio's --model (default: the embedded model)")
    parser.add_argument("--skip-load", action="store_true", help="only the latency part (a)")
    args = parser.parse_args()
    server, port = start_server(args)
    try:
        first, whole, done = latency(port)
        ok, peak = (0, rss_mb(server.pid)) if args.skip_load else load(port, server.pid)
    finally:
        server.terminate()
        server.wait(30)
    total = 0 if args.skip_load else CLIENTS * RUNS_PER_CLIENT
    print(f"(b) {ok}/{total} runs ended as asked; peak RSS {peak:.0f} MB (bound {RSS_BOUND_MB} MB)")
    print(f"first_step_s={first:.3f} run_s={whole:.3f} done_s={done:.3f} runs_ok={ok}/{total} rss_mb={peak:.0f} "
          f"preview={args.preview}")


if __name__ == "__main__":
    main()
