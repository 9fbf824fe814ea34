"""Prompt-to-prompt on a tiny random model: the token alignment, the injection, and its limits."""

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffx.cli import app
from diffx.errors import InvalidArgumentError
from diffx.experiments.prompt_to_prompt import (
    AttentionInjector,
    AttentionRecorder,
    align_tokens,
    prompt_to_prompt,
    word_scales,
)
from diffx.models.tokenizer import ClipTokenizer
from diffx.models.unet import CrossAttention
from diffx.pipeline.settings import GenerationSettings

SETTINGS = GenerationSettings(prompt="a red circle", steps=4, guidance=3.0, height=32, width=32, seed=3)


def encode(prompt: str):
    return ClipTokenizer.default().encode(prompt)


def test_refinement_aligns_the_shared_tokens_and_leaves_new_ones_their_own_maps():
    token_map = align_tokens(encode("a red circle"), encode("a big red circle"))
    assert token_map.kind == "refine"
    # source: start a red circle end (0-4) · edit: start a big red circle end (0-5)
    expected = {0: 0, 1: 1, 3: 2, 4: 3, 5: 4}
    for j, i in expected.items():
        assert token_map.matrix[:, j].nonzero().flatten().tolist() == [i] and token_map.inherited[j] == 1
    assert token_map.matrix[:, 2].sum() == 0 and token_map.inherited[2] == 0  # "big" is new
    for j in range(6, 77):  # padding follows the end token, one place later
        assert token_map.matrix[:, j].nonzero().flatten().tolist() == [j - 1]


def test_word_swap_maps_one_to_one_or_spreads_a_word_of_another_length():
    swap = align_tokens(encode("a red circle left of a blue square"), encode("a red square left of a blue square"))
    assert swap.kind == "swap" and torch.equal(swap.matrix, torch.eye(77)) and swap.inherited.min() == 1
    longer = align_tokens(encode("a red circle"), encode("a red photorealistic"))  # photo + realistic
    assert longer.kind == "swap"
    assert longer.matrix[3, 3] == longer.matrix[3, 4] == 0.5 and longer.matrix[:, 3:5].sum() == 1
    assert longer.matrix[4, 5] == 1  # end token to end token
    same = align_tokens(encode("a red circle"), encode("a red circle"))
    assert same.kind == "same" and torch.equal(same.matrix, torch.eye(77))


def test_injector_replaces_only_the_conditional_row_as_mapped():
    layer = CrossAttention(8, heads=2, context_dim=8)
    layer.layer_name = "probe"
    recorder = AttentionRecorder(cross_steps=1, self_steps=0)
    source = torch.rand(2, 2, 5, 77).softmax(-1)  # [uncond; cond], heads, queries, tokens
    recorder.edit(layer, source)
    token_map = align_tokens(encode("a circle"), encode("a red circle"))
    scales = word_scales(encode("a red circle"), {"circle": 2.0})
    own = torch.rand(2, 2, 5, 77).softmax(-1)
    injected = AttentionInjector(recorder, token_map, scales).edit(layer, own)
    assert torch.equal(injected[0], own[0])  # the unconditional row keeps its own maps
    cond = injected[1]
    torch.testing.assert_close(cond[..., 1], source[1, ..., 1])  # "a" from the source
    torch.testing.assert_close(cond[..., 2], own[1, ..., 2])  # "red" is new: its own map
    torch.testing.assert_close(cond[..., 3], 2 * source[1, ..., 2])  # "circle" from the source, re-weighted
    assert recorder.edits(layer, 5) and not AttentionRecorder(0, 0).edits(layer, 5)


def test_full_injection_of_the_same_prompt_reproduces_the_source_exactly(tiny_model):
    edit = prompt_to_prompt(tiny_model, SETTINGS, tau=1.0, self_tau=1.0)
    assert edit.cross_steps == edit.self_steps == edit.num_steps == 4
    assert torch.equal(edit.injected.latents, edit.source.latents)
    torch.testing.assert_close(edit.plain.latents, edit.source.latents, atol=1e-4, rtol=1e-4)


def test_injection_changes_the_edit_and_tau_zero_changes_nothing(tiny_model):
    edit = prompt_to_prompt(tiny_model, SETTINGS, "a red square", tau=1.0)
    assert edit.token_map.kind == "swap"
    difference = (edit.injected.latents - edit.plain.latents).abs().max()
    assert difference > 1e-2
    assert (edit.injected.latents - edit.source.latents).abs().max() > 1e-3  # V still comes from "square"
    untouched = prompt_to_prompt(tiny_model, SETTINGS, "a red square", tau=0.0)
    assert torch.equal(untouched.injected.latents, untouched.plain.latents)
    refined = prompt_to_prompt(tiny_model, SETTINGS, "a big red circle", tau=0.5, self_tau=0.5, reweight={"red": 2})
    assert refined.token_map.kind == "refine" and refined.cross_steps == 2
    assert not torch.equal(refined.injected.latents, refined.plain.latents)


@pytest.mark.parametrize(("options", "problem"), [
    ({"tau": 1.5}, "tau is a fraction of the steps"),
    ({"tau": float("nan")}, "tau is a fraction"),
    ({"self_tau": -0.1}, "self-attention tau"),
    ({"reweight": {"blue": 2.0}}, "cannot re-weight 'blue'"),
    ({"reweight": {"red": float("nan")}}, "re-weighting factor nan"),
    ({"reweight": {"red": 20.0}}, "outside 0-10"),
])
def test_bad_options_are_refused_before_any_run(tiny_model, options, problem):
    with pytest.raises(InvalidArgumentError, match=problem):
        prompt_to_prompt(tiny_model, SETTINGS, **options)


def test_edit_and_weights_commands_write_labelled_pictures(tmp_path, tiny_model_dir):
    runner = CliRunner()
    fast = ["--model", str(tiny_model_dir), "--steps", "2", "--size", "32", "--device", "cpu"]
    out, gif = tmp_path / "edit.png", tmp_path / "edit.gif"
    result = runner.invoke(app, ["edit", "--prompt", "a red circle", "--to", "a big red circle", "--tau", "0.5",
                                 "--reweight", "red=2", "--out", str(out), "--gif", str(gif), *fast])
    assert result.exit_code == 0, result.output + repr(result.exception)
    with Image.open(gif) as animation:
        width, height = Image.open(out).size
        assert animation.n_frames == 3 and animation.width == width and animation.height > height  # + caption
    weights = tmp_path / "weights.png"
    result = runner.invoke(app, ["weights", "--prompt", "a (red:1.5) circle", "--out", str(weights), *fast])
    assert result.exit_code == 0 and weights.is_file() and "1.5" in result.stdout


@pytest.mark.parametrize(("args", "problem"), [
    (["--tau", "2"], "tau is a fraction"),
    (["--reweight", "red=abc"], "WORD=FACTOR"),
    (["--to", "a (red circle"], "edit prompt"),
    (["--reweight", "green=2"], "cannot re-weight 'green'"),
])
def test_edit_refuses_bad_input_with_one_line_and_writes_nothing(tmp_path, tiny_model_dir, args, problem):
    out = tmp_path / "edit.png"
    result = CliRunner().invoke(app, ["edit", "--prompt", "a red circle", *args, "--out", str(out), "--model",
                                      str(tiny_model_dir), "--steps", "2", "--size", "32"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]  # a model note may precede
    assert result.exit_code == 2 and len(errors) == 1 and problem in errors[0] and "Traceback" not in result.stderr
    assert not out.exists()
