"""Every command on an SD3 model: a tiny random SD3 pipeline saved by diffusers (tests/pipeline/sd3_models.py, TINY
sizes) and run through `diffx` in-process. What the commands draw is tested in their own modules; here: each
command runs, writes what it says, and refuses what SD3 cannot do in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from diffx.cli import app
from tests.pipeline.sd3_models import TINY, sd3_pipeline

QUICK = ("--steps", "3", "--size", "64")


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd3") / "sd3-tiny"
    sd3_pipeline(folder, sizes=TINY)
    return folder


@pytest.fixture
def diffx(sd3_folder, tmp_path, monkeypatch):
    """Run `diffx ARGS… --model <the SD3 folder>` in a fresh folder; returns the click result."""
    monkeypatch.chdir(tmp_path)

    def invoke(*args: str):
        return CliRunner().invoke(app, [*map(str, args), "--model", str(sd3_folder)])

    return invoke


def ok(result, *files: str) -> None:
    assert result.exit_code == 0, result.output + result.stderr + repr(result.exception)
    for name in files:
        assert f"wrote {name}" in result.output, result.output


def refused(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output + repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_trace_writes_a_gif_of_every_step(diffx) -> None:
    ok(diffx("trace", "--prompt", "a red circle", *QUICK, "--gif", "out.gif"), "out.gif", "out.png")
    with Image.open("out.gif") as animation:
        assert animation.n_frames == 3


def test_attention_adds_the_joint_explorer(diffx) -> None:
    ok(diffx("attention", "--prompt", "a red circle", *QUICK, "--out", "a.png"),
       "a.png", "a_steps.png", "a_self.png", "a_joint.png", "a_joint_words.png")


@pytest.mark.parametrize("args", [("--sampler", "heun"), ("--sampler", "ddim"), ("--image", "in.png")],
                         ids=["heun", "ddim-is-euler", "image-to-image"])
def test_denoise(diffx, args) -> None:
    Image.new("RGB", (64, 64), (200, 40, 40)).save("in.png")
    ok(diffx("denoise", "--prompt", "a red circle", *QUICK, *args, "--out", "d.png"), "d.png")


def test_experiments_run(diffx) -> None:
    ok(diffx("cfg-sweep", "--prompt", "a red circle", *QUICK, "--scales", "1,4", "--out", "c.png"), "c.png")
    ok(diffx("compare", "--prompt", "a red circle", *QUICK, "--x", "guidance=1,4", "--out", "m.png"), "m.png")
    ok(diffx("predict", "--prompt", "a red circle", *QUICK, "--out", "p.png"), "p.png")
    result = diffx("paths", "--prompt", "a red circle", *QUICK, "--out", "paths.png")
    ok(result, "paths.png")
    assert "euler" in result.output and "heun" in result.output and "dpmpp_2m" not in result.output


def test_noise_and_invert(diffx) -> None:
    Image.new("RGB", (64, 64), (40, 40, 200)).save("in.png")
    result = diffx("noise", "in.png", "--latent", "--size", "64", "--out", "n.png")
    ok(result, "n.png")
    with Image.open("n.png") as grid:
        assert grid.height > grid.width / 3  # four rows: flow and scaled_linear, each preview and decode
    ok(diffx("invert", "in.png", "--prompt", "a blue square", "--steps", "3", "--out", "i.png"), "i.png")


def write_sd3_lora(path: Path) -> Path:
    """A diffusers-named LoRA on the TINY MMDiT's first q projection (32 wide): a third of Stability's qkv."""
    generator = torch.Generator().manual_seed(0)
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(2, 32, generator=generator),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(32, 2, generator=generator)},
              str(path))
    return path


def test_lora_applies_and_compares(diffx, tmp_path) -> None:
    lora = write_sd3_lora(tmp_path / "style.safetensors")
    result = diffx("denoise", "--prompt", "a red circle", *QUICK, "--lora", lora, "--out", "d.png")
    ok(result, "d.png")
    assert "note: LoRA style.safetensors: 1 layers of the transformer, rank 2, scale 1" in result.stderr
    ok(diffx("compare", "--prompt", "a red circle", *QUICK, "--lora", lora, "--x", "lora=0,1", "--out", "m.png"),
       "m.png")
    ok(diffx("lora", lora, "--out", "chart.png"), "chart.png")
    refused(diffx("compare", "--prompt", "a red circle", *QUICK, "--lora", lora, "--x", "lora-blocks=all,in"),
            "this model's denoiser is an MMDiT")


@pytest.mark.parametrize("args, fragment", [
    (("denoise", "--prompt", "x", *QUICK, "--sampler", "dpmpp_2m"), "samples with euler, heun, ddim"),
    (("denoise", "--prompt", "x", *QUICK, "--karras"), "drop --karras"),
    (("denoise", "--prompt", "x", *QUICK, "--schedule", "cosine"), "flow schedule"),
    (("edit", "--prompt", "a red circle", "--to", "a blue circle", *QUICK), "attends jointly"),
], ids=["sampler", "karras", "schedule", "edit"])
def test_what_sd3_cannot_do_is_refused(diffx, args, fragment) -> None:
    refused(diffx(*args), fragment)


def test_embeddings_are_refused_in_one_line(diffx) -> None:
    save_file({"emb_params": torch.randn(1, 32)}, "e.safetensors")
    refused(diffx("denoise", "--prompt", "x", *QUICK, "--embedding", "e.safetensors"), "embeddings apply to SD 1.x")
