"""Tables: how CLIP reads a prompt (for the terminal and the HTML report), and which models diffx finds."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.table import Table

from diffx.errors import elide
from diffx.models.tokenizer import CONTEXT_LENGTH, END_TOKEN, START_TOKEN, TokenizedPrompt
from diffx.pipeline.prompt_weights import WeightedPrompt

if TYPE_CHECKING:
    from diffx.weights.discovery import ModelSource


@dataclass(frozen=True)
class WordRow:
    """One prompt word as the text encoder reads it; no positions = cut by the 77-token window."""

    word: str
    positions: list[int]
    tokens: list[str]
    ids: list[int]


def word_rows(tokenized: TokenizedPrompt) -> Iterator[WordRow]:
    """Each word → its BPE tokens, their ids and positions in the window (a prompt as the tokenizer read it, or
    a trace's `tokens`)."""
    for index, word in enumerate(tokenized.words):
        positions = tokenized.word_positions(index)
        yield WordRow(word, positions, [tokenized.tokens[p] for p in positions], [tokenized.ids[p] for p in positions])


def _span(positions: list[int]) -> str:
    return str(positions[0]) if len(positions) == 1 else f"{positions[0]}–{positions[-1]}"


CUT_TOKENS_SHOWN = 8  # the (cut) row shows this many tokens at each end of a long cut


def _cut_summary(tokens: Sequence[str]) -> str:
    """The tokens the window cut off, or for many of them the first and last few and how many in all."""
    if len(tokens) <= 3 * CUT_TOKENS_SHOWN:
        return " ".join(tokens)
    return (f"{' '.join(tokens[:CUT_TOKENS_SHOWN])} … {' '.join(tokens[-CUT_TOKENS_SHOWN:])} "
            f"({len(tokens)} tokens)")


def tokens_table(tokenized: TokenizedPrompt) -> Table:
    """How CLIP reads a prompt: each word → its BPE tokens → their ids → their positions in the 77-token
    window, with the start, end and padding tokens, and what the 77-token cap cut off; for a prompt with word
    weights (`prompt_weights.weighted_tokens`) the clean prompt in the title and a weight column."""
    weighted = isinstance(tokenized, WeightedPrompt) and tokenized.weighted
    title = f"{tokenized.num_tokens} of {CONTEXT_LENGTH} tokens used"
    table = Table(title=f"{title} · the prompt read without its brackets: {elide(tokenized.prompt)}"
                  if weighted else title,
                  caption=f"cut by the {CONTEXT_LENGTH}-token limit: {elide(tokenized.truncated_text)}"
                  if tokenized.truncated_tokens else None, caption_style="yellow")
    for column in ("word", "BPE tokens", "ids", "positions", *(("weight",) if weighted else ())):
        table.add_column(column)
    last = tokenized.num_tokens - 1
    one = ("1",) if weighted else ()  # start, end and padding always weigh 1
    table.add_row("(start)", START_TOKEN, str(tokenized.ids[0]), "0", *one, style="dim")
    for row in word_rows(tokenized):
        if row.positions:
            weight = (f"{tokenized.weights[row.positions[0]]:.4g}",) if weighted else ()
            table.add_row(row.word, " ".join(row.tokens), " ".join(map(str, row.ids)), _span(row.positions),
                          *weight)
    table.add_row("(end)", END_TOKEN, str(tokenized.ids[last]), str(last), *one, style="dim")
    if last < CONTEXT_LENGTH - 1:
        table.add_row("(padding)", f"{tokenized.tokens[-1]} × {CONTEXT_LENGTH - 1 - last}", str(tokenized.ids[-1]),
                      _span([last + 1, CONTEXT_LENGTH - 1]), *one, style="dim")
    if tokenized.truncated_tokens:
        table.add_row("(cut)", _cut_summary(tokenized.truncated_tokens), "", "", style="yellow")
    return table


def models_table(sources: Sequence[ModelSource], architectures: Sequence[str] | None = None) -> Table:
    """The models found on disk (`diffx.discovery.find_models()`), the default one first, with what each is
    (`weights.describe_architecture`) when `architectures` are given."""
    table = Table(title="models", caption=None if sources else
                  "no model found; pass --model PATH, set DIFFX_MODEL or put a checkpoint in data/")
    table.add_column("")
    table.add_column("path", overflow="fold")  # a path is only useful whole
    table.add_column("format")
    table.add_column("description")
    if architectures is not None:
        table.add_column("architecture", overflow="fold")
    for number, source in enumerate(sources):
        table.add_row("default" if number == 0 else "", str(source.path), source.format, source.description,
                      *([architectures[number]] if architectures is not None else []))
    return table
