"""Textual inversion (Gal et al. 2022): new words whose token vectors were learned, the model left untouched.

An embedding file holds N vectors of the text encoder's width, learned so that a prompt naming them draws a
concept. Loading one teaches the tokenizer a word `<tok>` that reads as N new tokens, `<tok>`, `<tok>_1`, …,
`<tok>_{N-1}` (the names diffusers' `load_textual_inversion` gives them), numbered after the vocabulary's last
id, and appends the N vectors to the text encoder's token embedding table as the rows of those ids:

    x_0 = E[ids] + P          E: (vocab + N, width), the file's vectors its last N rows

Layouts read (the width decides which model an embedding fits; SDXL's have one set per encoder):

- A1111 `.pt`: `{"string_to_param": {"*": (N, width)}, "name": …}`, through the code-free unpickler
  (`diffx.weights.safe_pickle`); A1111 `.safetensors`: `emb_params` (N, width);
- diffusers `learned_embeds.safetensors` / `.bin`: `{token: (width,) or (N, width)}`, one key;
- SDXL: `clip_l` (N, 768) and `clip_g` (N, 1280).

The word is `FILE:TOKEN`'s TOKEN, else a diffusers file's key, else `<file stem>`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from diffx.errors import CheckpointError, InvalidArgumentError, elide
from diffx.files import check_option_file
from diffx.models.configs import ModelConfig
from diffx.models.stable_diffusion import StableDiffusion, build_without_weights
from diffx.models.tokenizer import ClipTokenizer
from diffx.weights.discovery import ModelSource
from diffx.weights.load import read_config, read_state_dict, unet_config
from diffx.weights.safe_pickle import load_torch_zip

EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors")
TOKEN_PATTERN = re.compile(r"[!-~]+")  # printable ASCII without spaces: a word the prompt can spell as written


@dataclass(frozen=True)
class EmbeddingSpec:
    """An embedding file and the word it is loaded as (`--embedding FILE[:TOKEN]`; None: the file's own)."""

    path: Path
    token: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))  # a str is taken too

    @classmethod
    def parse(cls, text: str) -> EmbeddingSpec:
        """`FILE` or `FILE:TOKEN`, checked; the last colon starts the token only when what precedes it names an
        embedding file (so `C:\\x.pt` stays a path)."""
        path, _, token = text.rpartition(":")
        spec = cls(Path(path), token) if Path(path).suffix.lower() in EMBEDDING_SUFFIXES else cls(Path(text))
        spec.check()
        return spec

    def check(self) -> None:
        """Before any work: the token one word of printable ASCII, the file there and an embedding file's kind."""
        name = elide(str(self.path), 80)
        if self.token is not None and not TOKEN_PATTERN.fullmatch(self.token):
            raise InvalidArgumentError(f"--embedding {name}:{elide(self.token, 40)!r}: the token must be printable "
                                       "ASCII without spaces, e.g. <my-style>")
        check_option_file("--embedding", self.path, EMBEDDING_SUFFIXES,
                          "optionally followed by :TOKEN (e.g. style.pt:<my-style>)")


@dataclass(frozen=True)
class Embedding:
    """A read embedding: the word, and per text encoder (SDXL: CLIP-L, bigG) its N vectors (N, width)."""

    path: Path
    token: str
    vectors: tuple[Tensor, ...]

    @property
    def tokens(self) -> list[str]:
        """The N tokens the word reads as: `<tok>`, `<tok>_1`, … (diffusers' names)."""
        count = self.vectors[0].shape[0]
        return [self.token, *(f"{self.token}_{i}" for i in range(1, count))]


def _token_tables(model: StableDiffusion) -> list[nn.Embedding]:
    """The text encoders' token embedding tables, in the order of their contexts (SDXL: CLIP-L, then bigG)."""
    return [module for name, module in model.text_encoder.named_modules() if name.endswith("token_embedding")]


def _file_tensors(path: Path) -> dict:
    """The file's entries by (string) key; an A1111 `.pt`'s are those of its `string_to_param` (its `name` is not
    the word: `--embedding FILE:TOKEN` or the file stem is, as in the web UI)."""
    if path.suffix.lower() == ".safetensors":
        return read_state_dict(path)
    tree = load_torch_zip(path)
    if isinstance(tree, dict) and isinstance(tree.get("string_to_param"), dict):
        tree = tree["string_to_param"]
    return {str(key): value for key, value in tree.items()} if isinstance(tree, dict) else {}


def read_vectors(spec: EmbeddingSpec) -> Embedding:
    """Read the file of `spec`: its layout known, per text encoder 1-D or 2-D vectors, the same count N >= 1 in
    each, all finite. The word: `spec.token`, else a diffusers file's key, else `<file stem>`."""
    name = elide(str(spec.path), 80)
    tensors = _file_tensors(spec.path)
    keys = sorted(tensors)
    if keys == ["clip_g", "clip_l"]:
        vectors, token = [tensors["clip_l"], tensors["clip_g"]], None
    elif keys == ["emb_params"] or keys == ["*"]:
        vectors, token = [tensors[keys[0]]], None
    elif len(keys) == 1 and TOKEN_PATTERN.fullmatch(keys[0]):  # diffusers: {token: vector(s)}
        vectors, token = [tensors[keys[0]]], keys[0]
    else:
        raise CheckpointError(f"{name} is not a textual inversion embedding: expected string_to_param, emb_params, "
                              f"clip_l + clip_g or one token's key, found {elide(', '.join(keys) or 'nothing', 80)}")
    if not all(isinstance(v, Tensor) and v.dim() in (1, 2) for v in vectors):
        raise CheckpointError(f"{name}: the embedding's vectors are not 1-D or 2-D tensors")
    vectors = [v.detach().float().reshape(-1, v.shape[-1]) for v in vectors]  # (width,) or (N, width) -> (N, width)
    counts = {v.shape[0] for v in vectors}
    if 0 in counts or any(v.shape[1] == 0 for v in vectors) or len(counts) > 1:
        raise CheckpointError(f"{name}: the embedding is empty or holds a different count per text encoder")
    if not all(torch.isfinite(v).all() for v in vectors):
        raise CheckpointError(f"{name}: the embedding holds NaN or infinite values; the file is damaged")
    return Embedding(spec.path, spec.token or token or f"<{spec.path.stem}>", tuple(vectors))


def read_embedding(spec: EmbeddingSpec, model: StableDiffusion) -> Embedding:
    """`read_vectors`, checked against `model` (or one of its config built without weights): one set of vectors
    per text encoder, each of its width (an SD2.x embedding, 1024 wide, does not fit SD1.x's 768)."""
    embedding = read_vectors(spec)
    widths = [table.embedding_dim for table in _token_tables(model)]
    found = [vectors.shape[1] for vectors in embedding.vectors]
    if found != widths:
        raise CheckpointError(f"{elide(str(spec.path), 80)}: an embedding of width {'+'.join(map(str, found))}, but "
                              f"this model's text encoder{'s take' if len(widths) > 1 else ' takes'} "
                              f"{'+'.join(map(str, widths))}; use an embedding trained for this model family")
    return embedding


def attach_embedding(model: StableDiffusion, embedding: Embedding) -> list[str]:
    """Teach `model` the embedding's word: the tokenizer's new tokens (refused if any is already in its
    vocabulary) and the same ids' rows appended to each text encoder's table. Returns the new tokens."""
    model.tokenizer = model.tokenizer.with_added_tokens(embedding.token, embedding.tokens)
    for table, vectors in zip(_token_tables(model), embedding.vectors, strict=True):
        # (vocab, width) + (N, width) -> (vocab + N, width), in the table's dtype and on its device.
        grown = torch.cat([table.weight.detach(), vectors.to(table.weight)])
        table.weight = nn.Parameter(grown, requires_grad=table.weight.requires_grad)
        table.num_embeddings = grown.shape[0]
    model.source += f" + embedding {embedding.path.name}:{embedding.token}"
    return embedding.tokens


def load_embedding(model: StableDiffusion, path: str | Path, token: str | None = None) -> list[str]:
    """Load the textual inversion embedding at `path` into `model` as the word `token` (default: the file's own
    token, else `<file stem>`); a prompt's `token` then reads as the returned tokens. Every check comes first."""
    spec = EmbeddingSpec(Path(path), token)
    spec.check()
    return attach_embedding(model, read_embedding(spec, model))


def read_embeddings(source: ModelSource, specs: Sequence[EmbeddingSpec],
                    config: ModelConfig | None = None) -> list[Embedding]:
    """Each embedding read (`read_embedding`) against the model at `source` built without weights (`read_config`,
    as `read_loras` does), and its word tried on a copy of that model's tokenizer: a width of another family, a
    token already in the vocabulary or two files' same token are refused before any weight is read."""
    if not specs:
        return []
    skeleton = build_without_weights(unet_config(read_config(source, config), "--embedding: embeddings"))
    embeddings = [read_embedding(spec, skeleton) for spec in specs]
    tokenizer = skeleton.tokenizer
    for embedding in embeddings:
        tokenizer = tokenizer.with_added_tokens(embedding.token, embedding.tokens)
    return embeddings


def embedding_tokenizer(tokenizer: ClipTokenizer, specs: Sequence[EmbeddingSpec]) -> ClipTokenizer:
    """`tokenizer` with each embedding's word, for showing how a prompt reads without a model (`diffx tokens`):
    only the vector count matters there, so the width is not checked."""
    for spec in specs:
        embedding = read_vectors(spec)
        tokenizer = tokenizer.with_added_tokens(embedding.token, embedding.tokens)
    return tokenizer
