"""`--lora FILE[:SCALE]`, in the model group every model-loading command takes: a LoRA changes the picture, its
scale 0 gives the picture without it, and a bad file or scale is refused in one line (exit 2) before any work."""

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffx.cli import app
from tests.weights.lora_files import write_lora

LAYER = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_v"


@pytest.fixture
def run(tmp_path, monkeypatch, tiny_model_dir):
    """Invoke `diffx denoise` on the tiny model in a fresh folder holding style.safetensors, a LoRA of one layer."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIFFX_MODEL", raising=False)
    generator = torch.Generator().manual_seed(0)
    write_lora(tmp_path / "style.safetensors", {f"{LAYER}.lora_down.weight": torch.randn(4, 32, generator=generator),
                                                f"{LAYER}.lora_up.weight": torch.randn(32, 4, generator=generator)})

    def invoke(*args: str):
        return CliRunner().invoke(app, ["denoise", "--prompt", "a red circle", "--steps", "2", "--size", "32",
                                        "--device", "cpu", "--model", str(tiny_model_dir), *args])

    return invoke


def test_a_lora_changes_the_picture_and_scale_zero_does_not(run, tmp_path):
    pictures, notes = {}, {}
    for name, extra in {"plain": [], "lora": ["--lora", "style.safetensors"],
                        "zero": ["--lora", "style.safetensors:0", "--lora", "style.safetensors:0"]}.items():
        result = run("--out", f"{name}.png", *extra)
        assert result.exit_code == 0, result.output + repr(result.exception)
        pictures[name] = Image.open(tmp_path / f"{name}.png").tobytes()
        notes[name] = [line for line in result.stderr.splitlines() if line.startswith("note: LoRA")]
    assert notes["lora"] == ["note: LoRA style.safetensors: 1 layers of the unet, rank 4, scale 1"]
    assert len(notes["zero"]) == 2 and not notes["plain"]
    assert pictures["lora"] != pictures["plain"] and pictures["zero"] == pictures["plain"]


@pytest.mark.parametrize(("value", "problem"), [
    ("style.safetensors:nan", "finite"), ("style.safetensors:10", "within ±4"), ("missing.safetensors", "no such file"),
    ("style.txt", "expected a .safetensors"), ("", "expected a .safetensors"),
    ("other.safetensors", "1 of 1 keys name no LoRA layer")])
def test_a_bad_lora_is_refused_in_one_line_before_any_work(run, tmp_path, value, problem):
    write_lora(tmp_path / "other.safetensors", {"lora_unet_nowhere.lora_down.weight": torch.ones(1, 1)})
    result = run("--out", "out.png", "--lora", value)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and problem in lines[0], result.stderr
    assert not (tmp_path / "out.png").exists()


def test_the_tour_passes_each_lora_on_with_its_absolute_path(tmp_path, monkeypatch):
    from diffx.cli.options import ModelChoice
    from diffx.cli.tour import model_options

    monkeypatch.chdir(tmp_path)
    for name in ("a.safetensors", "b.safetensors"):
        (tmp_path / name).write_bytes(b"")
    choice = ModelChoice(lora=["a.safetensors", "b.safetensors:0.5"], prediction_type="epsilon")
    folder = tmp_path.resolve()
    assert model_options(choice) == [("--prediction-type", "epsilon"), ("--lora", f"{folder}/a.safetensors:1"),
                                     ("--lora", f"{folder}/b.safetensors:0.5")]
