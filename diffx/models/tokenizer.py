"""The CLIP tokenizer: byte-level BPE (Sennrich et al. 2016; Radford et al. 2019 GPT-2, 2021 CLIP).

A prompt becomes 77 token ids in four steps, the same as OpenAI's `SimpleTokenizer` and the
`CLIPTokenizer` of transformers (without ftfy):

1. the special tokens `<|startoftext|>` / `<|endoftext|>` are found as written; the text around them is
   cleaned up: Unicode NFC, every run of whitespace -> one space, lowercase;
2. pre-tokenize into *words* with CLIP's regex: letter runs, single digits, punctuation runs and
   English contractions ('s 't 're 've 'm 'll 'd);
3. byte-level BPE per word: its UTF-8 bytes as printable characters (`bytes_to_unicode`), the last one
   marked with `</w>`, then the learned merges applied lowest rank first until none applies;
4. `<|startoftext|>` + up to 75 BPE tokens + `<|endoftext|>`, padded to 77 with the pad token:
   `<|endoftext|>` for SD1.x (transformers' CLIPTokenizer), `!` (id 0) for SD2.x (`open_clip.tokenize`
   pads with zeros; diffusers' SD2 tokenizer says `pad_token: "!"`).

The vocabulary comes from CLIP's `bpe_simple_vocab_16e6.txt.gz` (shipped in data/) or from an SD
`tokenizer/` folder (`vocab.json` + `merges.txt`); both give the same ids.
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch

from diffx.errors import CheckpointError, ModelNotFoundError
from diffx.paths import BPE_VOCAB_FILE

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
START_ID = 49406
END_ID = 49407
CONTEXT_LENGTH = 77
END_OF_WORD = "</w>"
# CLIP keeps the first 49152 - 256 - 2 = 48894 merges; with the 256 byte tokens, the same 256 with `</w>`
# and the 2 special tokens that makes a vocabulary of 49408 ids.
NUM_MERGES = 49152 - 256 - 2


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """Map each of the 256 byte values to a printable character (GPT-2's `bytes_to_unicode`).

    Printable Latin-1 bytes map to themselves; the others (controls, space, ...) to 256 + n, so
    every BPE token is a readable string and no byte is lost.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    # Insertion order (printable bytes first) is the order of the first 256 vocabulary entries.
    return table


@functools.cache
def _unicode_classes() -> tuple[str, str]:
    r"""Regex character classes for `\p{L}` (letters) and `\p{N}` (numbers), from `unicodedata`.

    Python's `re` has no `\p{..}`; `[^\W\d_]` would wrongly count '²', '½' or 'Ⅻ' (numbers, category
    No/Nl) as letters, so the classes are built from the Unicode categories themselves.
    """
    ranges: dict[str, list[list[int]]] = {"L": [], "N": []}
    for code in range(sys.maxunicode + 1):
        major = unicodedata.category(chr(code))[0]
        if major in ranges:
            runs = ranges[major]
            if runs and runs[-1][1] == code - 1:
                runs[-1][1] = code
            else:
                runs.append([code, code])

    def char_class(runs: list[list[int]]) -> str:
        return "".join(re.escape(chr(first)) + (f"-{re.escape(chr(last))}" if last > first else "")
                       for first, last in runs)

    return char_class(ranges["L"]), char_class(ranges["N"])


# Unicode's White_Space property: what the reference tokenizer's regex engine calls `\s`. Python's `\s`
# also takes the separators U+001C..U+001F, which CLIP keeps as punctuation.
WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# The special tokens are recognized in the prompt as written (case-sensitive), before clean-up.
SPECIAL_TOKEN_PATTERN = re.compile(r"(<\|startoftext\|>|<\|endoftext\|>)")


ASCII_CLASSES = ("A-Za-z", "0-9")  # `\p{L}` and `\p{N}` within ASCII


@functools.cache
def _word_pattern(ascii_only: bool = False) -> re.Pattern[str]:
    r"""CLIP's pre-tokenizer regex, with `\p{L}` and `\p{N}` spelled out for Python's `re`:

        's|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+

    (CLIP's regex also lists the two special tokens first; `SPECIAL_TOKEN_PATTERN` finds those.) `ascii_only`: the
    same pattern for ASCII text, which splits it alike without building the Unicode classes (a scan of every code
    point, a noticeable part of a short command's start).
    """
    letter, number = ASCII_CLASSES if ascii_only else _unicode_classes()
    return re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d|[{letter}]+|[{number}]|[^{WHITESPACE}{letter}{number}]+")


def clean_text(text: str) -> str:
    """NFC, whitespace runs -> one space, lowercase: transformers' CLIPTokenizer normalizer.

    OpenAI's tokenizer also runs ftfy (mojibake repair) first; diffx, like transformers without ftfy,
    does not. Lowercasing goes character by character, as in the reference, so a word-final 'Σ' becomes
    'σ' (`str.lower` would write 'ς'). Leading/trailing spaces need no stripping: the pre-tokenizer
    drops whitespace.
    """
    text = re.sub(f"[{WHITESPACE}]+", " ", unicodedata.normalize("NFC", text))
    return "".join(char.lower() for char in text)


@dataclass
class TokenizedPrompt:
    """One prompt as the text encoder sees it, with the map from token positions back to words.

    CLIP's (this module): 77 positions, start + BPE tokens + end + padding. T5's (`t5_tokenizer.py`): 256 positions,
    unigram pieces + `</s>` + `<pad>` padding, no start token; its words are the pre-tokenizer's pieces.
    """

    prompt: str
    ids: list[int]  # CONTEXT_LENGTH ids: start, BPE tokens, end, padding
    tokens: list[str]  # the BPE token string at each position ('cat</w>', '<|endoftext|>')
    word_ids: list[int | None]  # index into `words` for each position; None for start/end/padding
    words: list[str]  # pre-tokenizer pieces of the cleaned prompt (punctuation runs are words too)
    num_tokens: int  # real tokens, start and end included
    truncated_tokens: list[str]  # BPE tokens cut by the 77-token limit (empty if none)
    truncated_text: str  # the same, decoded back to text

    def word_positions(self, word_index: int) -> list[int]:
        """Token positions (CLIP: 0..76) that spell word `word_index` (several if the word was split)."""
        return [pos for pos, word in enumerate(self.word_ids) if word == word_index]


class ClipTokenizer:
    """CLIP's byte-level BPE tokenizer. `encode` one prompt, or call on a list for a (B, 77) tensor."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], pad_token: str = END_TOKEN):
        missing = [token for token in (START_TOKEN, END_TOKEN, pad_token) if token not in vocab]
        if missing:
            raise CheckpointError(f"tokenizer vocabulary lacks {', '.join(missing)}; use a CLIP vocab.json")
        self.vocab = vocab
        self.pad_token = pad_token
        self.merge_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {char: b for b, char in self.byte_encoder.items()}
        # byte-mapped word -> its BPE tokens; the special tokens (plain ASCII) are their own single token.
        self.cache: dict[str, list[str]] = {START_TOKEN: [START_TOKEN], END_TOKEN: [END_TOKEN]}
        # Textual inversion's words (`with_added_tokens`): "<tok>" -> its tokens ["<tok>", "<tok>_1", ...].
        self.added: dict[str, list[str]] = {}
        self.special_pattern = SPECIAL_TOKEN_PATTERN

    @classmethod
    def default(cls) -> ClipTokenizer:
        """The tokenizer of SD1.x, built once from the shipped CLIP vocabulary."""
        return _default_tokenizer()

    @classmethod
    def from_bpe_file(cls, path: str | Path) -> ClipTokenizer:
        """Build from OpenAI's `bpe_simple_vocab_16e6.txt.gz` (one merge per line after a header)."""
        path = Path(path)
        if not path.is_file():
            raise ModelNotFoundError(
                f"CLIP vocabulary {path} not found; reinstall diffx or give an existing file"
            )
        with gzip.open(path, "rt", encoding="utf-8") as file:
            lines = file.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
        # Vocabulary order as in CLIP: bytes, bytes + </w>, one entry per merge, the special tokens.
        byte_tokens = list(bytes_to_unicode().values())
        tokens = [*byte_tokens, *(t + END_OF_WORD for t in byte_tokens), *("".join(m) for m in merges)]
        tokens += [START_TOKEN, END_TOKEN]
        return cls({token: i for i, token in enumerate(tokens)}, merges)

    @classmethod
    def from_folder(cls, folder: str | Path) -> ClipTokenizer:
        """Build from an SD `tokenizer/` folder: `vocab.json` (token -> id) and `merges.txt`, or the one
        `tokenizer.json` that transformers 5 saves instead (its BPE model holds the same vocabulary and merges)."""
        folder = Path(folder)
        vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
        if not vocab_file.is_file() and (folder / "tokenizer.json").is_file():
            return cls._from_tokenizer_json(folder / "tokenizer.json")
        for file in (vocab_file, merges_file):
            if not file.is_file():
                raise ModelNotFoundError(
                    f"{file} not found; a tokenizer folder holds vocab.json and merges.txt"
                )
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        lines = merges_file.read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        return cls(vocab, merges)

    @classmethod
    def _from_tokenizer_json(cls, path: Path) -> ClipTokenizer:
        """A Hugging Face `tokenizer.json` of CLIP's byte-level BPE: its `model.vocab` and `model.merges` (each
        merge "a b" or ["a", "b"]); read as JSON, no code runs."""
        try:
            model = json.loads(path.read_text(encoding="utf-8"))["model"]
            vocab, merges = model["vocab"], model["merges"]
            if model.get("type") != "BPE" or not isinstance(vocab, dict):
                raise TypeError(f"a {model.get('type')} model")
            pairs = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in merges]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as error:
            raise CheckpointError(f"{path} is not CLIP's BPE tokenizer.json ({error}); give the model's "
                                  "tokenizer folder") from None
        return cls(vocab, pairs)

    def padded_with(self, pad_token: str) -> ClipTokenizer:
        """This tokenizer padding with `pad_token` instead (the vocabulary and BPE cache are shared)."""
        if pad_token == self.pad_token:
            return self
        if pad_token not in self.vocab:
            raise CheckpointError(f"pad token {pad_token!r} is not in the tokenizer's vocabulary")
        twin = copy.copy(self)
        twin.pad_token = pad_token
        return twin

    def with_added_tokens(self, word: str, tokens: list[str]) -> ClipTokenizer:
        """This tokenizer with a new `word` (textual inversion's "<tok>") that reads as `tokens`, new vocabulary
        entries numbered after the last (as transformers' `add_tokens`). Like the special tokens, the word is found
        in the prompt as written, before clean-up and BPE. The vocabulary is copied: this tokenizer is unchanged."""
        taken = [token for token in {word, *tokens} if token in self.vocab or token in self.added]
        if taken:
            raise CheckpointError(f"token {taken[0]!r} is already in the tokenizer's vocabulary; "
                                  "give the embedding another token: FILE:<name>")
        twin = copy.copy(self)
        twin.vocab = {**self.vocab, **{token: len(self.vocab) + i for i, token in enumerate(tokens)}}
        twin.added = {**self.added, word: list(tokens)}
        # Longest first, so that of two words where one starts the other the longer is found.
        found = sorted([START_TOKEN, END_TOKEN, *twin.added], key=len, reverse=True)
        twin.special_pattern = re.compile(f"({'|'.join(map(re.escape, found))})")
        return twin

    def bpe(self, word: str) -> list[str]:
        """Byte-pair-encode one pre-tokenized word (already byte-mapped) into vocabulary tokens."""
        if word in self.cache:
            return self.cache[word]
        parts = [*word[:-1], word[-1] + END_OF_WORD]
        while len(parts) > 1:
            # Merge the adjacent pair that was learned first (lowest rank), everywhere it occurs.
            pairs = set(zip(parts[:-1], parts[1:], strict=True))
            best = min(pairs, key=lambda pair: self.merge_ranks.get(pair, len(self.merge_ranks)))
            if best not in self.merge_ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self.cache[word] = parts
        return parts

    def split_words(self, prompt: str) -> list[str]:
        """The prompt cut into words: special and added tokens as written, the rest cleaned and split by the regex."""
        words: list[str] = []
        # re.split with a capture group alternates: text, special token, text, ...
        for i, segment in enumerate(self.special_pattern.split(prompt)):
            if i % 2:
                words.append(segment)
            else:
                text = clean_text(segment)
                words += _word_pattern(text.isascii()).findall(text)
        return words

    def word_tokens(self, word: str) -> list[str]:
        """BPE tokens of one word: its UTF-8 bytes as `bytes_to_unicode` characters, then merged (an added word:
        its own tokens)."""
        if word in self.added:
            return self.added[word]
        return self.bpe("".join(self.byte_encoder[b] for b in word.encode("utf-8")))

    def decode_tokens(self, tokens: list[str]) -> str:
        """BPE token strings back to text; `</w>` becomes a space."""
        # `</w>` is plain ASCII, so it survives the byte mapping and is replaced afterwards, as in CLIP.
        data = bytes(self.byte_decoder[char] for char in "".join(tokens))
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ").strip()

    def encode(self, prompt: str) -> TokenizedPrompt:
        """Tokenize one prompt into CONTEXT_LENGTH ids, keeping which word each token came from."""
        words = self.split_words(prompt)
        tokens: list[str] = []
        word_ids: list[int | None] = []
        for index, word in enumerate(words):
            pieces = self.word_tokens(word)
            tokens += pieces
            word_ids += [index] * len(pieces)
        # Room for CONTEXT_LENGTH - 2 tokens between start and end; the end token is always kept.
        keep = CONTEXT_LENGTH - 2
        cut = tokens[keep:]
        tokens, word_ids = tokens[:keep], word_ids[:keep]
        num_tokens = len(tokens) + 2
        padding = CONTEXT_LENGTH - num_tokens
        all_tokens = [START_TOKEN, *tokens, END_TOKEN] + [self.pad_token] * padding
        return TokenizedPrompt(
            prompt=prompt,
            ids=[self.vocab[token] for token in all_tokens],
            tokens=all_tokens,
            word_ids=[None, *word_ids, None] + [None] * padding,
            words=words,
            num_tokens=num_tokens,
            truncated_tokens=cut,
            truncated_text=self.decode_tokens(cut),
        )

    def __call__(self, prompts: list[str]) -> torch.LongTensor:
        """Token ids of a batch of prompts: (B, 77) int64."""
        return torch.tensor([self.encode(prompt).ids for prompt in prompts], dtype=torch.long)


@functools.cache
def _default_tokenizer() -> ClipTokenizer:
    return ClipTokenizer.from_bpe_file(BPE_VOCAB_FILE)
