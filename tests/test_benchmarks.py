"""Every benchmark script imports: a rename elsewhere in diffx cannot leave one broken until someone runs it.

The benchmarks themselves are measurements, not tests (they run for minutes and print ratios); importing
one runs nothing, as each keeps its work under `if __name__ == "__main__"`.
"""

import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted(path.stem for path in (Path(__file__).parents[1] / "benchmarks").glob("*.py")
                    if path.stem != "__init__")


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_imports_and_has_a_main(name):
    module = importlib.import_module(f"benchmarks.{name}")
    assert callable(getattr(module, "main", None)), f"benchmarks/{name}.py has no main()"
