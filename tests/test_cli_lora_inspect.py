"""`diffx lora FILE[:SCALE]`: a LoRA file written for the embedded model's layout inspected end to end — tables on
stdout, the same as JSON with --json, the per-block chart with --out (never over a file without --force), and a
file that fits no model refused in one line."""

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffx.cli import app
from diffx.models.configs import shapes_world_2
from diffx.models.stable_diffusion import build_without_weights
from tests.weights.lora_files import ATTENTION_LEAVES, adapted_layers, kohya_tensors, write_lora

HEADER = {"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1", "ss_output_name": "red-style",
          "ss_tag_frequency": json.dumps({"10_red": {"red": 9, "circle": 4}})}


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Invoke `diffx lora …` in a fresh folder holding style.safetensors, a kohya LoRA of the embedded model's
    attention, feed-forward and text-encoder layers."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIFFX_MODEL", raising=False)
    skeleton = build_without_weights(shapes_world_2())
    write_lora(tmp_path / "style.safetensors", {
        **kohya_tensors(adapted_layers(skeleton.unet, ATTENTION_LEAVES), "lora_unet_", rank=4, alpha=2, seed=0),
        **kohya_tensors(adapted_layers(skeleton.text_encoder, ATTENTION_LEAVES), "lora_te_", rank=4, alpha=2, seed=1)},
        HEADER)

    def invoke(*args: str):
        return CliRunner().invoke(app, ["lora", *args])

    return invoke


def test_the_report_names_the_file_its_trigger_words_and_blocks(run):
    result = run("style.safetensors:0.5")
    assert result.exit_code == 0, result.output + repr(result.exception)
    for text in ("kohya", "shapes-world-2", "networks.lora", "red-style", "trigger words", "middle block",
                 "output block 0", "TE layer 2", "‖ΔW‖_F at s = 0.5"):
        assert text in result.stdout, text


def test_json_parses_and_halves_with_the_scale(run):
    full, half = (json.loads(run(scale, "--json").stdout) for scale in ("style.safetensors", "style.safetensors:0.5"))
    assert full["model"] == "shapes-world-2" and full["recognised"] and full["trigger_words"][0] == {
        "tag": "red", "count": 9}
    assert [b["label"] for b in full["network_blocks"]][-1] == "output block 5"
    assert half["total_norm"] == pytest.approx(full["total_norm"] / 2)
    matched = json.loads(run("style.safetensors", "--model", "embedded", "--json").stdout)
    assert not matched["recognised"] and matched["network_blocks"] == full["network_blocks"]


def test_out_draws_the_chart_and_keeps_an_existing_one_without_force(run, tmp_path):
    result = run("style.safetensors", "--out", "blocks.png")
    assert result.exit_code == 0 and "wrote blocks.png" in result.stdout, result.output
    first = (tmp_path / "blocks.png").read_bytes()
    assert Image.open(tmp_path / "blocks.png").size[1] > 400
    refused = run("style.safetensors:0.5", "--out", "blocks.png")
    assert refused.exit_code == 2 and "already exists" in refused.stderr
    assert (tmp_path / "blocks.png").read_bytes() == first
    forced = run("style.safetensors:0.5", "--out", "blocks.png", "--force", "--json")
    assert forced.exit_code == 0 and json.loads(forced.stdout)["scale"] == 0.5  # stdout: the JSON alone
    assert (tmp_path / "blocks.png").read_bytes() != first


def test_a_file_that_fits_no_model_is_refused_in_one_line(run, tmp_path):
    write_lora(tmp_path / "odd.safetensors", {"lora_unet_nowhere.lora_down.weight": torch.ones(1, 1)})
    for args, problem in ((["odd.safetensors"], "fit none of"), (["odd.safetensors", "--model", "embedded"],
                                                                  "1 of 1 keys name no LoRA layer")):
        result = run(*args)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and problem in lines[0], result.stderr


def test_attention_draws_the_trigger_word_with_and_without_the_lora(run):
    result = run("style.safetensors", "--attention", "a.png", "--prompt", "a red circle", "--steps", "2")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "wrote a.png" in result.output
    with Image.open("a.png") as picture:
        assert picture.width > 2 * 64 and picture.height > 2 * 64  # two rows of picture + map


@pytest.mark.parametrize("args, fragment", [
    (("--prompt", "a red circle"), "give --attention with --prompt"),
    (("--attention", "a.png", "--prompt", "a blue square"), "contains none of the file's trigger words (red, circle)"),
    (("--attention", "a.png", "--prompt", "a red circle", "--word", "square"), "the word 'square' is not in"),
], ids=["prompt-alone", "no-trigger-word", "word-not-in-prompt"])
def test_attention_options_are_checked_before_the_model_loads(run, monkeypatch, args, fragment):
    monkeypatch.setattr("diffx.cli.options.ModelChoice.load", lambda self: pytest.fail("the model was loaded"))
    result = run("style.safetensors", *args)
    assert result.exit_code == 2 and fragment in result.stderr, result.output + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
