"""The CLIP tokenizer against transformers' CLIPTokenizer, built from the same vocabulary files."""

import random

import pytest
import torch

from diffx.errors import CheckpointError, DiffxError
from diffx.models.tokenizer import (
    CONTEXT_LENGTH,
    END_ID,
    START_ID,
    WHITESPACE,
    ClipTokenizer,
    clean_text,
)
from tests.models.tokenizer_files import write_vocab_folder

WORDS = ["a", "photo", "of", "the", "cat", "astronaut", "riding", "horse", "photorealistic", "highly",
         "detailed", "octane", "render", "trending", "on", "artstation", "portrait", "greg", "rutkowski",
         "cyberpunk", "city", "at", "night", "oil", "painting", "van", "gogh", "watercolor", "landscape",
         "mountains", "sunrise", "unreal", "engine", "bokeh", "cinematic", "lighting", "masterpiece",
         "antidisestablishmentarianism", "supercalifragilistic", "xyzzy", "qwertyuiop"]
EXOTIC = ["café", "naïve", "Ångström", "façade", "jalapeño", "São Paulo", "Zürich", "ΣΟΦΙΑΣ", "Москва",
          "東京", "猫", "日本語の文章", "한국어", "中文提示词", "🐱", "👍🏽", "🐱\u200d👤", "🇫🇷", "✨✨",
          "😀", "x²", "½", "Ⅻ", "③", "١٢٣", "ﬁ", "ß", "İstanbul", "e\u0301", "ＡＢＣ", "ﾃｽﾄ", "\u200b", "ǅ",
          "ﬀ", "\x00", "\x07", "Ω", "µ", "©", "™", "°C", "→", "—", "…", "«guillemets»", "„quotes“", "\ufeff"]
PUNCTUATION = [",", ".", "!", "?", "...", "!!!", "(", ")", "((masterpiece))", "[", "]", "{", "}", ":", ";",
               "-", "--", "_", "/", "\\", "|", "@", "#", "$", "%", "^", "&", "*", "+", "=", "~", "`", '"',
               "'", "<", ">", "<|", "|>", "--ar 16:9", "(best quality:1.2)", "<lora:x:0.8>"]
CONTRACTIONS = ["it's", "don't", "we're", "they've", "I'm", "you'll", "she'd", "O'Brien", "'quoted'",
                "rock 'n' roll", "IT'S", "cats'", "'s", "''", "'ll've", "y'all"]
NUMBERS = ["1", "42", "3.14", "2024", "1,000,000", "007", "4k", "8K", "1girl", "v1.5", "100%", "-5", "1e-3"]
SEPARATORS = [" ", " ", " ", "  ", "\t", "\n", " \r\n ", "\u00a0", "\u3000", "\u2003", "\x0b", "\x0c",
              "\x1c", "\x1f", "\x85", "\u2028", ""]
CASINGS = [str, str, str, str.upper, str.title, str.capitalize, str.swapcase]

EDGE_CASES = [
    "", " ", "\n\t ", "a photo of a cat", "A PHOTO OF A CAT", "   leading and trailing   ",
    "<|startoftext|>", "<|endoftext|>", "x<|endoftext|>y <|startoftext|>z", "<|EndOfText|> <|endoftext|",
    "ΣΑΣ ΟΔΥΣΣΕΥΣ", "a\x1cb\x1dc\x1ed\x1ff", "word " * 75, "word " * 76, "word " * 200,
    "supercalifragilisticexpialidocious " * 30, "🐱" * 100, "!" * 300, "é" * 500,
]


def generated_prompts(count: int, seed: int = 0) -> list[str]:
    """Random prompts mixing plain words, unicode, punctuation, numbers and odd whitespace."""
    rng = random.Random(seed)
    pools = [WORDS] * 6 + [EXOTIC, EXOTIC, PUNCTUATION, PUNCTUATION, CONTRACTIONS, NUMBERS]
    prompts = []
    for _ in range(count):
        # One in six prompts is long enough to be cut at 77 tokens.
        length = rng.randint(60, 120) if rng.random() < 1 / 6 else rng.randint(1, 20)
        pieces = [rng.choice(CASINGS)(rng.choice(rng.choice(pools))) for _ in range(length)]
        prompts.append("".join(piece + rng.choice(SEPARATORS) for piece in pieces))
    return prompts


PROMPTS = EDGE_CASES + generated_prompts(400)


@pytest.fixture(scope="module")
def vocab_folder(tmp_path_factory):
    return write_vocab_folder(tmp_path_factory.mktemp("clip-tokenizer"))


@pytest.fixture(scope="module")
def reference(vocab_folder):
    transformers = pytest.importorskip("transformers")
    reference = transformers.CLIPTokenizer.from_pretrained(vocab_folder)
    # The witness itself must be right: these ids are the well-known ones of SD1.x's tokenizer.
    ids = reference("a photo of a cat", padding="max_length", max_length=CONTEXT_LENGTH).input_ids
    assert ids[:8] == [START_ID, 320, 1125, 539, 320, 2368, END_ID, END_ID]
    assert len(reference) == 49408
    return reference


def reference_ids(reference, prompts: list[str]) -> list[list[int]]:
    return reference(prompts, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True).input_ids


def test_prompt_set_is_varied():
    assert len(PROMPTS) >= 300
    tokenizer = ClipTokenizer.default()
    truncated = sum(bool(tokenizer.encode(prompt).truncated_tokens) for prompt in PROMPTS)
    assert truncated >= 40  # plenty of prompts exercise the 77-token cap


def test_ids_match_transformers(reference):
    tokenizer = ClipTokenizer.default()
    expected = reference_ids(reference, PROMPTS)
    mismatches = [prompt for prompt, ids in zip(PROMPTS, expected, strict=True)
                  if tokenizer.encode(prompt).ids != ids]
    assert not mismatches, f"{len(mismatches)} of {len(PROMPTS)} prompts differ, first: {mismatches[0]!r}"


def test_token_strings_match_transformers(reference):
    tokenizer = ClipTokenizer.default()
    for prompt, ids in zip(PROMPTS[:100], reference_ids(reference, PROMPTS[:100]), strict=True):
        assert tokenizer.encode(prompt).tokens == reference.convert_ids_to_tokens(ids)


def test_batch_call_gives_long_tensor(reference):
    tokenizer = ClipTokenizer.default()
    batch = tokenizer(PROMPTS[:16])
    assert batch.dtype == torch.long and batch.shape == (16, CONTEXT_LENGTH)
    assert batch.tolist() == reference_ids(reference, PROMPTS[:16])


def test_word_pattern_equals_unicode_property_regex():
    """The `\\p{L}` / `\\p{N}` classes built for Python's `re` split exactly like the `regex` module."""
    regex = pytest.importorskip("regex")
    letter, number = r"\p{L}", r"\p{N}"
    clip_pattern = regex.compile(
        rf"'s|'t|'re|'ve|'m|'ll|'d|[{letter}]+|[{number}]|[^{WHITESPACE}{letter}{number}]+"
    )
    tokenizer = ClipTokenizer.default()
    plain = [p for p in PROMPTS if "<|startoftext|>" not in p and "<|endoftext|>" not in p]
    for prompt in plain:
        assert tokenizer.split_words(prompt) == clip_pattern.findall(clean_text(prompt)), prompt
    # Numbers outside Nd must stay numbers (the shortcut `[^\W\d_]` would call them letters).
    assert tokenizer.split_words("x²½Ⅻ") == ["x", "²", "½", "ⅻ"]


def test_ascii_text_splits_alike_without_the_unicode_classes():
    """ASCII prompts take the ASCII pattern (no scan of every code point at a command's start), which splits every
    ASCII text as the Unicode pattern does."""
    from diffx.models import tokenizer as module

    module._unicode_classes.cache_clear()
    ClipTokenizer.default().split_words("A red circle, 2 blue squares' <|endoftext|> (x:1.5)!")
    assert module._unicode_classes.cache_info().currsize == 0
    text = "".join(chr(c) for c in range(128)) + " don't 12ab--cd  e'll x_y"
    assert module._word_pattern(True).findall(text) == module._word_pattern(False).findall(text)


def test_from_folder_equals_default(vocab_folder):
    default = ClipTokenizer.default()
    from_folder = ClipTokenizer.from_folder(vocab_folder)
    assert from_folder.vocab == default.vocab
    assert from_folder.merge_ranks == default.merge_ranks
    for prompt in PROMPTS[:150]:
        assert from_folder.encode(prompt).ids == default.encode(prompt).ids


def test_default_is_cached():
    assert ClipTokenizer.default() is ClipTokenizer.default()


def test_special_token_layout():
    encoded = ClipTokenizer.default().encode("a photo of a cat")
    assert len(encoded.ids) == len(encoded.tokens) == len(encoded.word_ids) == CONTEXT_LENGTH
    assert encoded.ids[:7] == [START_ID, 320, 1125, 539, 320, 2368, END_ID]
    assert encoded.ids[7:] == [END_ID] * (CONTEXT_LENGTH - 7)  # padded with the end token
    assert encoded.num_tokens == 7
    assert encoded.words == ["a", "photo", "of", "a", "cat"]
    assert encoded.word_ids[:7] == [None, 0, 1, 2, 3, 4, None]
    assert set(encoded.word_ids[7:]) == {None}


def test_multi_token_word_boundaries():
    tokenizer = ClipTokenizer.default()
    encoded = tokenizer.encode("An Astronaut, photorealistic!!")
    assert encoded.words == ["an", "astronaut", ",", "photorealistic", "!!"]
    assert encoded.tokens[1:7] == ["an</w>", "astronaut</w>", ",</w>", "photo", "realistic</w>", "!!</w>"]
    assert encoded.word_positions(3) == [4, 5]
    assert encoded.word_positions(2) == [3]
    assert encoded.word_positions(5) == []
    # Every word's tokens spell the word back, and the positions of all words tile 1..num_tokens-2.
    positions = []
    for index, word in enumerate(encoded.words):
        word_positions = encoded.word_positions(index)
        assert tokenizer.decode_tokens([encoded.tokens[p] for p in word_positions]) == word
        positions += word_positions
    assert positions == list(range(1, encoded.num_tokens - 1))


def test_multibyte_word_spans_byte_tokens():
    encoded = ClipTokenizer.default().encode("猫")
    assert encoded.words == ["猫"]
    assert len(encoded.word_positions(0)) == encoded.num_tokens - 2 >= 1
    assert encoded.tokens[encoded.num_tokens - 2].endswith("</w>")


def test_truncation_is_reported():
    tokenizer = ClipTokenizer.default()
    exactly_full = tokenizer.encode("cat " * 75)
    assert exactly_full.num_tokens == CONTEXT_LENGTH
    assert exactly_full.truncated_tokens == [] and exactly_full.truncated_text == ""

    over = tokenizer.encode("cat " * 75 + "dog on a photorealistic boat")
    assert over.num_tokens == CONTEXT_LENGTH
    assert over.ids[-1] == END_ID and over.ids[-2] == 2368  # the end token is kept, the 75th cat too
    assert over.truncated_tokens == ["dog</w>", "on</w>", "a</w>", "photo", "realistic</w>", "boat</w>"]
    assert over.truncated_text == "dog on a photorealistic boat"
    assert over.words[75:] == ["dog", "on", "a", "photorealistic", "boat"]  # words keep the whole prompt

    # A word cut in the middle: only its first token survives.
    split = tokenizer.encode("cat " * 74 + "photorealistic")
    assert split.tokens[75] == "photo" and split.word_ids[75] == 74
    assert split.truncated_tokens == ["realistic</w>"] and split.truncated_text == "realistic"


def test_clean_text():
    assert clean_text("  A\t\tB\n\u3000C ") == " a b c "
    assert clean_text("e\u0301") == "é"  # NFC
    assert clean_text("ΟΔΥΣΣΕΥΣ") == "οδυσσευσ"  # per-character lowercase, like the reference
    assert clean_text("a\x1cb") == "a\x1cb"  # not White_Space: kept (and tokenized as punctuation)


def test_missing_files_raise_user_errors(tmp_path):
    with pytest.raises(DiffxError, match="vocab.json"):
        ClipTokenizer.from_folder(tmp_path)
    with pytest.raises(DiffxError, match="not found"):
        ClipTokenizer.from_bpe_file(tmp_path / "missing.txt.gz")
    (tmp_path / "vocab.json").write_text('{"a</w>": 0}', encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    with pytest.raises(DiffxError, match="lacks"):
        ClipTokenizer.from_folder(tmp_path)


def test_an_added_word_reads_as_its_tokens_as_written_and_the_original_is_unchanged():
    base = ClipTokenizer.default()
    tokenizer = base.with_added_tokens("<cat>", ["<cat>", "<cat>_1"]).with_added_tokens("<cat>x", ["<cat>x"])
    encoded = tokenizer.encode("a<cat> <cat>x dog")
    assert encoded.tokens[1:6] == ["a</w>", "<cat>", "<cat>_1", "<cat>x", "dog</w>"]
    assert encoded.ids[2:5] == [49408, 49409, 49410]
    assert base.encode("a<cat>").tokens[1:5] == ["a</w>", "<</w>", "cat</w>", "></w>"] and not base.added
    with pytest.raises(CheckpointError, match="already in the tokenizer"):
        tokenizer.with_added_tokens("dog</w>", ["dog</w>"])
