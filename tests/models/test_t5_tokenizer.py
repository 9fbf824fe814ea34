"""diffx's T5 tokenizer against transformers' T5TokenizerFast and the `tokenizers` library reading the same file.

The tokenizer.json is a small unigram model trained by sentencepiece with T5's normalization rules (nmt_nfkc)
and converted by transformers (see t5_tokenizer_files.py): no real T5 tokenizer is on the test machine.
"""

import json

import pytest
import torch
from t5_tokenizer_files import train_model, with_steps, write_tokenizer_json

from diffx.errors import CheckpointError, ModelNotFoundError
from diffx.models.t5_tokenizer import T5Tokenizer

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

LONG = " ".join(["a highly detailed painting of an astronaut riding a horse on mars"] * 40)
PROMPTS = [
    "a photo of a cat", "A Photo Of The Cat, highly detailed, 8k!", "", " ", "  \t\n ",
    "  leading and trailing spaces  ", "multiple   spaces\tand\ttabs\nand\r\nnewlines",
    "café naïve résumé über straße façade", "cafe\u0301 nai\u0308ve e\u0301\u0301 q\u0308\u0301",  # decomposed
    "ｆｕｌｌ　ｗｉｄｔｈ！ ＡＢＣ１２３", "東京の写真 日本語 한국 Ελλάδα Москва", "½ ™ Ⅻ ﬁne ① ㎏ ℃",
    "unknown: Ω ∑ 🚀 👨\u200d👩\u200d👧 🇫🇷 \u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "controls \x00\x07 soft\u00adhyphen zero\u200bwidth \ufeffbom", "specials </s> <pad> <unk> x<extra_id_0>y",
    "¿qué? año (parentheses) [brackets] {braces} -- dashes — “quotes”", LONG,
]


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer_3")
    return write_tokenizer_json(folder / "tokenizer.json", train_model())


def test_ids_match_transformers_t5_tokenizer_fast(tokenizer_file):
    """SD3's call: padding to max_length (256) with truncation; also at a shorter max_length."""
    theirs = transformers.T5TokenizerFast.from_pretrained(tokenizer_file.parent)
    ours = T5Tokenizer.from_file(tokenizer_file)
    for max_length in (256, 16):
        expected = theirs(PROMPTS, padding="max_length", max_length=max_length, truncation=True).input_ids
        assert [ours.encode(prompt, max_length).ids for prompt in PROMPTS] == expected
    assert 2 in ours.encode(PROMPTS[12]).ids  # <unk>: the file's vocabulary lacks these characters
    batch = ours(PROMPTS)
    assert batch.shape == (len(PROMPTS), 256) and batch.dtype == torch.long


def test_older_files_normalizers_and_pre_tokenizers_match_tokenizers(tokenizer_file, tmp_path):
    """Steps other converters wrote: a Replace of space runs, Strip, Metaspace alone or unsplit, never prepending."""
    variants = [
        ([{"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}],
         {"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": True}),
        ([{"type": "Strip", "strip_left": False, "strip_right": True},
          {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": "\u2581"}],
         {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}),
        ([{"type": "Strip", "strip_left": True, "strip_right": True},
          {"type": "Replace", "pattern": {"String": "a"}, "content": "A"}],
         {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": False}),
        ([], {"type": "Sequence", "pretokenizers": [
            {"type": "WhitespaceSplit"}, {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "never"}]}),
    ]
    for i, (normalizers, pre_tokenizer) in enumerate(variants):
        path = with_steps(tokenizer_file, tmp_path / f"variant{i}.json", normalizers, pre_tokenizer)
        reference, ours = tokenizers.Tokenizer.from_file(str(path)), T5Tokenizer.from_file(path)
        for prompt in PROMPTS[:-1]:
            tokenized = ours.encode(prompt)
            assert tokenized.ids[:tokenized.num_tokens] == reference.encode(prompt).ids, (i, prompt)


def test_byte_fallback_spells_unknown_characters_in_bytes(tmp_path):
    path = write_tokenizer_json(tmp_path / "tokenizer.json", train_model(vocab_size=384, byte_fallback=True))
    assert json.loads(path.read_text(encoding="utf-8"))["model"]["byte_fallback"]
    reference, ours = tokenizers.Tokenizer.from_file(str(path)), T5Tokenizer.from_file(path)
    for prompt in PROMPTS[:-1]:
        tokenized = ours.encode(prompt)
        assert tokenized.ids[:tokenized.num_tokens] == reference.encode(prompt).ids, prompt
    assert "<0xF0>" in ours.encode("🚀").tokens  # the rocket's first UTF-8 byte


def test_words_map_to_their_token_positions(tokenizer_file):
    tokenized = T5Tokenizer.from_file(tokenizer_file).encode("a  photo of the astronaut")
    assert tokenized.words == ["a", "photo", "of", "the", "astronaut"]
    assert tokenized.tokens[tokenized.num_tokens - 1:tokenized.num_tokens + 1] == ["</s>", "<pad>"]
    for index, word in enumerate(tokenized.words):
        positions = tokenized.word_positions(index)
        assert positions and "".join(tokenized.tokens[p] for p in positions) == "\u2581" + word
    assert tokenized.word_ids[tokenized.num_tokens - 1:] == [None] * (256 - tokenized.num_tokens + 1)
    assert tokenized.truncated_tokens == [] and tokenized.truncated_text == ""


def test_long_prompt_keeps_the_end_token_and_reports_the_cut(tokenizer_file):
    tokenized = T5Tokenizer.from_file(tokenizer_file).encode(LONG)
    assert tokenized.num_tokens == 256 and tokenized.ids[-1] == 1 and 0 not in tokenized.ids
    assert tokenized.truncated_tokens and LONG.endswith(tokenized.truncated_text)


def test_bad_files_raise_one_line_errors(tokenizer_file, tmp_path):
    with pytest.raises(ModelNotFoundError, match="tokenizer_3"):
        T5Tokenizer.from_file(tmp_path / "missing.json")
    (tmp_path / "garbage.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="not a tokenizer.json"):
        T5Tokenizer.from_file(tmp_path / "garbage.json")
    spec = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    for change, message in (({"model": {"type": "BPE"}}, "BPE model"),
                            ({"normalizer": {"type": "NFKC"}}, "normalizer 'NFKC'"),
                            ({"pre_tokenizer": {"type": "ByteLevel"}}, "pre-tokenizer 'ByteLevel'"),
                            ({"pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "first"}}, "scheme 'first'")):
        (tmp_path / "changed.json").write_text(json.dumps(spec | change), encoding="utf-8")
        with pytest.raises(CheckpointError, match=message):
            T5Tokenizer.from_file(tmp_path / "changed.json")
