"""Time to the lab's GIF: the default `diffx lab` job (train the 2-D model, run six samplers, draw, write
lab.gif), run in-process through the CLI, from before diffx and torch are imported to the GIF on disk.

2 CPU threads (`--threads 2`), as on the target machine (the lab itself computes on one: its matrices are
tiny). Target: <= 20 s. Also printed: the process's CPU seconds (what the run costs on an idle machine: on a
busy one the wall time grows with the load, the CPU time barely), the 1-minute load average, the GIF's size.

Run from the repository root:  python -m benchmarks.lab_speed
The last line printed is `seconds=<wall seconds>`.
"""

from __future__ import annotations

import time

START_WALL, START_CPU = time.perf_counter(), time.process_time()

import os  # noqa: E402  (imports after the clock starts: they are part of what a user waits for)
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from diffx.cli import app  # noqa: E402

THREADS = 2
TARGET_SECONDS = 20.0


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        gif = Path(folder) / "lab.gif"
        app(["lab", "--gif", str(gif), "--threads", str(THREADS)], standalone_mode=False)
        seconds, cpu = time.perf_counter() - START_WALL, time.process_time() - START_CPU
        size_mb = gif.stat().st_size / 1e6
    print(f"cpu_seconds={cpu:.1f} load_1min={os.getloadavg()[0]:.1f} gif_mb={size_mb:.2f} "
          f"target_seconds={TARGET_SECONDS:g}")
    print(f"seconds={seconds:.1f}")


if __name__ == "__main__":
    main()
