"""Tokenizer folders for tests: CLIP's vocabulary written as an SD / Hugging Face tokenizer folder."""

from __future__ import annotations

import json
from pathlib import Path

from diffx.models.tokenizer import ClipTokenizer
from diffx.paths import BPE_VOCAB_FILE


def write_vocab_folder(folder: str | Path, bpe_file: str | Path = BPE_VOCAB_FILE) -> Path:
    """Write CLIP's vocabulary as an SD/Hugging Face tokenizer folder: vocab.json + merges.txt."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = ClipTokenizer.from_bpe_file(bpe_file)
    merges = sorted(tokenizer.merge_ranks, key=tokenizer.merge_ranks.__getitem__)
    (folder / "vocab.json").write_text(json.dumps(tokenizer.vocab, ensure_ascii=False), encoding="utf-8")
    merge_lines = ["#version: 0.2", *(" ".join(pair) for pair in merges)]
    (folder / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    return folder
