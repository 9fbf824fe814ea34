"""SentencePiece's precompiled character map (T5's nmt_nfkc) against the `tokenizers` library's Precompiled
normalizer reading the same charsmap, taken from a model sentencepiece trained (see t5_tokenizer_files.py)."""

import base64
import json
import random

import pytest
from t5_tokenizer_files import train_model, write_tokenizer_json

from diffx.errors import CheckpointError
from diffx.models.charsmap import Precompiled, grapheme_clusters

tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def normalizers(tmp_path_factory):
    path = write_tokenizer_json(tmp_path_factory.mktemp("charsmap") / "tokenizer.json", train_model())
    charsmap = json.loads(path.read_text(encoding="utf-8"))["normalizer"]["precompiled_charsmap"]
    return Precompiled(base64.b64decode(charsmap)), tokenizers.Tokenizer.from_file(str(path)).normalizer


def test_every_code_point_is_rewritten_as_tokenizers_does(normalizers):
    """All of Unicode, 256 consecutive code points at a time (so marks also follow the letters before them)."""
    ours, theirs = normalizers
    chars = [chr(code) for code in range(0x110000) if not 0xD800 <= code < 0xE000]
    assert ours("ｆｕｌｌ　①½ﬁ") == "full 11⁄2fi"  # NFKC, and the ideographic space made a space
    for start in range(0, len(chars), 256):
        text = "".join(chars[start:start + 256])
        assert ours(text) == theirs.normalize_str(text), hex(ord(chars[start]))


def test_grapheme_clusters_of_marks_joiners_and_hangul_match_tokenizers(normalizers):
    """Random strings of letters, combining and spacing marks, joiners, controls, Hangul jamo and prepended signs:
    where the clusters fall decides whether a cluster is rewritten whole."""
    ours, theirs = normalizers
    pool = [*"aeoAEn \r\n\t", "\u0301", "\u0302", "\u0308", "\u0327", "\u200d", "\u200c", "\ufe0f", "\u00ad",
            "\u3099", "\u0e31", "\u0e33", "\u0903", "\u102b", "\u1100", "\u1161", "\u11a8", "\uac00", "\uac01",
            "\u0915", "\u094d", "\u0600", "\U0001f3fb", "\U0001f1eb", "\uff76", "\uff9e", "\u0345", "\u0f71"]
    rng = random.Random(0)
    for _ in range(5000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 10)))
        assert ours(text) == theirs.normalize_str(text), [hex(ord(char)) for char in text]
    assert grapheme_clusters("e\u0301\u0302\r\n\u1100\u1161\u11a8x\u0600a") == [
        "e\u0301\u0302", "\r\n", "\u1100\u1161\u11a8", "x", "\u0600a"]


def test_empty_and_corrupt_charsmaps():
    assert Precompiled(b"")("Ｘ\u3000y") == "Ｘ\u3000y"  # no rules: nothing rewritten
    for corrupt in (b"\x01\x00", b"\x00\x01\x00\x00abc"):
        with pytest.raises(CheckpointError, match="precompiled_charsmap"):
            Precompiled(corrupt)
