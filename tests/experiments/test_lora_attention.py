"""Where a word looks with and without a LoRA (diffx.experiments.lora_attention): the word found among the prompt's
tokens (several BPE pieces too), the trigger word chosen from a file's tags, and the two traced runs — scale 0 is the
base model's map exactly, the LoRA's scale is put back after."""

from __future__ import annotations

import pytest
import torch

from diffx.errors import InvalidArgumentError
from diffx.experiments.lora_attention import chosen_word, lora_attention, word_attention, word_positions
from diffx.models.tokenizer import ClipTokenizer
from diffx.pipeline.settings import GenerationSettings
from diffx.weights.lora_apply import apply_lora
from tests.weights.lora_files import ATTENTION_LEAVES, adapted_layers, kohya_tensors, write_lora


def test_a_word_is_found_among_the_prompts_tokens() -> None:
    tokenizer = ClipTokenizer.default()
    assert word_positions(tokenizer, "a red circle", "circle") == range(3, 4)  # <start> a red circle
    assert len(word_positions(tokenizer, "a large <zig> here", "<zig>")) == 3  # "<", "zig", ">"
    with pytest.raises(InvalidArgumentError, match="the word 'square' is not in the prompt"):
        word_positions(tokenizer, "a red circle", "square")


def test_the_trigger_word_is_the_most_frequent_one_the_prompt_holds() -> None:
    tokenizer = ClipTokenizer.default()
    tags = [("zig style", 9), ("circle", 4), ("red", 2)]
    assert chosen_word(tokenizer, "a red circle", None, tags) == "circle"
    assert chosen_word(tokenizer, "a red circle", "red", tags) == "red"
    with pytest.raises(InvalidArgumentError, match=r"none of the file's trigger words \(zig style, circle, red\)"):
        chosen_word(tokenizer, "a blue square", None, tags)


def test_lora_attention_runs_scale_zero_as_the_base_model(tiny_model, tmp_path, monkeypatch) -> None:
    file = write_lora(tmp_path / "lora.safetensors", kohya_tensors(
        adapted_layers(tiny_model.unet, ATTENTION_LEAVES), "lora_unet_", rank=4, alpha=4.0, seed=0))
    settings = GenerationSettings(prompt="a red circle", steps=2, width=32, height=32, seed=0)
    _, base = word_attention(tiny_model, settings, "circle")
    applied = apply_lora(tiny_model, file, scale=1.5)
    recorded = []

    def spy(model, run_settings, word):  # the real run, with the scale it ran at noted
        picture, heat = word_attention(model, run_settings, word)
        recorded.append((applied.scale, heat))
        return picture, heat

    monkeypatch.setattr("diffx.experiments.lora_attention.word_attention", spy)
    try:
        grid = lora_attention(tiny_model, applied, settings, "circle")
        assert [scale for scale, _ in recorded] == [0.0, 1.5] and applied.scale == 1.5
        assert torch.equal(recorded[0][1], base)  # scale 0: the base model's map exactly
        assert (recorded[1][1] - base).abs().max() > 0  # the LoRA moves it
        assert grid.width > 0
    finally:
        applied.remove()
