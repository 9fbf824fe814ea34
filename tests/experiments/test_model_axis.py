"""compare's model axis (diffx.experiments.model_axis), through the command line: the tiny U-Net model beside a tiny
rectified-flow folder, each run with its own sampler, schedule and guidance where none is given, with what is given
applied to both; and the refusals, in one line before any model runs: --model beside the axis, a model name that
names nothing, a setting one of the models cannot take. (Tiny models: a first run at a new size costs the loaded test
machine seconds per convolution shape with the embedded model's widths.)"""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from diffx.cli import app
from diffx.embedded.flow_model import flow_model_config
from diffx.experiments import sweeps
from diffx.models.any_model import build_model
from diffx.models.configs import tiny
from diffx.sampling.flow import FLOW_SCHEDULE
from diffx.weights.load import save_model

QUICK = ("--prompt", "a red circle", "--steps", "2", "--size", "32", "--device", "cpu")
FLOW_GUIDANCE = 2.0  # the flow folder's default guidance: not the tiny U-Net's 7.5


@pytest.fixture(scope="module")
def flow_folder(tmp_path_factory):
    """A random tiny rectified-flow model (the embedded flow model's family and format, on the tiny world)."""
    torch.manual_seed(0)
    config = replace(flow_model_config(tiny(), depth=1, heads=2, head_dim=16), default_guidance=FLOW_GUIDANCE)
    model = build_model(config)
    return save_model(model, tmp_path_factory.mktemp("flow") / "tiny-flow", dtype=torch.float32)


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Run `diffx compare ARGS…` in a fresh folder; returns the click result and the calls of `sweeps.compare` (the
    models it was given on the axes, and the `Comparison` it returned)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIFFX_MODEL", raising=False)
    calls, compare = [], sweeps.compare

    def kept(model, settings, x, y, *args):
        calls.append({"axes": (x, y), "result": compare(model, settings, x, y, *args)})
        return calls[-1]["result"]

    monkeypatch.setattr(sweeps, "compare", kept)
    return lambda *args: (CliRunner().invoke(app, ["compare", *map(str, args)]), calls)


@pytest.mark.parametrize("on", ["x", "y"])
def test_each_model_runs_with_its_own_defaults(run, tiny_model_dir, flow_folder, on):
    models = f"model={tiny_model_dir},{flow_folder}"
    result, calls = run(*QUICK, *(("--x", models) if on == "x" else ("--y", models, "--x", "seed=3")), "--out", "m.png")
    assert result.exit_code == 0, result.output + result.stderr + repr(result.exception)
    assert "wrote m.png" in result.output
    (call,) = calls
    name, loaded = call["axes"][0 if on == "x" else 1]
    assert name == "model" and [m.config.name for m in loaded] == ["tiny", "tiny-flow"]  # loaded from the names
    generations = call["result"].generations
    runs = [generation.settings[0] for generation in (generations[0] if on == "x" else [r[0] for r in generations])]
    assert [r.sampler for r in runs] == ["ddim", "euler"]  # each model's own: the U-Net's DDIM, flow Euler
    assert [r.schedule for r in runs] == ["scaled_linear", FLOW_SCHEDULE]
    assert [r.guidance for r in runs] == [m.config.default_guidance for m in loaded] == [7.5, FLOW_GUIDANCE]
    assert [(r.steps, r.width, r.seed) for r in runs] == [(2, 32, 0 if on == "x" else 3)] * 2  # as given


def _refused(result) -> str:
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, (result.output, result.stderr, repr(result.exception))
    assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) <= 300, result.stderr
    return lines[0]


@pytest.mark.parametrize(("args", "says"), [
    (("--model", "shapes-world-2"), "--model and a model axis both choose the model; drop --model"),
    (("--sampler", "dpmpp_2m"), "model tiny-flow: a rectified-flow model samples with euler, heun, ddim, not dpmpp_2m"),
    (("--x", "model=shapes-world-2,missing-model"), "model axis value missing-model: no such file or folder"),
], ids=["with-model", "setting-one-model-cannot-take", "unknown-name"])
def test_bad_model_axis_is_refused_in_one_line_before_any_run(run, tiny_model_dir, flow_folder, monkeypatch, args,
                                                              says):
    def no_run(*_args, **_kwargs):
        raise AssertionError("a model ran: the bad input was not refused first")

    monkeypatch.setattr("diffx.models.unet.UNet.forward", no_run)
    monkeypatch.setattr("diffx.models.mmdit.MMDiT.forward", no_run)
    result, _ = run(*QUICK, "--x", f"model={tiny_model_dir},{flow_folder}", *args, "--out", "m.png")
    assert says in _refused(result)
    assert not Path("m.png").exists()
