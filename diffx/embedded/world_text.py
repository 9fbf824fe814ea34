"""Exact captions of v2-world scenes (`world.py`), and the parser that reads a caption or prompt back.

The grammar, one object phrase per object:

    object      = "a" [size] [colour] [fill] shape        "a large red striped star"
    one object  = object position-phrase background        "... in the top left on a pale blue background"
    two objects = object relation object background        "a red circle left of a blue square ..."
    three       = object relation object "and" object relation "them" background
                                                          "... and a green heart below them ..."
    background  = "on a" tint "background" | "on a" tint "to" tint "gradient background"
                | "on a" tint "checkered background"

An exact caption names every attribute. Relations come from the objects' grid cells ("A left of B":
A's column is left of B's), so a diagonal pair may be captioned either way; "C below them" says C is
below both others, and a 3x3 grid always has such a C (the one alone in the lowest row, or in the
highest, or the rightmost or leftmost of three in a row). Every part but the shape is optional to the
parser, which is how prompts say less ("a red circle") and how the caption-noise model (`captions.py`)
drops words. Position words follow `shapes.POSITION_PHRASES`.
"""

import re
from dataclasses import dataclass, field, replace

import numpy as np

from diffx.embedded.shapes import _POSITION_RE, _SIZE_WORDS, POSITION_PHRASES, RELATIONS, _scene_rng, _with_article
from diffx.embedded.world import COLOURS, EVAL_STREAM, FILLS, POSITIONS, SHAPES, TINTS, Scene, WorldObject, make_scene

# A relation and its mirror: "A left of B" is "B right of A".
OPPOSITE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


@dataclass(frozen=True)
class ObjectWords:
    """What a caption says of one object; None where it does not say."""

    shape: str
    colour: str | None = None
    fill: str | None = None
    size: str | None = None
    position: str | None = None  # only a one-object caption places its object on the grid


@dataclass(frozen=True)
class BackgroundWords:
    """What a caption says of the background: its kind and tint(s), each None where unsaid."""

    kind: str | None = None
    colours: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CaptionSpec:
    """A caption's content. `relation` links objects 0 and 1 ("0 left of 1"); `them` says where
    object 2 is relative to both others ("2 below them")."""

    objects: tuple[ObjectWords, ...] = field(default_factory=tuple)
    relation: str | None = None
    them: str | None = None
    background: BackgroundWords = field(default_factory=BackgroundWords)


def relations_between(first: WorldObject, second: WorldObject) -> list[str]:
    """Every relation "first R second" that their grid cells make true (1 or 2 of RELATIONS)."""
    (x1, y1), (x2, y2) = POSITIONS[first.position], POSITIONS[second.position]
    holds = {"left of": x1 < x2, "right of": x1 > x2, "above": y1 < y2, "below": y1 > y2}
    return [name for name in RELATIONS if holds[name]]


def _words_of(obj: WorldObject, position: bool) -> ObjectWords:
    return ObjectWords(obj.shape, obj.colour, obj.fill, obj.size, obj.position if position else None)


def describe(scene: Scene, rng: np.random.Generator) -> CaptionSpec:
    """The exact content of a caption of `scene`: every attribute, with the relations chosen at random
    among the true ones (and, for three objects, which one is "them"'s outsider)."""
    background = BackgroundWords(scene.background.kind, scene.background.colours)
    objects = scene.objects
    if len(objects) == 1:
        return CaptionSpec((_words_of(objects[0], True),), background=background)
    if len(objects) == 2:
        relation = rng.choice(relations_between(objects[0], objects[1]))
        return CaptionSpec(tuple(_words_of(obj, False) for obj in objects), str(relation), None, background)
    options = [(k, name) for k, outsider in enumerate(objects) for name in RELATIONS
               if all(name in relations_between(outsider, other) for other in objects if other is not outsider)]
    outsider, them = options[rng.integers(len(options))]
    first, second = (obj for k, obj in enumerate(objects) if k != outsider)
    relation = rng.choice(relations_between(first, second))
    ordered = (first, second, objects[outsider])
    return CaptionSpec(tuple(_words_of(obj, False) for obj in ordered), str(relation), them, background)


def _object_text(words: ObjectWords) -> str:
    return _with_article(" ".join(word for word in (words.size, words.colour, words.fill, words.shape) if word))


def _background_text(words: BackgroundWords) -> str:
    colours = words.colours or ()
    if words.kind == "gradient" and len(colours) == 2:
        tint = f"{colours[0]} to {colours[1]}"
    else:
        tint = colours[0] if colours else ""
    kind = words.kind if words.kind in ("gradient", "checkered") else ""
    if not (tint or kind):
        return ""
    return "on " + _with_article(" ".join(part for part in (tint, kind, "background") if part))


def caption_text(spec: CaptionSpec) -> str:
    """Write `spec` in the grammar above; the parts it leaves None are left out."""
    parts = [_object_text(spec.objects[0])]
    if len(spec.objects) == 1 and spec.objects[0].position:
        parts.append(POSITION_PHRASES[spec.objects[0].position])
    if len(spec.objects) >= 2:
        parts += [spec.relation or "and", _object_text(spec.objects[1])]
    if len(spec.objects) == 3:
        parts += ["and", _object_text(spec.objects[2])] + ([spec.them, "them"] if spec.them else [])
    parts.append(_background_text(spec.background))
    return " ".join(part for part in parts if part)


def exact_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption naming every attribute of `scene` (`describe`, then `caption_text`)."""
    return caption_text(describe(scene, rng))


_TINT = "|".join(TINTS)
_BACKGROUND_RE = re.compile(
    rf"\b(?:({_TINT})\s+to\s+({_TINT})\s+gradient|(?:({_TINT})\s+)?(gradient|checkered|plain)|({_TINT}))\s+background\b"
)
_OBJECT_RE = re.compile(
    rf"\b(?:({'|'.join(_SIZE_WORDS)})\s+)?(?:({'|'.join(COLOURS)})\s+)?(?:({'|'.join(FILLS)})\s+)?"
    rf"({'|'.join(SHAPES)})s?\b"
)
_RELATION_RE = re.compile(r"\b(left of|right of|above|below)\b")
_THEM_RE = re.compile(r"\b(left of|right of|above|below)\s+them\b")


def _normalise(text: str) -> str:
    """Lower case, letters only, and the v1 parser's synonyms: "centre"/"middle", "upper"/"lower", "gray"."""
    text = re.sub(r"[^a-z ]+", " ", text.lower())
    for pattern, word in ((r"\b(centre|middle)\b", "center"), (r"\bupper\b", "top"), (r"\blower\b", "bottom"),
                          (r"\bgray\b", "grey"), (r"\bto the (left|right) of\b", r"\1 of")):
        text = re.sub(pattern, word, text)
    return text


def _parse_background(match: re.Match | None) -> BackgroundWords:
    if match is None:
        return BackgroundWords()
    start, end, tint, kind, plain_tint = match.groups()
    if start:
        return BackgroundWords("gradient", (start, end))
    if kind:
        return BackgroundWords(kind, (tint,) if tint else None)
    return BackgroundWords("plain", (plain_tint,))


def parse_caption(text: str) -> CaptionSpec:
    """Read what a caption or prompt states: the inverse of `caption_text` on exact captions.

    Tolerant of case, punctuation, plurals, filler words ("photo of", "hd") and the v1 synonyms
    ("big", "tiny", "middle", "upper", "to the left of"). At most three objects are read; a
    text naming no shape gives an empty `objects`.
    """
    text = _normalise(text)
    found = _BACKGROUND_RE.search(text)
    background = _parse_background(found)
    if found:
        text = text[:found.start()] + " " + text[found.end():]
    matches = list(_OBJECT_RE.finditer(text))[:3]
    objects = [ObjectWords(shape, colour, fill, _SIZE_WORDS.get(size) if size else None)
               for size, colour, fill, shape in (match.groups() for match in matches)]
    relation = them = None
    if len(matches) >= 2:
        between = _RELATION_RE.search(text, matches[0].end(), matches[1].start())
        relation = between.group(1) if between else None
    if len(matches) == 3:
        after = _THEM_RE.search(text, matches[2].end())
        them = after.group(1) if after else None
    if len(matches) == 1:
        rest = text[:matches[0].start()] + " " + text[matches[0].end():]
        position = _POSITION_RE.search(rest)
        if position:
            objects[0] = replace(objects[0], position=" ".join(word for word in position.groups() if word))
    return CaptionSpec(tuple(objects), relation, them, background)


def make_eval_prompts(n: int, seed: int = 0) -> list[str]:
    """`n` exact captions of scenes from `EVAL_STREAM` (separate from the training stream)."""
    rng = _scene_rng(EVAL_STREAM, seed)
    return [exact_caption(make_scene(rng), rng) for _ in range(n)]


def make_open_prompts(n: int, seed: int = 0) -> list[str]:
    """`n` under-specified prompts, "a red circle": colour and shape only, leaving size, fill, position
    and background to the model (for a diversity measure across seeds). From `EVAL_STREAM`."""
    rng = _scene_rng(EVAL_STREAM, seed, 2**32 - 1)  # its own generator, unrelated to make_eval_prompts
    colours = list(COLOURS)
    return [_object_text(ObjectWords(SHAPES[rng.integers(len(SHAPES))], colours[rng.integers(len(colours))]))
            for _ in range(n)]
