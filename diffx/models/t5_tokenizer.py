"""The T5 tokenizer: SentencePiece's unigram language model (Kudo 2018; Kudo & Richardson 2018), read from the
model's own `tokenizer.json` (the Hugging Face file a diffusers SD3 folder keeps in `tokenizer_3/`).

A prompt becomes `max_length` ids (SD3: 256) in the steps the file lists, run as the `tokenizers` library runs
them (what transformers' T5TokenizerFast and diffusers' SD3 pipeline use):

1. the added tokens (`<pad>`, `</s>`, `<unk>`, `<extra_id_N>`) are found in the prompt as written;
2. the text around them is normalized: SentencePiece's precompiled character map (`charsmap.Precompiled`: T5's
   nmt_nfkc, i.e. NFKC and every space made ' '), then the file's `Replace` (runs of spaces) and `Strip` steps;
3. pre-tokenized: `WhitespaceSplit` cuts at whitespace; `Metaspace` writes each space as '▁' (U+2581), puts
   one in front of each piece (prepend scheme "always", or "never") and cuts before every '▁';
4. each such word is segmented by the unigram model: of all ways to spell it with vocabulary pieces, the one with
   the highest sum of log-probabilities (Viterbi over the lattice of pieces, Kudo 2018, sec. 3.1). A character no
   piece covers becomes `<unk>`, scored 10 below the vocabulary's lowest score, and adjacent unknowns fuse into one
   `<unk>` as in SentencePiece; with `byte_fallback` set, an unknown is spelled by its UTF-8 bytes `<0xNN>`;
5. `</s>` (id 1) is appended and the sequence padded with `<pad>` (id 0); a longer one keeps its first
   max_length - 1 tokens and the end token.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from pathlib import Path

import torch

from diffx.errors import CheckpointError, ModelNotFoundError
from diffx.models.charsmap import Precompiled
from diffx.models.tokenizer import WHITESPACE, TokenizedPrompt

META_SPACE = "\u2581"  # '▁', SentencePiece's visible space
END_TOKEN, PAD_TOKEN, UNK_TOKEN = "</s>", "<pad>", "<unk>"
MAX_LENGTH = 256  # SD3's max_sequence_length for T5
UNK_PENALTY = 10.0  # an unknown character scores this much below the vocabulary's lowest piece (SentencePiece)

Normalizer = Callable[[str], str]
PreTokenizer = Callable[[list[str]], list[str]]  # pieces of text -> smaller pieces


def _strip(spec: dict) -> Normalizer:
    # Unicode whitespace at the start and/or the end, as the file's `strip_left` / `strip_right` say.
    ends = [end for end, wanted in ((f"^[{WHITESPACE}]+", spec.get("strip_left")),
                                    (f"[{WHITESPACE}]+\\Z", spec.get("strip_right"))) if wanted]
    pattern = re.compile("|".join(ends) or "(?!)")  # (?!) matches nothing: neither end stripped
    return lambda text: pattern.sub("", text)


def _replace(spec: dict) -> Normalizer:
    pattern, content = spec["pattern"], spec["content"]
    regex = re.compile(pattern["Regex"] if "Regex" in pattern else re.escape(pattern["String"]))
    return lambda text: regex.sub(lambda _: content, text)


def _precompiled(spec: dict) -> Normalizer:
    try:
        return Precompiled(base64.b64decode(spec.get("precompiled_charsmap") or ""))
    except binascii.Error as error:
        raise CheckpointError("tokenizer.json's precompiled_charsmap is not base64; use the model's own file") \
            from error


NORMALIZERS: dict[str, Callable[[dict], Normalizer]] = {"Precompiled": _precompiled, "Replace": _replace,
                                                        "Strip": _strip}


def normalizer_steps(spec: dict | None) -> list[Normalizer]:
    """A tokenizer.json `normalizer` (a `Sequence` or one step) as the functions to apply in turn."""
    if spec is None:
        return []
    if spec["type"] == "Sequence":
        return [step for inner in spec["normalizers"] for step in normalizer_steps(inner)]
    if spec["type"] not in NORMALIZERS:
        raise CheckpointError(f"tokenizer.json normalizer {spec['type']!r} is not one T5 uses "
                              f"({', '.join(NORMALIZERS)}); give a T5 tokenizer.json")
    return [NORMALIZERS[spec["type"]](spec)]


def _whitespace_split(pieces: list[str]) -> list[str]:
    return [word for piece in pieces for word in re.split(f"[{WHITESPACE}]+", piece) if word]


def _metaspace(spec: dict) -> PreTokenizer:
    # Files written before tokenizers 0.15 say `add_prefix_space` instead of `prepend_scheme`.
    scheme = spec.get("prepend_scheme", "always" if spec.get("add_prefix_space", True) else "never")
    if scheme not in ("always", "never"):  # "first" depends on offsets into the original text, which T5 never uses
        raise CheckpointError(f"tokenizer.json Metaspace prepend_scheme {scheme!r} is not one T5 uses "
                              "(always, never); give a T5 tokenizer.json")
    replacement, split = spec.get("replacement", META_SPACE), spec.get("split", True)

    def metaspace(pieces: list[str]) -> list[str]:
        out = []
        for piece in pieces:
            piece = piece.replace(" ", replacement)
            if scheme == "always" and not piece.startswith(replacement):
                piece = replacement + piece
            # Cut before every replacement character, which starts the next piece ("MergedWithNext").
            out += [part for part in re.split(f"(?={re.escape(replacement)})", piece) if part] if split else [piece]
        return out

    return metaspace


def pre_tokenizer_steps(spec: dict | None) -> list[PreTokenizer]:
    """A tokenizer.json `pre_tokenizer` (a `Sequence` or one step) as the functions to apply in turn."""
    if spec is None:
        return []
    if spec["type"] == "Sequence":
        return [step for inner in spec["pretokenizers"] for step in pre_tokenizer_steps(inner)]
    if spec["type"] == "WhitespaceSplit":
        return [_whitespace_split]
    if spec["type"] == "Metaspace":
        return [_metaspace(spec)]
    raise CheckpointError(f"tokenizer.json pre-tokenizer {spec['type']!r} is not one T5 uses "
                          "(WhitespaceSplit, Metaspace); give a T5 tokenizer.json")


class T5Tokenizer:
    """A SentencePiece unigram tokenizer (T5's). `encode` one prompt, or call on a list for a (B, max_length) tensor."""

    def __init__(self, pieces: list[tuple[str, float]], unk_id: int, *, normalizers: list[Normalizer],
                 pre_tokenizers: list[PreTokenizer], added_tokens: dict[str, int], byte_fallback: bool = False,
                 max_length: int = MAX_LENGTH):
        self.vocab = {piece: i for i, (piece, _) in enumerate(pieces)} | added_tokens
        missing = [token for token in (END_TOKEN, PAD_TOKEN) if token not in self.vocab]
        if missing:
            raise CheckpointError(f"tokenizer vocabulary lacks {', '.join(missing)}; give a T5 tokenizer.json")
        self.scores = {piece: score for piece, score in pieces}
        self.unk_id, self.unk_score = unk_id, min(score for _, score in pieces) - UNK_PENALTY
        self.longest_piece = max(len(piece) for piece, _ in pieces)
        self.normalizers, self.pre_tokenizers = normalizers, pre_tokenizers
        self.byte_fallback, self.max_length = byte_fallback, max_length
        self.added = added_tokens
        # Longest first, so that of two added tokens where one starts the other the longer is found.
        found = sorted(added_tokens, key=len, reverse=True)
        self.added_pattern = re.compile(f"({'|'.join(map(re.escape, found))})") if found else None
        self.cache: dict[str, list[str]] = {}  # pre-token -> its pieces

    @classmethod
    def from_file(cls, path: str | Path, max_length: int = MAX_LENGTH) -> T5Tokenizer:
        """Build from a Hugging Face `tokenizer.json` holding a Unigram model (read as JSON: no code runs)."""
        path = Path(path)
        if not path.is_file():
            raise ModelNotFoundError(f"{path} not found; an SD3 folder keeps T5's in tokenizer_3/tokenizer.json")
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
            model = spec["model"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{path} is not a tokenizer.json ({error}); give T5's tokenizer_3/tokenizer.json") \
                from error
        if model.get("type") != "Unigram":
            raise CheckpointError(f"{path} holds a {model.get('type')} model, not T5's Unigram; "
                                  "give T5's tokenizer.json")
        return cls(
            [(piece, float(score)) for piece, score in model["vocab"]],
            model.get("unk_id") if model.get("unk_id") is not None else 2,
            normalizers=normalizer_steps(spec.get("normalizer")),
            pre_tokenizers=pre_tokenizer_steps(spec.get("pre_tokenizer")),
            added_tokens={token["content"]: token["id"] for token in spec.get("added_tokens", [])},
            byte_fallback=bool(model.get("byte_fallback", False)),
            max_length=max_length,
        )

    def viterbi(self, word: str) -> list[str]:
        """The highest-scoring spelling of `word` in vocabulary pieces; each run of unknown characters one piece.

        best[end] is the best score of any spelling of word[:end]; the piece that ends it is remembered and the
        path read back from the end. Ties keep the first candidate found (earlier start, then shorter piece), as
        SentencePiece and `tokenizers` do.
        """
        if word in self.cache:
            return self.cache[word]
        size = len(word)
        # Every position is reachable: a character no piece covers is reached as an unknown.
        best: list[float | None] = [0.0] + [None] * size
        start_of: list[int] = [0] * (size + 1)  # where the best path's last piece into position `end` starts
        unknown = [False] * (size + 1)
        for start in range(size):
            covered = False  # does some piece of one character start here?
            for end in range(start + 1, min(size, start + self.longest_piece) + 1):
                score = self.scores.get(word[start:end])
                if score is None:
                    continue
                covered |= end == start + 1
                candidate = best[start] + score
                if best[end] is None or candidate > best[end]:
                    best[end], start_of[end], unknown[end] = candidate, start, False
            if not covered:
                candidate = best[start] + self.unk_score
                if best[start + 1] is None or candidate > best[start + 1]:
                    best[start + 1], start_of[start + 1], unknown[start + 1] = candidate, start, True
        pieces: list[str] = []
        end, fused_unknown = size, False
        while end > 0:
            start = start_of[end]
            if unknown[end] and fused_unknown:
                pieces[-1] = word[start:end] + pieces[-1]  # adjacent unknown characters become one piece
            else:
                pieces.append(word[start:end])
            fused_unknown, end = unknown[end], start
        self.cache[word] = pieces[::-1]
        return self.cache[word]

    def piece_ids(self, piece: str) -> list[tuple[str, int]]:
        """A piece's (token, id) pairs: itself, or for an unknown piece `<unk>` or, with byte_fallback, its bytes."""
        if piece in self.vocab:
            return [(piece, self.vocab[piece])]
        if self.byte_fallback:
            byte_tokens = [f"<0x{byte:02X}>" for byte in piece.encode("utf-8")]
            if all(token in self.vocab for token in byte_tokens):
                return [(token, self.vocab[token]) for token in byte_tokens]
        return [(piece, self.unk_id)]

    def split_words(self, prompt: str) -> list[str]:
        """The prompt cut into words: added tokens as written; the rest normalized and pre-tokenized."""
        segments = self.added_pattern.split(prompt) if self.added_pattern else [prompt]
        words: list[str] = []
        for i, segment in enumerate(segments):
            # re.split with a capture group alternates: text, added token, text, ...
            if i % 2:
                words.append(segment)
                continue
            for normalize in self.normalizers:
                segment = normalize(segment)
            pieces = [segment] if segment else []
            for pre_tokenize in self.pre_tokenizers:
                pieces = pre_tokenize(pieces)
            words += pieces
        return words

    def encode(self, prompt: str, max_length: int | None = None) -> TokenizedPrompt:
        """Tokenize one prompt into max_length ids (SD3: 256), keeping which word each token came from."""
        max_length = max_length or self.max_length
        words = self.split_words(prompt)
        tokens: list[str] = []
        ids: list[int] = []
        word_ids: list[int | None] = []
        for index, word in enumerate(words):
            pairs = [(word, self.vocab[word])] if word in self.added else [
                pair for piece in self.viterbi(word) for pair in self.piece_ids(piece)]
            tokens += [token for token, _ in pairs]
            ids += [token_id for _, token_id in pairs]
            word_ids += [index] * len(pairs)
        # Room for max_length - 1 tokens before the end token, which is always kept.
        keep = max_length - 1
        cut = tokens[keep:]
        tokens, ids, word_ids = tokens[:keep], ids[:keep], word_ids[:keep]
        padding = max_length - len(tokens) - 1
        return TokenizedPrompt(
            prompt=prompt,
            ids=[*ids, self.vocab[END_TOKEN]] + [self.vocab[PAD_TOKEN]] * padding,
            tokens=[*tokens, END_TOKEN] + [PAD_TOKEN] * padding,
            word_ids=[*word_ids, None] + [None] * padding,
            words=[word.replace(META_SPACE, " ").strip() for word in words],
            num_tokens=len(tokens) + 1,
            truncated_tokens=cut,
            truncated_text="".join(cut).replace(META_SPACE, " ").strip(),
        )

    def __call__(self, prompts: list[str]) -> torch.LongTensor:
        """Token ids of a batch of prompts: (B, max_length) int64."""
        return torch.tensor([self.encode(prompt).ids for prompt in prompts], dtype=torch.long)
