"""`diffx invert` on a tiny random model: what it writes, what it prints, and one-line errors (exit 2,
nothing written) for every bad argument, checked before the model runs."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffx.cli import app
from diffx.pipeline.inversion import load_inversion


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Invoke `diffx invert ARGS…` in a fresh working folder with a 16×16 picture.png there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIFFX_MODEL", raising=False)
    picture = np.zeros((16, 16, 3), np.uint8)
    picture[4:12, 4:12] = (230, 25, 25)
    Image.fromarray(picture).save(tmp_path / "picture.png")

    def invoke(*args: str):
        return CliRunner().invoke(app, ["invert", *(str(a) for a in args)])

    return invoke


@pytest.fixture
def fast(tiny_model_dir):
    return ["--model", tiny_model_dir, "--size", 16, "--steps", 3, "--device", "cpu"]


def test_writes_figure_animation_and_latent(run, fast, tmp_path):
    result = run("picture.png", "--prompt", "a red square", "--out", "inv.png", "--gif", "inv.gif",
                 "--save-latent", "x_T.pt", "--sweep-steps", "2,3", "--sweep-guidance", "1,4", *fast)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "PSNR" in result.stdout and "w = 4: 2 steps" in result.stdout
    for name in ("inv.png", "inv.gif", "x_T.pt"):
        assert f"wrote {name}" in result.stdout and (tmp_path / name).is_file()
    with Image.open(tmp_path / "inv.gif") as gif:
        assert gif.n_frames == 3  # one frame per inversion step
    inversion = load_inversion(tmp_path / "x_T.pt")
    assert inversion.settings.steps == 3 and inversion.settings.prompt == "a red square"
    assert inversion.x_T.shape == (1, 4, 8, 8)


def test_guidance_rescale_reaches_the_run(run, fast, tmp_path):
    for name, extra in (("plain", []), ("rescaled", ["--guidance-rescale", "0.7"])):
        result = run("picture.png", "--guidance", "4", "--no-sweep", "--out", f"{name}.png", "--save-latent",
                     f"{name}.pt", *extra, *fast)
        assert result.exit_code == 0, result.output + repr(result.exception)
    plain, rescaled = load_inversion(tmp_path / "plain.pt"), load_inversion(tmp_path / "rescaled.pt")
    assert plain.settings.guidance_rescale == 0 and rescaled.settings.guidance_rescale == 0.7
    assert not torch.allclose(plain.x_T, rescaled.x_T)
    refused = run("picture.png", "--guidance-rescale", "1.5", "--out", "bad.png", *fast)
    assert refused.exit_code == 2 and refused.stderr.strip().splitlines() == [
        "error: guidance_rescale must be between 0 and 1, got 1.5"], refused.stderr
    assert not (tmp_path / "bad.png").exists()


def test_no_sweep(run, fast, tmp_path):
    result = run("picture.png", "--no-sweep", *fast)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (tmp_path / "invert.png").is_file() and "w = 1:" not in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["missing.png"], "no image file"),
    (["picture.png", "--guidance", "nan"], "finite"),
    (["picture.png", "--guidance", "-1"], "guidance must be >= 0"),
    (["picture.png", "--steps", "0"], "steps must be at least 1"),
    (["picture.png", "--sweep-steps", "0,10"], "out of range"),
    (["picture.png", "--sweep-guidance", "1,inf"], "finite"),
    (["picture.png", "--sweep-steps", "ten"], "expected ints"),
    (["picture.png", "--save-latent", "x_T.txt"], ".pt file"),
    (["picture.png", "--out", "inv.bmp"], ".png, .jpg or .webp"),
    (["picture.png", "--gif", "inv.avi"], "animation format"),
    (["picture.png", "--frame-ms", "0"], "frame-ms"),
    (["picture.png", "--size", "18"], "multiple of 4"),
    (["picture.png", "--spacing", "sideways"], "spacing"),
])
def test_bad_input(run, fast, tmp_path, args, message):
    result = run(*args, *fast[:-6], "--device", "cpu")  # --size/--steps left out: the cases set their own
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error:") and message in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["picture.png"]


def test_refuses_to_overwrite(run, fast, tmp_path):
    (tmp_path / "invert.png").write_bytes(b"keep")
    result = run("picture.png", *fast)
    assert result.exit_code == 2 and "--force" in result.stderr
    assert (tmp_path / "invert.png").read_bytes() == b"keep"
