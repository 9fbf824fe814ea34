"""The studio's run queue (`diffx.studio.runs`): one run at a time in order, a visible queue position, cancellation
(queued: never starts; running: stops at its next step; a tab's new run cancels its last), errors as one line,
and the bounded LRU of finished runs."""

import threading
import time

import pytest

from diffx.errors import InvalidArgumentError
from diffx.studio.runs import RunManager


def _wait(run, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not run.finished:
        assert time.monotonic() < deadline, f"run {run.id} did not finish: {run.state}"
        time.sleep(0.01)


def _steps(count, gate=None, log=None, name=""):
    def work(emit, check):
        for index in range(count):
            if gate is not None:
                gate.wait(5)
            check()
            if log is not None:
                log.append((name, index))
            emit("step", {"index": index})
        return f"result {name}"
    return work


@pytest.fixture
def manager():
    runs = RunManager(keep=2)
    yield runs
    runs.stop()


def test_runs_go_one_at_a_time_in_order_and_say_their_queue_position(manager):
    gate, log = threading.Event(), []
    first = manager.submit("tab-1", _steps(3, gate, log, "a"))
    second = manager.submit("tab-2", _steps(3, gate, log, "b"))
    assert ("queued", {"position": 1}) in second.events or ("queued", {"position": 2}) in second.events
    gate.set()
    _wait(first)
    _wait(second)
    assert [name for name, _ in log] == ["a"] * 3 + ["b"] * 3  # never interleaved
    assert first.result == "result a" and first.state == "done" and first.events[-1] == ("done", {})
    assert ("queued", {"position": 1}) in second.events  # it moved up when the first started


def test_a_new_run_from_the_same_tab_cancels_the_last_at_its_next_step(manager):
    gate, log = threading.Event(), []
    first = manager.submit("tab", _steps(50, gate, log, "a"))
    while first.state != "running":
        time.sleep(0.01)
    second = manager.submit("tab", _steps(2, None, log, "b"))
    gate.set()
    _wait(second)
    assert first.state == "cancelled" and first.events[-1][0] == "cancelled"
    assert len([1 for name, _ in log if name == "a"]) <= 1  # stopped at its next step
    assert second.state == "done"


def test_a_queued_run_cancelled_never_starts(manager):
    gate, log = threading.Event(), []
    first = manager.submit("tab-1", _steps(2, gate, log, "a"))
    queued = manager.submit("tab-2", _steps(2, None, log, "b"))
    manager.cancel(queued.id)
    gate.set()
    _wait(first)
    assert queued.state == "cancelled" and not [1 for name, _ in log if name == "b"]
    assert ("running", {}) not in queued.events


def test_errors_end_the_run_with_one_line_and_the_worker_goes_on(manager):
    def bad_value(_emit, _check):
        raise InvalidArgumentError("guidance must be >= 0 " + "x" * 500)

    def bug(_emit, _check):
        raise ZeroDivisionError("oops")

    refused, broken = manager.submit("a", bad_value), manager.submit("b", bug)
    after = manager.submit("c", _steps(1))
    for run in (refused, broken, after):
        _wait(run)
    assert refused.state == "failed" and len(refused.events[-1][1]["message"]) <= 300
    assert broken.state == "failed" and "ZeroDivisionError" in broken.events[-1][1]["message"]
    assert after.state == "done"


def test_finished_runs_are_kept_in_a_bounded_lru(manager):
    runs = [manager.submit(f"tab-{i}", _steps(1)) for i in range(2)]
    for run in runs:
        _wait(run)
    assert manager.get(runs[0].id) is runs[0]  # used: now the most recent
    third = manager.submit("tab-3", _steps(1))
    _wait(third)
    assert manager.get(runs[1].id) is None  # the least recently used went
    assert manager.get(runs[0].id) is runs[0] and manager.kept == 2


def test_the_queue_is_bounded():
    runs = RunManager(max_queued=2)
    gate = threading.Event()
    try:
        first = runs.submit("a", _steps(1, gate))
        while first.state != "running":
            time.sleep(0.01)
        runs.submit("b", _steps(1))
        runs.submit("c", _steps(1))
        with pytest.raises(Exception, match="waiting already"):
            runs.submit("d", _steps(1))
    finally:
        gate.set()
        runs.stop()
