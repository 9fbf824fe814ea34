"""The studio's runs: one generation at a time per model, the others waiting in a visible queue; every run's
events kept in order so a page can (re)read them from any point; cancellation at the next step; finished runs
kept in a bounded LRU.

A run is a function `work(emit, check)` executed on the manager's one worker thread: it calls `emit(kind, data)`
for each event the page should see ("step", …) and `check()` between steps, which raises `RunCancelled` once the
run was cancelled (a new Run from the same tab, a closed tab, the server stopping). Its return value is kept as
the run's `result` (the trace a download is made from). The page reads events over Server-Sent Events
(`diffx.studio.app`), each consumer at its own pace, from an index, so a reconnecting tab misses nothing.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from diffx.errors import DiffxError, error_line

Emit = Callable[[str, dict], None]
Work = Callable[[Emit, Callable[[], None]], Any]

KEEP_FINISHED = 16  # finished runs kept for scrubbing and downloads (each holds one trace: ~0.5 MB embedded)
MAX_QUEUED = 32  # runs waiting at once, all clients together; one more is refused with a message


class RunCancelled(Exception):
    """Raised inside a run's work by `check()` once the run was cancelled."""


@dataclass
class Run:
    """One run: its events so far (kind, data) in order, its state and, when done, its result."""

    id: str
    client: str
    state: str = "queued"  # queued → running → done | failed | cancelled
    events: list[tuple[str, dict]] = field(default_factory=list)
    result: Any = None
    cancel: threading.Event = field(default_factory=threading.Event)
    _waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def emit(self, kind: str, data: dict) -> None:
        """Append an event and wake every page waiting for one (from any thread)."""
        with self._lock:
            self.events.append((kind, data))
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    async def wait_beyond(self, count: int, timeout: float) -> None:
        """Return once there are more than `count` events (or after `timeout` seconds, for a keep-alive)."""
        event = asyncio.Event()
        with self._lock:
            if len(self.events) > count:
                return
            self._waiters.append((asyncio.get_running_loop(), event))
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass


class RunManager:
    """The queue and the worker thread: `submit` a run, `cancel` it, read it back with `get` while it is kept."""

    def __init__(self, keep: int = KEEP_FINISHED, max_queued: int = MAX_QUEUED):
        self.keep = keep
        self.max_queued = max_queued
        self._runs: OrderedDict[str, Run] = OrderedDict()  # every live run, finished ones in LRU order
        self._queue: list[tuple[Run, Work]] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        # The model is used by one thread at a time: a run, or a download that draws with it (attention hooks
        # and the fast CPU path are per model, so two users at once could see each other's numbers).
        self._model_lock = threading.Lock()
        self._worker = threading.Thread(target=self._serve, name="diffx-studio-runs", daemon=True)
        self._worker.start()

    def submit(self, client: str, work: Work) -> Run:
        """Queue `work` for `client` (a tab), cancelling that client's earlier runs that have not finished."""
        with self._lock:
            if len(self._queue) >= self.max_queued:
                raise DiffxError(f"{len(self._queue)} runs are waiting already; try again when some have finished")
            for run in self._runs.values():
                if run.client == client and not run.finished:
                    self._cancel(run)
            run = Run(id=secrets.token_hex(8), client=client)
            self._runs[run.id] = run
            self._queue.append((run, work))
            self._announce_positions()
            self._wake.notify()
        return run

    def get(self, run_id: str) -> Run | None:
        """The run, if still kept; a finished one becomes the most recently used."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None and run.finished:
                self._runs.move_to_end(run_id)
            return run

    def cancel(self, run_id: str) -> None:
        """Cancel a run: a queued one never starts, a running one stops at its next step."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None and not run.finished:
                self._cancel(run)

    def stop(self) -> None:
        """Cancel everything and end the worker (the server is shutting down)."""
        with self._lock:
            self._stopping = True
            for run in list(self._runs.values()):
                if not run.finished:
                    self._cancel(run)
            self._wake.notify()
        self._worker.join(timeout=30)

    def with_model(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` while no run uses the model (a download drawn with it waits until the current run ends)."""
        with self._model_lock:
            return function(*args)

    @property
    def kept(self) -> int:
        """How many runs are held in memory now (queued, running and finished)."""
        with self._lock:
            return len(self._runs)

    # ---- inside the lock ----
    def _cancel(self, run: Run) -> None:
        run.cancel.set()
        queued = [entry for entry in self._queue if entry[0] is run]
        if queued:  # never started: finished now
            self._queue.remove(queued[0])
            self._finish(run, "cancelled", {})
            self._announce_positions()

    def _announce_positions(self) -> None:
        for position, (run, _work) in enumerate(self._queue, start=1):
            run.emit("queued", {"position": position})

    def _finish(self, run: Run, state: str, data: dict) -> None:
        run.state = state
        run.emit(state, data)
        self._runs.move_to_end(run.id)
        finished = [key for key, kept in self._runs.items() if kept.finished]
        for key in finished[: max(0, len(finished) - self.keep)]:  # the least recently used go first
            del self._runs[key]

    # ---- the worker thread ----
    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                run, work = self._queue.pop(0)
                run.state = "running"
                self._announce_positions()
            run.emit("running", {})
            with self._model_lock:
                state, data = self._execute(run, work)
            with self._lock:
                self._finish(run, state, data)

    @staticmethod
    def _execute(run: Run, work: Work) -> tuple[str, dict]:
        def check() -> None:
            if run.cancel.is_set():
                raise RunCancelled

        try:
            run.result = work(run.emit, check)
        except RunCancelled:
            return "cancelled", {}
        except DiffxError as error:
            return "failed", {"message": error_line(str(error))}
        except Exception as error:  # noqa: BLE001 - a bug must not kill the worker; the page says what happened
            return "failed", {"message": error_line(f"internal error ({type(error).__name__}: {error}); "
                                                    "please report it with the settings you used")}
        return "done", {}
