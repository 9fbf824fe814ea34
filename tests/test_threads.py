"""Issue #32, a busy CPU: `--threads` / $DIFFX_THREADS on every command that computes with torch, a default of the
physical cores (one left to the rest of the machine from three on), and OpenMP's idle threads told to sleep
instead of spin."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from diffx.cli import app
from diffx.errors import ERROR_LINE_CHARS, InvalidArgumentError
from diffx.threads import (
    OPENMP_WAIT_ENV,
    default_threads,
    machine_busy,
    parse_threads,
    physical_cores,
    resolve_threads,
    set_wait_policy,
    usable_cpus,
)

LOOKUPS = ("tokens", "models")  # the commands that compute nothing with torch


def fake_topology(root: Path, cores: dict[int, tuple[int, int]]) -> Path:
    """/sys/devices/system/cpu as Linux writes it: cpuN/topology/{physical_package_id, core_id}."""
    for cpu, (package, core) in cores.items():
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "physical_package_id").write_text(f"{package}\n")
        (folder / "core_id").write_text(f"{core}\n")
    return root


def test_physical_cores_count_hyper_threads_once(tmp_path):
    # 2 packages x 2 cores x 2 hyper-threads; CPU 9 has no topology record: a core of its own.
    topology = fake_topology(tmp_path, {cpu: (cpu // 4, cpu % 2) for cpu in range(8)})
    assert physical_cores(range(8), topology) == 4
    assert physical_cores([0, 2], topology) == 1  # two hyper-threads of one core (taskset to them)
    assert physical_cores([0, 1, 9], topology) == 3
    assert 1 <= physical_cores() <= len(usable_cpus())


def test_default_uses_the_physical_cores_and_leaves_one_from_three_on():
    assert [default_threads(cores) for cores in (1, 2, 3, 4, 16)] == [1, 2, 2, 3, 15]
    assert default_threads() == default_threads(physical_cores())


@pytest.mark.parametrize("text", ["0", "-1", "abc", "", "1.5", str(len(usable_cpus()) + 1), "9" * 40])
def test_bad_thread_counts_are_one_short_line(text):
    for source, fix in (("--threads", "--threads "), ("$DIFFX_THREADS", "DIFFX_THREADS=")):
        with pytest.raises(InvalidArgumentError) as caught:
            parse_threads(text, source)
        message = str(caught.value)
        assert message.startswith(source) and fix in message and len(message) <= ERROR_LINE_CHARS


def test_option_then_variable_then_omp_num_threads_then_the_default(monkeypatch):
    for name in ("DIFFX_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    assert resolve_threads() == default_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert resolve_threads() is None  # torch started that many already (torchrun sets 1 per process)
    monkeypatch.setenv("DIFFX_THREADS", " 1 ")
    assert resolve_threads() == 1
    monkeypatch.setenv("DIFFX_THREADS", "")  # set but empty: as unset
    assert resolve_threads() is None
    monkeypatch.setenv("DIFFX_THREADS", "zero")
    with pytest.raises(InvalidArgumentError, match=r"^\$DIFFX_THREADS 'zero'"):
        resolve_threads()
    assert resolve_threads(" 1") == 1  # the option wins over a bad variable: it is never read


def test_every_command_that_computes_takes_threads_with_one_help():
    helps = set()
    for name, command in typer.main.get_command(app).commands.items():
        options = {flag: param.help for param in command.params for flag in param.opts}
        assert ("--threads" in options) == (name not in LOOKUPS), name
        helps.add(options.get("--threads"))
    assert len(helps - {None}) == 1


@pytest.fixture
def run(tmp_path, monkeypatch, tiny_model_dir):
    """`diffx compare` on the tiny model in a fresh folder, with `args` and `env` (neither threads variable
    set otherwise); returns the click result and torch's thread count after it."""
    monkeypatch.chdir(tmp_path)
    for name in ("DIFFX_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)

    def invoke(*args: str, env: dict | None = None):
        torch.set_num_threads(len(usable_cpus()) + 1)  # a count no run picks: the run must set its own
        result = CliRunner().invoke(app, ["compare", "--x", "seed=0,1", "--model", str(tiny_model_dir), "--steps",
                                          "1", "--size", "32", "--device", "cpu", *args], env=env)
        return result, torch.get_num_threads()

    return invoke


def test_commands_set_the_thread_count_before_they_run(run, tmp_path):
    result, threads = run()
    assert result.exit_code == 0, result.output
    assert threads == default_threads()
    result, threads = run("--threads", "1", "--force")
    assert result.exit_code == 0 and threads == 1
    result, threads = run("--force", env={"DIFFX_THREADS": "1"})
    assert result.exit_code == 0 and threads == 1


@pytest.mark.parametrize(("args", "env", "named"), [(["--threads", "0"], None, "--threads '0'"),
                                                    ([], {"DIFFX_THREADS": "lots"}, "$DIFFX_THREADS 'lots'")])
def test_a_bad_count_is_refused_before_any_work(run, tmp_path, args, env, named):
    result, _ = run(*args, env=env)
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {named} is not a thread count")
    assert len(result.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_openmp_threads_are_told_to_sleep_before_torch_loads():
    """In a fresh process on a busy machine (its load average pretended), the policy OpenMP reads when torch loads
    (the process ends there: the rest is not the question). `diffx train`'s option parsers load torch, so the
    CLI sets it before parsing a command."""
    code = """
import importlib.abc, os, sys
os.getloadavg = lambda: (8.0, 8.0, 8.0)
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print("policy when torch loads:", os.environ.get("OMP_WAIT_POLICY"), flush=True)
            os._exit(0)
sys.meta_path.insert(0, Spy())
from diffx.cli import app
app(["train", "--out-dir", "runs/x"])
"""
    clean = {key: value for key, value in os.environ.items() if key not in OPENMP_WAIT_ENV}
    found = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True,
                           cwd=Path(__file__).parents[1])
    assert found.stdout == "policy when torch loads: PASSIVE\n", found.stdout + found.stderr


def test_the_users_openmp_settings_stay_and_a_loaded_torch_is_not_pretended_to(monkeypatch):
    for name in OPENMP_WAIT_ENV:
        monkeypatch.delenv(name, raising=False)
    set_wait_policy()  # torch is loaded in this process: its OpenMP runtime has read the environment already
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delitem(sys.modules, "torch")  # as in a fresh process
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
    set_wait_policy()
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))  # idle: the threads keep spinning
    set_wait_policy()
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.setattr(os, "getloadavg", lambda: (2.0, 2.0, 2.0))  # busy: asleep
    set_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")


@pytest.mark.parametrize(("load", "cpus", "busy"), [(0.0, 2, False), (0.8, 2, False), (1.0, 2, True), (1.0, 1, True),
                                                   (7.5, 16, False), (8.0, 16, True)])
def test_a_machine_is_busy_from_half_its_cpus(monkeypatch, load, cpus, busy):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert machine_busy(cpus) is busy


def test_torch_threads_sets_the_count_inside_and_restores_it_after():
    import torch

    from diffx.threads import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("the count comes back after an error too")
    assert torch.get_num_threads() == before
