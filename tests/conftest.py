"""Shared fixtures, and how a pytest-xdist worker computes (README's test command runs two workers)."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: each computes on one thread (OpenMP reads this when torch loads, just below), as two
    # workers of two threads would wait on each other at every barrier; the commands a test starts inherit it.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # xdist gives its workers COLUMNS=80, and a rich Console made at import would keep that width for good,
    # whatever a test's monkeypatch.setenv("COLUMNS", …) says later.
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)

import pytest  # noqa: E402
import torch  # noqa: E402

from diffx.models.configs import tiny  # noqa: E402
from diffx.models.stable_diffusion import build  # noqa: E402
from diffx.weights.load import save_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random-weight tiny model saved as a diffx folder, for `--model` in CLI tests."""
    torch.manual_seed(0)
    return save_model(build(tiny()), tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_trace_file(tiny_model_dir, tmp_path_factory):
    """A trace of a 2-step, 32 px run of the tiny model with every layer's attention maps (`diffx attention
    --save-trace`), for `render`, `report` and `attention --trace`."""
    from typer.testing import CliRunner

    from diffx.cli import app

    folder = tmp_path_factory.mktemp("tiny-trace")
    result = CliRunner().invoke(app, ["attention", "--prompt", "a red circle", "--steps", "2", "--size", "32",
                                      "--device", "cpu", "--model", str(tiny_model_dir), "--out",
                                      str(folder / "a.png"), "--save-trace", str(folder / "t.safetensors")])
    assert result.exit_code == 0, result.output
    return folder / "t.safetensors"


@pytest.fixture(scope="module")
def tiny_model():
    """A random-weight tiny model (seed 0), built once per test module, in eval mode."""
    torch.manual_seed(0)
    return build(tiny()).eval()


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A command sets torch's thread count (--threads, diffx.threads): put it back after each test, so that no
    test runs with the count another one left."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-goldens", action="store_true",
                     help="rewrite tests/golden/*.png from the embedded model instead of comparing with them")


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    """True under `pytest --update-goldens`: golden-image tests write their images instead of comparing."""
    return request.config.getoption("--update-goldens")
