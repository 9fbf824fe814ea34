"""The shipped flow model (data/shapes-world-flow: an MMDiT trained with rectified flow on shapes-world-2's world and
latents) by its name, as a learner reaches it: listed after the default, traced with its inherited tiny preview
decoder, put beside shapes-world-2 by compare's model axis. (Every command on an SD3-family model is
tests/test_cli_sd3.py's; what the model draws is tests/test_golden.py's and benchmarks/embedded_quality.py's.)"""

from __future__ import annotations

import pytest
from PIL import Image
from typer.testing import CliRunner

from diffx.cli import app
from diffx.experiments import sweeps
from diffx.paths import EMBEDDED_MODEL_DIR, FLOW_MODEL_DIR


@pytest.fixture
def diffx(tmp_path, monkeypatch):
    """Run `diffx ARGS…` in a fresh folder with no model chosen; returns the click result."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIFFX_MODEL", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return lambda *args: CliRunner().invoke(app, [*map(str, args)])


def ok(result) -> str:
    assert result.exit_code == 0, result.output + result.stderr + repr(result.exception)
    return result.output


def test_models_lists_both_shipped_models_the_u_net_one_first(diffx) -> None:
    rows = [line for line in ok(diffx("models")).splitlines() if "shapes-world" in line]
    assert "default" in rows[0] and "shapes-world-2" in rows[0]
    assert any("shapes-world-flow" in row for row in rows[1:])


@pytest.mark.parametrize("preview", ["tiny", "vae"])
def test_trace_by_name(diffx, preview) -> None:
    output = ok(diffx("trace", "--model", "shapes-world-flow", "--prompt", "a red circle", "--steps", "4",
                      "--preview", preview, "--gif", "flow.gif"))
    assert "wrote flow.gif" in output
    with Image.open("flow.gif") as animation:
        assert animation.n_frames == 4


def test_compare_puts_the_two_models_side_by_side(diffx, monkeypatch) -> None:
    axes, compare = [], sweeps.compare

    def kept(model, settings, x, y, *args):
        axes.append(x)
        return compare(model, settings, x, y, *args)

    monkeypatch.setattr(sweeps, "compare", kept)
    output = ok(diffx("compare", "--prompt", "a red circle left of a blue square", "--x",
                      "model=shapes-world-2,shapes-world-flow", "--steps", "4", "--out", "two.png"))
    assert "wrote two.png" in output
    ((name, models),) = axes
    assert name == "model" and [m.source for m in models] == [str(EMBEDDED_MODEL_DIR), str(FLOW_MODEL_DIR)]
    assert [type(m).__name__ for m in models] == ["StableDiffusion", "StableDiffusion3"]


def test_the_report_charts_what_a_flow_state_is_made_of(diffx) -> None:
    ok(diffx("trace", "--model", "shapes-world-flow", "--prompt", "a red circle", "--steps", "4", "--html", "f.html"))
    page = open("f.html", encoding="utf-8").read()
    assert "1 − s — the share of x₀ in x_s" in page and "log-SNR λ = 2 log((1 − s) / s)" in page
    assert "ᾱ_t — how much signal is left" not in page
