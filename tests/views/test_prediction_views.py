"""The ε / v / x̂0 view (`diffx.prediction_views`) and `diffx predict`: what the trace holds is what the U-Net
said, read back three ways; bad input is one line before any work."""

import dataclasses

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffx.cli import app
from diffx.models.configs import tiny
from diffx.pipeline.conditioning import encode_text, tokenize
from diffx.render.image import to_pil
from diffx.sampling.schedules import v_from_eps
from diffx.trace.tracer import TraceOptions, generate_traced
from diffx.views import prediction, steps
from diffx.views.prediction import default_steps, prediction_view
from tests.tiny import tiny_settings


def test_v_from_the_traced_eps_is_what_a_v_model_output(tiny_model):
    config = tiny()
    config.scheduler.prediction_type = "v_prediction"
    v_model = dataclasses.replace(tiny_model, config=config)
    traced = generate_traced(v_model, tiny_settings(guidance=1.0, sampler="ddim"),
                             options=TraceOptions(record=("latents", "eps", "x0")))
    trace = traced.traces[0]
    assert trace.meta["prediction_type"] == "v_prediction"
    context = encode_text(v_model, [tokenize(v_model, trace.settings.prompt)])
    for i in range(trace.num_steps):
        x_t, t = trace.tensors["latents"][i].float(), trace.tensors["timesteps"][i]
        with torch.no_grad():
            output = v_model.unet(x_t[None], t, context)[0]  # the raw v̂ of this evaluation
        alpha_cumprod = float(trace.tensors["alphas_cumprod"][i])
        derived = v_from_eps(trace.tensors["eps"][i].float(), x_t, alpha_cumprod**0.5, (1 - alpha_cumprod) ** 0.5)
        assert (derived - output).abs().max() < 2e-2  # the trace stores fp16
    view = prediction_view(trace, [1, trace.num_steps], preview="fast")
    assert isinstance(view, Image.Image) and view.width > 4 * 64


def test_predict_and_the_trace_frames_give_a_step_the_same_sigma(tiny_model, monkeypatch):
    """σ is √((1−ᾱ)/ᾱ) in every picture: the predict view's row for a step prints the σ the trace frame's caption
    prints for it, writes the noise scale √(1−ᾱ) as such, and its caption line says which is which."""
    trace = generate_traced(tiny_model, tiny_settings(guidance=1.0),
                            options=TraceOptions(record=("latents", "eps", "x0"))).traces[0]
    grids, captions = [], []
    monkeypatch.setattr(prediction, "make_grid", lambda rows, **kw: (grids.append(kw), Image.new("RGB", (8, 8)))[1])
    monkeypatch.setattr(prediction, "caption_bar", lambda picture, text: (captions.append(text), picture)[1])
    prediction_view(trace, [2], preview="fast")
    monkeypatch.setattr(steps, "caption_bar", lambda picture, text, **_: (captions.append(text), to_pil(picture))[1])
    steps.trace_frames(trace, preview="fast")
    (legend, *frame_lines), row_label = captions, grids[0]["row_labels"][0]
    frame_caption = [line for line in frame_lines if line.startswith("step ")][1]  # step 2's (notes between)
    alpha_cumprod = float(trace.tensors["alphas_cumprod"][1])
    sigma = f"σ={((1 - alpha_cumprod) / alpha_cumprod) ** 0.5:.3g}"
    assert frame_caption.endswith(sigma) and frame_caption.startswith("step 2/")
    assert row_label.startswith(frame_caption) and row_label.count("σ") == 1
    assert f"√(1−ᾱ)={(1 - alpha_cumprod) ** 0.5:.3f}" in row_label and f"√ᾱ={alpha_cumprod ** 0.5:.3f}" in row_label
    assert legend.startswith("σ = √((1−ᾱ)/ᾱ); x_t = √ᾱ x̂0 + √(1−ᾱ) ε̂")
    assert not any("σ" in label for labels in grids[0]["cell_labels"] for label in labels)
    assert "±2.5 standard deviations" in grids[0]["title"]


def test_default_steps_are_first_middle_last():
    assert default_steps(25) == [1, 13, 25] and default_steps(1) == [1] and default_steps(2) == [1, 2]


@pytest.fixture
def cli(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIFFX_MODEL", raising=False)

    def invoke(*args):
        return CliRunner().invoke(app, ["predict", "--model", str(tiny_model_dir), "--steps", "3", "--size", "32",
                                        "--device", "cpu", *map(str, args)])

    return invoke


def test_predict_writes_the_view_and_says_what_it_loaded(cli, tmp_path):
    result = cli("--prompt", "a red circle", "--step", "1", "--step", "3", "--guidance-rescale", "0.7")
    assert result.exit_code == 0, result.stderr
    assert Image.open(tmp_path / "predict.png").size[0] > 4 * 192


@pytest.mark.parametrize("args, fragment", [
    (["--step", "4"], "step 4 is out of range"),
    (["--guidance-rescale", "1.5"], "guidance_rescale must be between 0 and 1"),
    (["--guidance-rescale", "nan"], "guidance_rescale must be a finite number"),
    (["--weights", "both"], "unknown weights 'both'; choose one of: ema, main"),
    (["--out", "x.gif"], ".gif"),
])
def test_predict_refuses_bad_input_in_one_line(cli, tmp_path, args, fragment):
    result = cli(*args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and lines[-1].startswith("error:") and fragment in lines[-1], result.stderr
    assert not any(line.startswith("error:") for line in lines[:-1])
    assert not (tmp_path / "predict.png").exists()


def test_a_single_file_model_gets_one_note_line_at_load(tmp_path, monkeypatch, tiny_model):
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({key: t.contiguous() for key, t in tiny_model.original_state_dict().items()}, path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["predict", "--model", str(path), "--steps", "2", "--size", "32",
                                      "--device", "cpu", "--step", "2"])
    assert result.exit_code == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert notes == ["note: tiny.safetensors: recognised SD1.x (the tiny preset); the U-Net's one set of weights "
                     "(the file has no EMA copy); predicts epsilon"]
