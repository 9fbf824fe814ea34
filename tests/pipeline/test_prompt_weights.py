"""Word weights: the webui's syntax, the alignment with CLIP's tokens, and its embedding semantics."""

import copy

import numpy as np
import pytest
import torch

from diffx.errors import InvalidArgumentError
from diffx.models.tokenizer import ClipTokenizer
from diffx.pipeline.conditioning import encode_text, tokenize
from diffx.pipeline.generation import generate
from diffx.pipeline.observers import Observer
from diffx.pipeline.prompt_weights import WeightedText, escape_weights, parse_weights, weighted_tokens
from diffx.pipeline.settings import GenerationSettings
from diffx.views.tables import tokens_table

UP, DOWN = 1.1, 1 / 1.1

# The webui's documented cheat sheet, then nesting, escapes and plain colons.
PARSES = [
    ("a (word)", [("a ", 1), ("word", UP)]),
    ("a ((word))", [("a ", 1), ("word", UP * UP)]),
    ("a [word]", [("a ", 1), ("word", DOWN)]),
    ("a [[word]]", [("a ", 1), ("word", DOWN * DOWN)]),
    ("a (word:1.5)", [("a ", 1), ("word", 1.5)]),
    ("a (word:0.25)", [("a ", 1), ("word", 0.25)]),
    ("a ( word : 1.5 ) b", [("a ", 1), (" word ", 1.5), (" b", 1)]),
    (r"a \(word\)", [("a (word)", 1)]),
    (r"anime_\(character\) \[x\] \\", [(r"anime_(character) [x] \ ".rstrip(), 1)]),
    (r"a \ b", [(r"a \ b", 1)]),
    ("(a [b] c:1.5)", [("a ", 1.5), ("b", 1.5 * DOWN), (" c", 1.5)]),
    ("((a:1.5))", [("a", 1.5 * UP)]),
    ("[(a:1.2)]", [("a", 1.2 * DOWN)]),
    ("(style: ink)", [("style: ink", UP)]),
    ("a:b", [("a:b", 1)]),
    ("(red)(circle)", [("redcircle", UP)]),  # equal neighbours merge, as in the webui
    ("(red)[circle]", [("red", UP), ("circle", DOWN)]),
    ("a (red:1) circle", [("a red circle", 1)]),
    ("()", []),
    ("", []),
]

BAD = [
    ("a (red circle", "'(' is never closed"),
    ("a red) circle", "')' has no matching '('"),
    ("a [red) circle", "')' closes '['"),
    ("a (red] circle", "']' closes '('"),
    ("(red:nan)", "weight 'nan' is not a number"),
    ("(red:inf)", "weight 'inf' is not a number"),
    ("(red:1.2.3)", "weight '1.2.3' is not a number"),
    ("(red:-1)", "from 0 to 4"),
    ("(red:9)", "from 0 to 4"),
    ("[red:0.5]", "prompt editing"),
    ("(" * 15 + "red" + ")" * 15, "more than 4"),
]


@pytest.mark.parametrize(("prompt", "expected"), PARSES)
def test_parse_weights(prompt, expected):
    parsed = parse_weights(prompt)
    assert [span.text for span in parsed] == [text for text, _ in expected]
    assert [span.weight for span in parsed] == pytest.approx([weight for _, weight in expected], rel=1e-12)
    assert all(isinstance(span, WeightedText) for span in parsed)
    clean = "".join(span.text for span in parsed)
    assert parse_weights(escape_weights(clean)) == ([WeightedText(clean, 1.0)] if clean else [])  # read as written


@pytest.mark.parametrize(("prompt", "problem"), BAD)
def test_bad_syntax_is_one_error_line(prompt, problem):
    with pytest.raises(InvalidArgumentError) as error:
        parse_weights(prompt, "negative prompt")
    message = str(error.value)
    assert problem in message and "\n" not in message and message.startswith("negative prompt ")


def test_weights_follow_the_tokens_of_the_clean_prompt():
    tokenizer = ClipTokenizer.default()
    weighted = weighted_tokens(tokenizer, "a (photorealistic:1.3) [cat]")
    plain = tokenizer.encode("a photorealistic cat")
    assert weighted.prompt == "a photorealistic cat" and weighted.written == "a (photorealistic:1.3) [cat]"
    assert weighted.ids == plain.ids and weighted.word_ids == plain.word_ids
    photo, cat = plain.word_positions(1), plain.word_positions(2)
    assert len(photo) == 2  # "photo", "realistic</w>": both tokens of the word carry its weight
    expected = [1.0] * 77
    for position in photo:
        expected[position] = 1.3
    expected[cat[0]] = DOWN
    assert weighted.weights == pytest.approx(expected) and weighted.weighted
    # Spans of different weight never merge into one word: the webui tokenizes them apart.
    apart = weighted_tokens(tokenizer, "(red)[circle]")
    assert apart.prompt == "red circle" and apart.weights[1:3] == pytest.approx([UP, DOWN])


def test_plain_prompt_is_unchanged(tiny_model):
    tokens = tokenize(tiny_model, "a red circle, photorealistic")
    assert tokens.prompt == "a red circle, photorealistic" and not tokens.weighted
    raw = tiny_model.text_encoder(torch.tensor([tokens.ids]))
    assert torch.equal(encode_text(tiny_model, [tokens]), raw)


def reference_weighting(encoder_output: np.ndarray, multipliers: list[float]) -> np.ndarray:
    """The webui's documented semantics, in float64: multiply each token's vector by its word's weight
    (1 for start, end and padding), then scale the whole context back to its original mean."""
    original_mean = encoder_output.mean()
    weighted = np.stack([vector * multiplier for vector, multiplier in zip(encoder_output, multipliers,
                                                                            strict=True)])
    return weighted * (original_mean / weighted.mean())


@pytest.fixture(scope="module")
def biased_model(tiny_model):
    """The tiny model with a final LayerNorm bias like a trained CLIP's: a random-init LayerNorm makes the
    context's mean ~1e-9, and mean restoration then divides rounding noise by rounding noise."""
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        bias = model.text_encoder.text_model.final_layer_norm.bias
        bias.copy_(0.3 + 0.1 * torch.randn(bias.shape, generator=torch.Generator().manual_seed(0)))
    return model


def test_encode_text_equals_the_reference_weighting(biased_model):
    tiny_model = biased_model
    prompts = ["a (red:1.5) circle on a [[blue]] background", "((big)) (square:0.4) (style: ink)"]
    encoded = encode_text(tiny_model, [tokenize(tiny_model, prompt) for prompt in prompts])
    for prompt, context in zip(prompts, encoded, strict=True):
        tokens = tokenize(tiny_model, prompt)
        raw = tiny_model.text_encoder(torch.tensor([tokens.ids]))[0].detach().double().numpy()
        # Each multiplier read off the word's spelling, not from diffx's alignment.
        by_word = {"red": 1.5, "blue": DOWN * DOWN, "big": UP * UP, "square": 0.4, "style": UP, ":": UP, "ink": UP}
        multipliers = [1.0 if word is None else by_word.get(tokens.words[word], 1.0) for word in tokens.word_ids]
        expected = reference_weighting(raw, multipliers)
        np.testing.assert_allclose(context.double().numpy(), expected, rtol=1e-5, atol=1e-6)
        assert not np.allclose(expected, raw, atol=1e-3)  # the weights did change the context


def test_generate_weights_every_prompt(tiny_model):
    runs = []
    settings = GenerationSettings(prompt="a (red:1.5) circle", negative_prompt="[blue]", steps=2, guidance=3.0,
                                  height=32, width=32)

    def observe(run):
        runs.append(run)
        return Observer()

    weighted = generate(tiny_model, settings, observe=observe)
    (run,) = runs
    assert run.tokens.prompt == "a red circle" and run.negative_tokens.prompt == "blue"
    assert max(run.tokens.weights) == 1.5 and min(run.negative_tokens.weights) == pytest.approx(DOWN)
    plain = generate(tiny_model, GenerationSettings(**{**settings.__dict__, "prompt": "a red circle",
                                                      "negative_prompt": "blue"}))
    assert not torch.equal(weighted.latents, plain.latents)
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    for mask in (None, np.ones((32, 32), dtype=np.uint8) * 255):  # image-to-image and inpainting too
        img = generate(tiny_model, settings, init_image=image, mask=mask)
        img_plain = generate(tiny_model, GenerationSettings(**{**settings.__dict__, "prompt": "a red circle"}),
                             init_image=image, mask=mask)
        assert not torch.equal(img.latents, img_plain.latents)
    with pytest.raises(InvalidArgumentError, match="^negative prompt"):
        generate(tiny_model, GenerationSettings(**{**settings.__dict__, "negative_prompt": "(blue"}))


def test_tokens_table_shows_the_clean_prompt_and_weights():
    table = tokens_table(weighted_tokens(ClipTokenizer.default(), "a (red:1.3) circle"))
    assert table.title.endswith("read without its brackets: 'a red circle'")
    weights = dict(zip(table.columns[0]._cells, table.columns[-1]._cells, strict=True))
    assert table.columns[-1].header == "weight" and weights["red"] == "1.3" and weights["circle"] == "1"
