"""How many CPU threads torch computes with, and how its idle threads wait: `--threads` and $DIFFX_THREADS.

torch's CPU kernels split work among OpenMP threads (this build: GNU libgomp; others ship LLVM/Intel's libomp),
which meet at a barrier after every parallel operation. On a machine that is not idle:

- libgomp's idle threads spin ~300,000 times (a few ms) at each barrier before they sleep, burning the CPU
  time that the busy neighbour, and the very thread being waited for, need: on a busy 2-core machine commands
  slowed 40-185x and their CPU time rose 7-25x (issue #32). Asleep at once instead (OMP_WAIT_POLICY=PASSIVE,
  which libgomp and libomp both read; on libgomp it sets GOMP_SPINCOUNT to 0), a small `compare` beside a
  busy neighbour took 26 s and 4.7 CPU-seconds instead of 71 s and 17 (benchmarks/threads.py).
- Every barrier waits for the slowest thread, and a thread that shares its core with a busy program runs at
  half speed: from three cores on, leaving one core to the rest of the machine is faster than using all.

- On an idle machine the opposite holds: a thread asleep at every barrier must be woken for the next operation,
  and a small model's forward is hundreds of short operations — the embedded model's `diffx trace` took 7-9 s
  with its threads asleep and 5.9 s spinning on the same idle 2-core machine (benchmarks/trace_speed.py).

So diffx asks for that wait policy when the machine is busy as a command starts (`set_wait_policy`,
`machine_busy`: the 1-minute load average) and leaves OpenMP's spinning alone when it is idle; and it uses the
physical cores, one fewer from three on (`default_threads`); `--threads` or $DIFFX_THREADS choose otherwise
(`resolve_threads`).

Nothing here imports torch at module level: the wait policy is read once, when torch loads its OpenMP
runtime, so `set_wait_policy` must run before `import torch` (the CLI calls it before parsing a command).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from diffx.errors import InvalidArgumentError, elide

THREADS_ENV = "DIFFX_THREADS"
# OpenMP's own waiting settings (libgomp's spin count, libomp's block time): when the user has set any of these,
# diffx leaves the waiting to them.
OPENMP_WAIT_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
WAIT_POLICY = "PASSIVE"
CPU_TOPOLOGY = Path("/sys/devices/system/cpu")


def usable_cpus() -> list[int]:
    """The logical CPUs this process may run on (its affinity mask where the OS has one: taskset, cgroups)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def physical_cores(cpus: Iterable[int] | None = None, topology: Path = CPU_TOPOLOGY) -> int:
    """How many physical cores `cpus` (default: `usable_cpus()`) span: hyper-threads of one core (same
    package and core id in Linux's /sys/devices/system/cpu/cpuN/topology) count once; a CPU without that
    record counts as a core of its own."""
    cores = set()
    for cpu in usable_cpus() if cpus is None else cpus:
        folder = topology / f"cpu{cpu}" / "topology"
        try:
            cores.add((folder / "physical_package_id").read_text().strip() + ":"
                      + (folder / "core_id").read_text().strip())
        except OSError:
            cores.add(f"cpu{cpu}")
    return max(1, len(cores))


def default_threads(cores: int | None = None) -> int:
    """The thread count diffx uses unless told: every physical core (`cores`, default `physical_cores()`) on a
    machine of one or two, one fewer from three on.

    With idle threads asleep (`set_wait_policy`), the thread count mattered little on a busy 2-core machine:
    a small `compare` beside a busy neighbour took 26 s on 1 thread and on 2 (benchmarks/threads.py). Leaving
    a core pays on larger machines: beside a program busy on one core, a thread sharing that core runs at half
    speed and every barrier waits for it, so P − 1 threads beat P. On two cores that would leave one thread,
    halving a large model's speed on an idle machine for no gain measured on a busy one."""
    cores = physical_cores() if cores is None else cores
    return max(1, cores - 1 if cores >= 3 else cores)


def parse_threads(text: str, source: str = "--threads") -> int:
    """A thread count as written: a whole number from 1 to the CPUs this process may use (more only makes
    threads wait for each other), else one error line naming `source` ("--threads" or "$DIFFX_THREADS")."""
    most = len(usable_cpus())
    try:
        threads = int(text.strip())
    except ValueError:
        threads = 0
    if not 1 <= threads <= most:
        fix = f"--threads {default_threads()}" if source.startswith("--") else f"{source[1:]}={default_threads()}"
        raise InvalidArgumentError(f"{source} {elide(text, 30)} is not a thread count: give a whole number from 1 "
                                   f"to {most} (the CPUs this process may use), e.g. {fix}")
    return threads


def resolve_threads(threads: str | None = None) -> int | None:
    """The thread count a command runs with: `threads` (--threads) if given, else $DIFFX_THREADS, else None
    when OMP_NUM_THREADS is set (torch already starts that many: a launcher's choice, e.g. torchrun's 1 per
    process), else `default_threads()`. Checked by `parse_threads`."""
    if threads is not None:
        return parse_threads(threads)
    if os.environ.get(THREADS_ENV, "").strip():
        return parse_threads(os.environ[THREADS_ENV], f"${THREADS_ENV}")
    return None if os.environ.get("OMP_NUM_THREADS") else default_threads()


def machine_busy(cpus: int | None = None) -> bool:
    """Whether other programs keep this machine busy: the 1-minute load average (runnable processes) is at least
    half the CPUs this process may use (`cpus`, default `usable_cpus()`), and at least 1 — one program busy on a
    core of two. An idle machine sits near 0, and a diffx command just finished leaves well under 1 (a 6-second
    run on two cores adds about 0.2); a load average the OS does not give counts as busy (the cautious choice)."""
    cpus = len(usable_cpus()) if cpus is None else cpus
    try:
        load = os.getloadavg()[0]
    except OSError:
        return True
    return load >= max(1.0, 0.5 * cpus)


def set_wait_policy() -> None:
    """On a busy machine (`machine_busy`), ask OpenMP's idle threads to sleep instead of spinning
    (OMP_WAIT_POLICY=PASSIVE); on an idle one leave them spinning. Nothing changes when the user set any of
    `OPENMP_WAIT_ENV` or torch is loaded already (its OpenMP runtime read the environment then: too late)."""
    if "torch" in sys.modules or any(name in os.environ for name in OPENMP_WAIT_ENV) or not machine_busy():
        return
    os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY


def use_threads(threads: int | None) -> None:
    """Compute with `threads` CPU threads from now on (`torch.set_num_threads`); None leaves torch's count."""
    import torch  # here: importing this module must not load torch (see the module's docstring)

    if threads is not None:
        torch.set_num_threads(threads)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch computes on `count` threads inside the block (this thread's count, and the count of threads that
    start computing meanwhile), on its earlier count after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
