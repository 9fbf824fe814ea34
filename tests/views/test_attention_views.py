"""The attention explorer: per-layer, per-head and per-step grids, the self-attention view, the files
`write_attention_views` writes and the `diffx attention` command (tiny random model, 32 px, 3 steps)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffx.cli import app
from diffx.errors import InvalidArgumentError, OutputPathError
from diffx.pipeline.settings import GenerationSettings
from diffx.trace.record import Trace, load_trace
from diffx.trace.tracer import generate_traced
from diffx.views import attention as attention_views
from diffx.views import steps as views
from diffx.views.attention import (
    EXPLORER_PANEL,
    explorer_options,
    head_grid,
    layer_grid,
    mass_shares,
    self_attention_view,
    steps_grid,
    write_attention_views,
)
from diffx.views.steps import fit_panel, x0_panels
from tests.report.test_report import page_data

PROMPT = "a red cuboid"


@pytest.fixture(scope="module")
def explored(tiny_model):
    settings = GenerationSettings(prompt=PROMPT, steps=3, guidance=7.5, height=32, width=32, seed=1)
    return generate_traced(tiny_model, settings, options=explorer_options(heads=True)).traces[0]


@pytest.fixture(scope="module")
def plain(explored):
    """The explored trace as the default record keeps it: no per-layer maps, no self-attention maps."""
    meta = {k: v for k, v in explored.meta.items() if k not in ("attention_layers", "self_attention_grid")}
    tensors = {k: v for k, v in explored.tensors.items()
               if not k.startswith(("layer_", "head_")) and k != "self_attention_maps"}
    return replace(explored, meta=meta, tensors=tensors)


def test_grids_have_a_row_per_layer_head_and_step(explored):
    """Rows: aggregate + 7 layers; mean + each head; 3 steps. Columns: start, 3 words, end, padding."""
    panel = 64
    heights = {name: picture.height for name, picture in (
        ("layers", layer_grid(explored, panel=panel)), ("heads", head_grid(explored, "up.0", 2, panel=panel)),
        ("steps", steps_grid(explored, "down.0", panel=panel)))}
    columns = layer_grid(explored, 1, panel=panel).width - 100  # row labels take at most 100 px here
    assert 6 * panel < columns + 100 and columns < 7 * panel  # start, 3 words, end, padding
    heads = explored.attention_layers[3]["heads"]
    assert len(explored.attention_layers) == 7 and heads >= 2
    per_row = (heights["layers"] - heights["steps"]) / (8 - 3)  # aggregate + 7 layers; 3 steps
    assert per_row > panel
    assert heights["heads"] - heights["steps"] == pytest.approx((1 + heads - 3) * per_row, abs=3)  # mean + heads


def test_mass_shares_sum_to_one_and_read_the_maps(explored):
    for layer in (None, 0, 3):
        shares = mass_shares(explored, layer)
        assert sum(shares.values()) == pytest.approx(1, abs=2e-3)
        kept = explored.token_maps(None, layer)
        assert shares["start"] == pytest.approx(float(kept[0].mean()))
        assert shares["words"] == pytest.approx(float(kept[1:-1].mean((1, 2)).sum()), rel=1e-5)


def test_self_attention_view_marks_the_pixel_and_shows_its_row(explored):
    view = self_attention_view(explored, pixel=(0, 0), panel=96)
    assert view.width > 6 * 96  # picture, row, RGB, PC1-3
    row = explored.tensors["self_attention_maps"].float().mean(0)[0].reshape(16, 16)
    assert row.shape == (16, 16)  # pixel (0, 0) of 32 px is cell 0 of the 16×16 grid
    with pytest.raises(InvalidArgumentError, match=r"pixel \(32, 0\) is outside the 32×32 picture"):
        self_attention_view(explored, pixel=(32, 0))


def test_errors_name_the_fix(explored, plain):
    with pytest.raises(InvalidArgumentError, match="step 9 is out of range: the trace has 3 steps"):
        layer_grid(explored, 9)
    with pytest.raises(InvalidArgumentError, match="no per-layer attention; record it"):
        layer_grid(plain)
    with pytest.raises(InvalidArgumentError, match="no head_attention.0; .*attention_detail='heads'"):
        head_grid(load_trace_without_heads(explored), 0)
    with pytest.raises(InvalidArgumentError, match="no self_attention_maps"):
        self_attention_view(plain)


def load_trace_without_heads(trace: Trace) -> Trace:
    return replace(trace, tensors={k: v for k, v in trace.tensors.items() if not k.startswith("head_")})


def _pictures_under_maps(monkeypatch, view) -> list[np.ndarray]:
    """The pictures `view()` lays attention maps over, in order (one per panel, rows first)."""
    seen = []
    real_overlay = attention_views.overlay
    monkeypatch.setattr(attention_views, "overlay", lambda picture, *args, **kwargs: seen.append(picture) or
                        real_overlay(picture, *args, **kwargs))
    view()
    return seen


@pytest.mark.parametrize("preview", ["fast", "vae"])
def test_a_steps_maps_lie_over_that_steps_x0(tiny_model, explored, monkeypatch, preview):
    """Step 1's maps lie over step 1's x̂0 (drawn with the chosen preview), not over the final picture; the
    mean over all steps over the final image."""
    size = (EXPLORER_PANEL, EXPLORER_PANEL)
    columns = len(explored.token_columns(explored.token_maps(0))[0])
    (first, last), label = x0_panels(explored, [0, 2], preview, tiny_model, size)
    final = fit_panel(explored.tensors["image"].numpy(), size, smooth=True)
    assert not np.array_equal(first, final)
    under = _pictures_under_maps(monkeypatch, lambda: steps_grid(explored, steps=[1, 3], preview=preview,
                                                                 model=tiny_model))
    assert len(under) == 2 * columns
    assert all(np.array_equal(picture, first) for picture in under[:columns])
    assert all(np.array_equal(picture, last) for picture in under[columns:])
    (alone,), _ = x0_panels(explored, [0], preview, tiny_model, size)  # decoded alone: the rounding of a batch of 1
    under = _pictures_under_maps(monkeypatch, lambda: layer_grid(explored, 1, preview=preview, model=tiny_model))
    assert all(np.array_equal(picture, alone) for picture in under)
    under = _pictures_under_maps(monkeypatch, lambda: layer_grid(explored, preview=preview, model=tiny_model))
    assert all(np.array_equal(picture, final) for picture in under)
    assert label == {"fast": "x̂0 (latent preview)", "vae": "x̂0 (VAE decode)"}[preview]


def test_a_caption_says_what_the_maps_lie_over(explored, monkeypatch):
    captions = []
    real_caption_bar = attention_views.caption_bar
    monkeypatch.setattr(attention_views, "caption_bar", lambda picture, text, **kwargs: captions.append(text) or
                        real_caption_bar(picture, text, **kwargs))
    steps_grid(explored, preview="fast")
    layer_grid(explored, 2, preview="fast")
    layer_grid(explored, preview="fast")
    assert captions[::2] == ["maps over each row's own step's x̂0 (latent preview), in grey",
                             "maps over that step's x̂0 (latent preview), in grey",
                             "maps over the final image, in grey"]


def test_write_attention_views(explored, tmp_path):
    out = tmp_path / "layers.png"
    written = write_attention_views(explored, out, layer="up.1", step=2, pixel=(5, 30))
    assert [p.name for p in written] == ["layers.png", "layers_steps.png", "layers_heads.png", "layers_self.png"]
    assert all(Image.open(p).size[0] > 300 for p in written)
    with pytest.raises(OutputPathError, match="exists"):
        write_attention_views(explored, out)
    fresh = tmp_path / "fresh.png"
    with pytest.raises(InvalidArgumentError, match="unknown layer 'up.9'"):
        write_attention_views(explored, fresh, layer="up.9")
    assert not fresh.exists() and not list(tmp_path.glob("fresh*"))


def test_cli_attention_new_run_and_saved_trace(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    fast = ["--model", str(tiny_model_dir), "--steps", "2", "--size", "32", "--device", "cpu"]
    result = runner.invoke(app, ["attention", "--prompt", PROMPT, "--heads", "--layer", "mid", "--out", "a.png",
                                 "--save-trace", "t.safetensors", "--html", "r.html", *fast])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert {p.name for p in tmp_path.iterdir()} >= {"a.png", "a_steps.png", "a_heads.png", "a_self.png",
                                                    "t.safetensors", "r.html"}
    trace = load_trace("t.safetensors")
    assert len(trace.attention_layers) == 7 and "head_attention.6" in trace.tensors
    assert 'id="layer"' in (tmp_path / "r.html").read_text() and 'id="head"' in (tmp_path / "r.html").read_text()
    # x̂0 as `trace` shows it: --preview auto decodes the tiny model's cheap decoder, and the trace keeps the decodes.
    assert page_data((tmp_path / "r.html").read_text())["columns"][0]["x0_label"] == "x̂0 (VAE decode)"
    assert views.missing_decodes(trace) == []
    again = runner.invoke(app, ["attention", "--trace", "t.safetensors", "--out", "b.png", "--step", "2",
                                "--pixel", "3,4"])
    assert again.exit_code == 0, again.output + repr(again.exception)
    assert np.asarray(Image.open("b_self.png")).std() > 0
    saved = ["--trace", "t.safetensors"]
    for args, message in (([*saved, "--prompt", "x"], "give one of them"),
                          ([*saved, "--pixel", "3"], "--pixel '3' is not a pixel"),
                          ([*saved, "--step", "0"], "steps count from 1"),
                          ([*saved, "--step", "5"], "step 5 is out of range"),
                          ([*saved, "--heads"], "--heads records per-head maps"),
                          ([*saved, "--layer", "nope"], "unknown layer 'nope'")):
        refused = runner.invoke(app, ["attention", *args, "--out", "c.png"])
        assert refused.exit_code == 2, (args, refused.output)
        assert refused.stderr.strip().startswith("error: ") and message in refused.stderr, refused.stderr
    fast_page = runner.invoke(app, ["attention", *saved, "--out", "f.png", "--preview", "fast", "--html", "f.html"])
    assert fast_page.exit_code == 0, fast_page.output + repr(fast_page.exception)
    assert page_data((tmp_path / "f.html").read_text())["columns"][0]["x0_label"] == "x̂0 (latent preview)"
    bad = runner.invoke(app, ["attention", *saved, "--out", "g.png", "--preview", "sharp"])
    assert bad.exit_code == 2, bad.stderr
    assert "unknown preview 'sharp'; choose one of: auto, fast, tiny, vae" in bad.stderr, bad.stderr
    exists = runner.invoke(app, ["attention", *saved, "--out", "a.png"])
    assert exists.exit_code == 2 and "exists" in exists.stderr
    assert not list(tmp_path.glob("c*")) and not list(tmp_path.glob("g*"))
    assert torch.equal(load_trace("t.safetensors").tensors["attention"], trace.tensors["attention"])


def test_cli_attention_guidance_rescale_reaches_the_run(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    fast = ["--prompt", PROMPT, "--model", str(tiny_model_dir), "--steps", "2", "--size", "32", "--device", "cpu",
            "--guidance", "7.5"]
    for name, extra in (("plain", []), ("rescaled", ["--guidance-rescale", "0.7"])):
        result = runner.invoke(app, ["attention", *fast, *extra, "--out", f"{name}.png",
                                     "--save-trace", f"{name}.safetensors"])
        assert result.exit_code == 0, result.output + repr(result.exception)
    plain, rescaled = load_trace("plain.safetensors"), load_trace("rescaled.safetensors")
    assert plain.settings.guidance_rescale == 0 and rescaled.settings.guidance_rescale == 0.7
    assert not torch.equal(plain.tensors["image"], rescaled.tensors["image"])
    refused = runner.invoke(app, ["attention", *fast, "--guidance-rescale", "1.5", "--out", "bad.png"])
    assert refused.exit_code == 2 and "guidance_rescale must be between 0 and 1" in refused.stderr, refused.stderr


def test_a_layer_or_pixel_typo_is_refused_before_the_run(tiny_model_dir, tmp_path, monkeypatch):
    """--layer and --pixel are checked against the model and the picture size before any step runs."""
    monkeypatch.chdir(tmp_path)
    ran = []
    monkeypatch.setattr("diffx.pipeline.generation._generate_one", lambda *args, **kwargs: ran.append(1))
    base = ["attention", "--prompt", PROMPT, "--model", str(tiny_model_dir), "--steps", "2", "--size", "32"]
    for extra, message in ((["--layer", "nosuch"], "unknown layer 'nosuch'; choose one of: down.0"),
                           (["--pixel", "999,999"], "pixel (999, 999) is outside the 32×32 picture")):
        result = CliRunner().invoke(app, [*base, *extra])
        assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert not ran and not list(tmp_path.iterdir())


def test_a_trace_without_layer_maps_is_one_clear_line(plain, tmp_path):
    with pytest.raises(InvalidArgumentError, match="holds no per-layer attention maps"):
        write_attention_views(plain, tmp_path / "a.png")
    assert not list(tmp_path.iterdir())
