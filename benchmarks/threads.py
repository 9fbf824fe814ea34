"""What a busy neighbour costs a small `diffx compare`, by thread count and OpenMP wait policy.

The run: `diffx compare --x sampler=ddim,euler --steps 4` on the embedded model, each time in a fresh process
(OpenMP reads its wait policy when torch loads), timed from start to exit: wall seconds and the child's CPU
seconds. Each configuration runs quiet and beside a busy neighbour — another process multiplying 512x512
matrices with torch on one thread per physical core (or --neighbour-threads) under OpenMP's default waiting, as
an ordinary program does — started before the run and stopped after it (it also stops by itself after
`NEIGHBOUR_LIMIT_S`).
Quiet and busy runs alternate, REPEATS of each, and their medians are compared.

Configurations: threads = the physical cores, one fewer, 1 (a 2-core machine has two of these); waiting =
OpenMP's default (libgomp spins ~300,000 times before sleeping; written out as GOMP_SPINCOUNT/KMP_BLOCKTIME
so that diffx leaves it) or passive (OMP_WAIT_POLICY=PASSIVE: sleep at once). diffx's own choice
(`diffx.threads`) is its thread count spinning on an idle machine and asleep on a busy one (`machine_busy`: the
1-minute load average, which a neighbour started a second before the run does not move yet, so every
configuration here is set explicitly): marked `default idle` and `default busy`, and the default's
busy_over_quiet is the busy run of the second over the quiet run of the first. The old behaviour (every core,
spinning) is marked `old`.

Run from the repository root:  python -m benchmarks.threads [--quick] [--neighbour-threads N]
The last line is `busy_over_quiet=<the default's busy / quiet median>` with the default's settings, seconds
and the old behaviour's figures beside it; the lines above it give each configuration's.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from diffx.threads import WAIT_POLICY, default_threads, physical_cores

COMMAND = ["compare", "--x", "sampler=ddim,euler", "--steps", "4"]
REPEATS = 3
NEIGHBOUR_LIMIT_S = 300  # the neighbour's own deadline, should this script die before it stops it
# OpenMP's default waiting spelled out (libgomp's spin count, libomp's block time in ms), so diffx keeps it.
SPIN_ENV = {"GOMP_SPINCOUNT": "300000", "KMP_BLOCKTIME": "200"}
# What the environment may hold that would change a run's threads or waiting: cleared for every run.
CLEARED = ("DIFFX_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", *SPIN_ENV)
NEIGHBOUR = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
deadline = time.monotonic() + float(sys.argv[2])
a = torch.randn(512, 512)
b = a @ a
print("ready", flush=True)
while time.monotonic() < deadline:
    b = a @ a
"""


@dataclass
class Configuration:
    threads: int
    policy: str  # "spin" (OpenMP's default) or "passive"
    label: str = ""
    wall: dict[str, list[float]] = field(default_factory=lambda: {"quiet": [], "busy": []})
    cpu: dict[str, list[float]] = field(default_factory=lambda: {"quiet": [], "busy": []})

    def name(self) -> str:
        return f"threads={self.threads} wait={self.policy}" + (f" ({self.label})" if self.label else "")

    def median(self, load: str, kind: str = "wall") -> float:
        return statistics.median((self.wall if kind == "wall" else self.cpu)[load])


def configurations(cores: int, chosen: int) -> list[Configuration]:
    """Every core / one fewer / 1 thread, spinning and passive (1 thread never waits: once); diffx's defaults
    (`chosen` threads: spinning when idle, passive when busy) marked, and the old behaviour (every core,
    spinning)."""
    counts = sorted({cores, max(1, cores - 1), 1}, reverse=True)
    found = [Configuration(n, policy) for n in counts for policy in (("spin", "passive") if n > 1 else ("passive",))]
    for configuration in found:
        labels = []
        if configuration.threads == chosen:
            labels.append("default idle" if configuration.policy == "spin" or chosen == 1 else "default busy")
            if chosen == 1:
                labels.append("default busy")
        if configuration.threads == cores and configuration.policy == ("spin" if cores > 1 else "passive"):
            labels.append("old")
        configuration.label = ", ".join(labels)
    return found


def run_once(configuration: Configuration, out: Path, steps: str) -> tuple[float, float]:
    """Wall and CPU seconds of one `diffx compare` in a fresh process."""
    env = {key: value for key, value in os.environ.items() if key not in CLEARED}
    command = [sys.executable, "-m", "diffx", *COMMAND[:-1], steps, "--out", str(out), "--force",
               "--threads", str(configuration.threads)]
    env.update(SPIN_ENV if configuration.policy == "spin" else {"OMP_WAIT_POLICY": WAIT_POLICY})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if finished.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({finished.returncode}): {finished.stderr[-2000:]}")
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def start_neighbour(threads: int) -> subprocess.Popen:
    """The busy neighbour, once it computes (its torch import is not part of the measured run)."""
    neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(threads), str(NEIGHBOUR_LIMIT_S)],
                                 stdout=subprocess.PIPE, text=True,
                                 env={key: value for key, value in os.environ.items() if key not in CLEARED})
    if neighbour.stdout.readline().strip() != "ready":
        sys.exit("the busy neighbour did not start")
    return neighbour


def stop(neighbour: subprocess.Popen) -> None:
    neighbour.terminate()
    neighbour.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, 1 sampling step: checks the script runs")
    parser.add_argument("--neighbour-threads", type=int, default=0,
                        help="the busy neighbour's threads (0: one per physical core)")
    args = parser.parse_args()
    repeats, steps = (1, "1") if args.quick else (REPEATS, COMMAND[-1])
    cores, chosen = physical_cores(), default_threads()
    neighbour_threads = args.neighbour_threads or cores
    found = configurations(cores, chosen)
    print(f"{cores} physical cores ({os.cpu_count()} logical), load {os.getloadavg()[0]:.1f}; diffx's default: "
          f"{chosen} threads, spinning when idle, passive when busy; neighbour: {neighbour_threads} threads; "
          f"{repeats} repeats", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "compare.png"
        for _ in range(repeats):
            for configuration in found:
                for load in ("quiet", "busy"):
                    neighbour = start_neighbour(neighbour_threads) if load == "busy" else None
                    try:
                        wall, cpu = run_once(configuration, out, steps)
                    finally:
                        if neighbour is not None:
                            stop(neighbour)
                    configuration.wall[load].append(wall)
                    configuration.cpu[load].append(cpu)
                    print(f"  {configuration.name():42s} {load:5s} {wall:6.1f} s (cpu {cpu:5.1f})", flush=True)
    for c in found:
        print(f"{c.name():42s} quiet {c.median('quiet'):6.1f} s (cpu {c.median('quiet', 'cpu'):5.1f})  busy "
              f"{c.median('busy'):6.1f} s (cpu {c.median('busy', 'cpu'):5.1f})  "
              f"busy_over_quiet={c.median('busy') / c.median('quiet'):.2f}")
    idle = next(c for c in found if "default idle" in c.label)
    busy = next(c for c in found if "default busy" in c.label)
    old = next(c for c in found if "old" in c.label)
    print(f"busy_over_quiet={busy.median('busy') / idle.median('quiet'):.2f} threads={idle.threads} "
          f"quiet_s={idle.median('quiet'):.1f} (spinning; passive {busy.median('quiet'):.1f}) "
          f"busy_s={busy.median('busy'):.1f} old_busy_over_quiet={old.median('busy') / old.median('quiet'):.2f} "
          f"old_busy_s={old.median('busy'):.1f} busy_speedup_over_old={old.median('busy') / busy.median('busy'):.2f}")


if __name__ == "__main__":
    main()
