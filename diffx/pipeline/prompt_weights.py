"""Word weights in prompts, written as in AUTOMATIC1111's stable-diffusion-webui ("attention/emphasis").

The syntax, as the webui documents it:

    (word)        weight × 1.1             ((word))   × 1.21 (nesting multiplies)
    [word]        weight ÷ 1.1             [[word]]   ÷ 1.21
    (word:1.5)    weight × 1.5             (word:0.25) × 0.25; a number only with round brackets
    \\( \\) \\[ \\] \\\\   a literal bracket or backslash

A colon followed by anything but a number and `)` is plain text, as in the webui ("(style: ink)" is
"style: ink" × 1.1). Where the webui forgives, diffx refuses with one line: an unclosed or stray bracket,
brackets closed in the wrong order, a weight that is not a finite number or lies outside WEIGHT_RANGE
(also after nesting), and `[word:0.5]` (the webui's prompt-editing syntax, not a weight).

What a weight does (the webui's `FrozenCLIPEmbedderWithCustomWords`): the text encoder reads the prompt
without the brackets; each token's output vector e_i is multiplied by its word's weight w_i, and the
whole (77, width) context is then rescaled so that its mean is what it was before:

    e'_i = w_i e_i · mean(e) / mean(w e)

Start, end and padding tokens weigh 1. So a weight changes one word's vectors, and — through the mean —
every vector a little; `diffx weights` draws ‖e'_i − e_i‖ per token. The webui merges neighbouring
spans of equal weight and encodes every other span on its own, so a word never runs across two weights:
"(red)[circle]" reads "red circle" (and "(red)(circle)", one span, "redcircle").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffx.errors import InvalidArgumentError
from diffx.models.tokenizer import ClipTokenizer, TokenizedPrompt

ROUND_FACTOR = 1.1  # (word): the webui's emphasis step
WEIGHT_RANGE = (0.0, 4.0)  # beyond ~2 pictures break down; beyond 4 one token's vector swamps the mean

# One syntax element per match: an escape, a lone backslash, an opening bracket, ":number)" (the number
# in group 1; nan/inf are caught so they can be refused), a closing bracket, a run of text, a lone colon.
_SYNTAX = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?(?:[.\d]+|nan|inf(?:inity)?))\s*([)\]])|\)|]|[^\\()\[\]:]+|:",
                     re.IGNORECASE)
_CLOSES = {")": "(", "]": "["}
_OPENS = {"(": ")", "[": "]"}


@dataclass(frozen=True)
class WeightedText:
    """A span of the clean prompt and the weight of every word in it."""

    text: str
    weight: float


@dataclass
class WeightedPrompt(TokenizedPrompt):
    """A `TokenizedPrompt` of the clean prompt (`prompt`, brackets removed) with each position's weight."""

    written: str = ""  # the prompt as written, brackets and all
    weights: list[float] = field(default_factory=list)  # one per position (77); 1 for start, end, padding

    @property
    def weighted(self) -> bool:
        return any(weight != 1.0 for weight in self.weights)


def _syntax_error(what: str, prompt: str, column: int, problem: str, fix: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{what} {prompt!r}, column {column + 1}: {problem}; {fix}")


def _weight(what: str, prompt: str, column: int, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not WEIGHT_RANGE[0] <= value <= WEIGHT_RANGE[1]:
        raise _syntax_error(what, prompt, column, f"weight {text!r} is not a number from {WEIGHT_RANGE[0]:g} "
                            f"to {WEIGHT_RANGE[1]:g}", "write e.g. (red:1.3)")
    return value


def parse_weights(prompt: str, what: str = "prompt") -> list[WeightedText]:
    """The prompt's text spans with their weights (neighbours of equal weight merged, empty spans dropped).

    `what` names the prompt in errors ("prompt", "negative prompt").
    """
    spans: list[list] = []  # [text, weight], weights multiplied as brackets close
    open_brackets: list[tuple[str, int, int]] = []  # (bracket, first span inside it, column)

    def scale(since: int, factor: float) -> None:
        for span in spans[since:]:
            span[1] *= factor

    for match in _SYNTAX.finditer(prompt):
        piece, number, column = match.group(0), match.group(1), match.start()
        if number is not None and match.group(2) == "]":
            raise _syntax_error(what, prompt, column, "[word:number] is the webui's prompt editing, not a weight",
                                "weights go in round brackets: (word:0.5)")
        if piece in ("(", "["):
            open_brackets.append((piece, len(spans), column))
        elif number is not None or piece in _CLOSES:
            closing = ")" if number is not None else piece
            if not open_brackets or open_brackets[-1][0] != _CLOSES[closing]:
                problem = f"'{closing}' closes '{open_brackets[-1][0]}'" if open_brackets else \
                    f"'{closing}' has no matching '{_CLOSES[closing]}'"
                raise _syntax_error(what, prompt, column, problem,
                                    f"balance the brackets, or escape it as \\{closing} for a literal one")
            factor = _weight(what, prompt, column, number) if number is not None else \
                ROUND_FACTOR if closing == ")" else 1 / ROUND_FACTOR
            scale(open_brackets.pop()[1], factor)
        else:  # text; an escape stands for its second character
            spans.append([piece[1] if len(piece) == 2 and piece[0] == "\\" else piece, 1.0])
    if open_brackets:
        bracket, _, column = open_brackets[-1]
        raise _syntax_error(what, prompt, column, f"'{bracket}' is never closed",
                            f"close it with '{_OPENS[bracket]}', or escape it as \\{bracket} for a literal one")
    merged: list[WeightedText] = []
    for text, weight in spans:
        if weight > WEIGHT_RANGE[1]:
            raise InvalidArgumentError(f"{what} {prompt!r}: nesting makes {text.strip()!r} weigh {weight:.3g}, "
                                       f"more than {WEIGHT_RANGE[1]:g}; use fewer brackets")
        if merged and merged[-1].weight == weight:
            merged[-1] = WeightedText(merged[-1].text + text, weight)
        elif text:
            merged.append(WeightedText(text, weight))
    return merged


def _joined(spans: list[WeightedText], tokenizer: ClipTokenizer) -> str:
    """The clean prompt: the spans' texts, with a space where two would otherwise run into one word."""
    texts = [span.text for span in spans]
    joined = "".join(texts)
    if tokenizer.split_words(joined) == [w for text in texts for w in tokenizer.split_words(text)]:
        return joined
    # The webui tokenizes each span on its own; a space between two spans does the same for one text.
    return "".join(text if i == 0 or texts[i - 1][-1:].isspace() or text[:1].isspace() else " " + text
                   for i, text in enumerate(texts))


def weighted_tokens(tokenizer: ClipTokenizer, prompt: str, what: str = "prompt") -> WeightedPrompt:
    """Tokenize the clean prompt and give each of the 77 positions its word's weight."""
    spans = parse_weights(prompt, what)
    words = [(word, span.weight) for span in spans for word in tokenizer.split_words(span.text)]
    tokens = tokenizer.encode(_joined(spans, tokenizer))
    if tokens.words != [word for word, _ in words]:  # only a bracket inside a special token gets here
        raise InvalidArgumentError(f"{what} {prompt!r}: a bracket splits a word the tokenizer reads whole; "
                                   "put the brackets around whole words")
    word_weights = [weight for _, weight in words]
    weights = [1.0 if word is None else word_weights[word] for word in tokens.word_ids]
    return WeightedPrompt(**tokens.__dict__, written=prompt, weights=weights)


def escape_weights(text: str) -> str:
    """`text` with its brackets and backslashes escaped, so that `parse_weights` reads it as written."""
    return re.sub(r"([()\[\]\\])", r"\\\1", text)


def apply_weights(context: Tensor, weights: Tensor) -> Tensor:
    """e'_i = w_i e_i · mean(e) / mean(w e), each prompt's mean over its (77, width) context.

    `context` (B, 77, width), `weights` (B, 77) -> (B, 77, width), in the context's dtype (computed in fp32).
    """
    values = context.float()
    original_mean = values.mean(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    scaled = values * weights.to(values)[..., None]  # (B, 77, width)
    return (scaled * (original_mean / scaled.mean(dim=(1, 2), keepdim=True))).to(context.dtype)


def positions_weights(prompts: list[TokenizedPrompt]) -> Tensor | None:
    """(B, 77) weights of a batch of prompts, or None when no prompt has a weight other than 1."""
    if not any(isinstance(p, WeightedPrompt) and p.weighted for p in prompts):
        return None
    return torch.tensor([p.weights if isinstance(p, WeightedPrompt) else [1.0] * len(p.ids) for p in prompts])
