"""T5-style tokenizer.json files for tests: a small SentencePiece unigram model trained with T5's normalization
rules (`nmt_nfkc`), converted to a Hugging Face tokenizer.json by transformers, as T5's own file was made.

No real T5 tokenizer is on the test machine (and none can be downloaded), so the vocabulary is small; the
normalizer's character map (`precompiled_charsmap`) is sentencepiece's real nmt_nfkc one, the file format is
the real one, and the reference implementation (`tokenizers`, behind transformers' T5TokenizerFast) reads it.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest

spm = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")

WORDS = ("a photo of the cat dog astronaut riding horse on mars highly detailed painting portrait in the style "
         "café naïve résumé über straße façade 東京 日本語 写真 ｆｕｌｌ ｗｉｄｔｈ ½ ™ Ⅻ ﬁne 8k 4K, . ! ? ( ) : - "
         "Ελλάδα Москва한국 ¿qué? año").split()
SYLLABLES = ("ka", "to", "ri", "mo", "ne", "sa", "lu", "pi", "de", "gra", "str", "ion", "ing", "er", "th", "qu")


def corpus(lines: int = 3000) -> list[str]:
    """Sentences of real words and made-up ones, enough for a few hundred pieces."""
    rng = random.Random(0)
    words = list(WORDS) + ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(400)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(lines)]


def protobuf_fields(data: bytes) -> dict[int, list[bytes | int]]:
    """A protobuf message's fields by number (varints as ints, length-delimited ones as bytes): enough to read
    sentencepiece's ModelProto without the protobuf package."""
    fields: dict[int, list[bytes | int]] = {}
    position = 0

    def varint() -> int:
        nonlocal position
        value = shift = 0
        while True:
            byte = data[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while position < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value: bytes | int = varint()
        elif wire == 2:
            length = varint()
            value, position = data[position:position + length], position + length
        else:  # fixed 64 (1) or 32 (5) bits
            size = 8 if wire == 1 else 4
            value, position = data[position:position + size], position + size
        fields.setdefault(number, []).append(value)
    return fields


def train_model(vocab_size: int = 300, byte_fallback: bool = False) -> bytes:
    """A serialized sentencepiece unigram model with T5's special ids: <pad> 0, </s> 1, <unk> 2."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        normalization_rule_name="nmt_nfkc", character_coverage=0.995, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        byte_fallback=byte_fallback, minloglevel=2,
    )
    return model.getvalue()


def write_tokenizer_json(path: str | Path, model: bytes, extra_ids: int = 100) -> Path:
    """The model as transformers' T5Tokenizer writes it: its pieces and scores, the Precompiled charsmap."""
    processor = spm.SentencePieceProcessor(model_proto=model)
    pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    normalizer_spec = protobuf_fields(protobuf_fields(model)[3][0])  # ModelProto.normalizer_spec
    charsmap = normalizer_spec[2][0]  # NormalizerSpec.precompiled_charsmap
    tokenizer = transformers.T5Tokenizer(vocab=pieces, _spm_precompiled_charsmap=charsmap, extra_ids=extra_ids)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec["model"]["byte_fallback"] = bool(processor.IsByte(3)) if processor.get_piece_size() > 3 else False
    path = Path(path)
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return path


def with_steps(path: Path, target: Path, normalizers: list[dict] | None = None,
               pre_tokenizer: dict | None = None) -> Path:
    """A copy of a tokenizer.json whose normalizer gets `normalizers` after its Precompiled step, and whose
    pre-tokenizer is replaced: the variants older converters wrote."""
    spec = json.loads(path.read_text(encoding="utf-8"))
    if normalizers is not None:
        spec["normalizer"] = {"type": "Sequence", "normalizers": [spec["normalizer"], *normalizers]}
    if pre_tokenizer is not None:
        spec["pre_tokenizer"] = pre_tokenizer
    target.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return target
