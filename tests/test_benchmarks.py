"""Every benchmark script imports: a rename elsewhere in diffx cannot leave one broken until someone runs it.

The benchmarks themselves are measurements, not tests (they run for minutes and print ratios); importing
one runs nothing, as each keeps its work under `if __name__ == "__main__"`.
"""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted(path.stem for path in (Path(__file__).parents[1] / "benchmarks").glob("*.py")
                    if path.stem != "__init__")


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_imports_and_has_a_main(name):
    module = importlib.import_module(f"benchmarks.{name}")
    assert callable(getattr(module, "main", None)), f"benchmarks/{name}.py has no main()"


def test_load_memory_measures_an_sd3_single_file() -> None:
    """The quick case of `load_memory.py`: a tiny SD3 `_incl_clips` file written, loaded in a fresh process, and the
    key=value line of its peak memory printed (the number itself is the benchmark's, not a test's)."""
    root = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_WAIT_POLICY": "PASSIVE"}
    output = subprocess.run([sys.executable, str(root / "benchmarks" / "load_memory.py"), "--config", "sd3-tiny",
                             "--dtype", "fp16"], check=True, capture_output=True, text=True, env=env).stdout
    fields = dict(item.split("=") for item in output.strip().splitlines()[-1].split())
    assert fields.keys() == {"peak_rss_mb", "baseline_mb", "file_mb", "ratio", "above_baseline"}
    assert float(fields["file_mb"]) > 100 and float(fields["above_baseline"]) > 0
