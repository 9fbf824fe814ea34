"""Time to a trace GIF: `diffx trace --prompt "a red circle" --gif out.gif`, from process start to the GIF written.

Each run is a fresh process (Python start-up, imports, model load, 25 traced steps, frames, GIF) on
the embedded model with 2 CPU threads, as a user would run it (x̂0 VAE-decoded at every step under the
default `--preview auto`). Target: the median <= 6 s.

Run from the repository root:  python -m benchmarks.trace_speed [--runs 3] [--model data/shapes-world-2]
The last line printed is `seconds=<median>`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diffx.paths import EMBEDDED_MODEL_DIR

THREADS = 2
PROMPT = "a red circle"
TARGET_SECONDS = 6.0


def trace_command(gif: Path, model: Path) -> list[str]:
    """The console script when installed, else the same CLI through the interpreter."""
    executable = shutil.which("diffx")
    program = [executable] if executable else [sys.executable, "-c", "from diffx.cli import app; app()"]
    return [*program, "trace", "--prompt", PROMPT, "--gif", str(gif), "--model", str(model)]


def time_run(folder: Path, index: int, model: Path) -> float:
    """Seconds from starting the process to its exit with the GIF on disk."""
    gif = folder / f"run{index}.gif"
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    start = time.perf_counter()
    finished = subprocess.run(trace_command(gif, model), env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if finished.returncode != 0 or not gif.is_file():
        sys.exit(f"diffx trace failed (exit {finished.returncode}):\n{finished.stdout}{finished.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs (at least 3)")
    parser.add_argument("--model", type=Path, default=EMBEDDED_MODEL_DIR, help="model folder")
    args = parser.parse_args()
    runs = max(3, args.runs)
    with tempfile.TemporaryDirectory() as folder:
        times = []
        for i in range(runs):
            times.append(time_run(Path(folder), i, args.model))
            print(f"run {i + 1}: {times[-1]:.2f} s")
    median = statistics.median(times)
    verdict = "meets" if median <= TARGET_SECONDS else "misses"
    print(f"median of {runs} runs at {THREADS} threads: {median:.2f} s ({verdict} the {TARGET_SECONDS:g} s target)")
    print(f"seconds={median:.2f}")


if __name__ == "__main__":
    main()
