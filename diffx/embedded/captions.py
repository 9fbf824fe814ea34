"""The caption-noise model: v2-world captions as loose as web alt-text.

Why: real Stable Diffusion learned from captions that leave things out, get things wrong and add
words that are not in the picture; classifier-free guidance matters because the conditional model
has to be pushed to follow a prompt such captions only loosely taught it. Training the v2 embedded
model on such captions, at recorded rates, makes its guidance behave the same way.

Each caption is drawn in three steps (all from the caller's numpy `Generator`):
  1. with probability `p_useless` it says nothing useful ("untitled", "IMG_2041", ...);
     else with probability `p_exact` it is the exact caption (`world_text.exact_caption`);
     else it is a *noisy* caption, as follows.
  2. Starting from the exact content (`world_text.describe`): each object after the first is dropped
     with `p_omit_object` (and so is every object after it: alt-text names the main things first).
     Each stated attribute is then omitted with its `p_omit_*` rate (colour, fill, size; position,
     which is a one-object caption's grid cell or a multi-object caption's relations; background), and
     one that survives is made wrong with `p_wrong` (another colour, fill, size, shape, grid cell or
     tint; a relation turns to its opposite). The shape is never omitted, only made wrong. A caption
     cut down to one object states no position.
  3. With `p_extra`, filler words that are not in the picture are added before or after
     ("photo of", "illustration of", "hd", "nice", "stock image", ...).
The rates are a frozen `CaptionNoise`; `to_dict`/`from_dict` store them in training.json and the model card.
A noisy caption may come out exact by chance (nothing omitted or wrong); step 1's `p_exact` counts
only the captions made exact on purpose.
"""

from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from diffx.embedded.world import COLOURS, FILLS, POSITIONS, SHAPES, SIZES, TINTS, Scene
from diffx.embedded.world_text import OPPOSITE, BackgroundWords, CaptionSpec, ObjectWords, caption_text, describe
from diffx.errors import InvalidArgumentError

USELESS_CAPTIONS: tuple[str, ...] = ("untitled", "image", "photo", "picture", "no description", "thumbnail",
                                     "file", "download")
EXTRA_PREFIXES: tuple[str, ...] = ("photo of", "image of", "illustration of", "a picture of", "clipart of",
                                   "drawing of")
EXTRA_SUFFIXES: tuple[str, ...] = ("hd", "4k", "nice", "vector", "stock image", "high quality", "wallpaper",
                                   "free download", "illustration")
# Attribute names as recorded in `NoisyCaption.events`.
OBJECT_ATTRIBUTES: tuple[str, ...] = ("colour", "fill", "size")


@dataclass(frozen=True)
class CaptionNoise:
    """The caption-noise rates (see the module docstring for where each applies)."""

    p_useless: float = 0.05
    p_exact: float = 0.3
    p_omit_object: float = 0.25
    p_omit_colour: float = 0.1
    p_omit_fill: float = 0.5
    p_omit_size: float = 0.5
    p_omit_position: float = 0.5
    p_omit_background: float = 0.5
    p_wrong: float = 0.05
    p_extra: float = 0.3

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not 0.0 <= value <= 1.0:
                raise InvalidArgumentError(f"caption noise {item.name}={value} must be a probability in [0, 1]")
        if self.p_useless + self.p_exact > 1.0:
            raise InvalidArgumentError(
                f"p_useless + p_exact = {self.p_useless + self.p_exact} exceeds 1; they share one draw"
            )

    def to_dict(self) -> dict[str, float]:
        """The settings as a JSON-ready dict (for training.json and the model card)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, float]) -> "CaptionNoise":
        """The inverse of `to_dict`; keys it does not know are an error, missing ones take the defaults."""
        unknown = set(values) - {item.name for item in fields(cls)}
        if unknown:
            raise InvalidArgumentError(f"unknown caption-noise settings {sorted(unknown)}")
        return cls(**{key: float(value) for key, value in values.items()})


EXACT_CAPTIONS = CaptionNoise(p_useless=0.0, p_exact=1.0)  # no noise at all


@dataclass
class NoisyCaption:
    """A drawn caption and how it was made: `kind` is "useless", "exact" or "noisy"; `events` lists
    (attribute, outcome) for every chance a noisy caption had, outcome "omitted", "wrong" or "kept"
    (attribute "object" for dropped objects, "extra" with "added" or "kept" for filler words)."""

    text: str
    kind: str
    events: list[tuple[str, str]]


def _other(rng: np.random.Generator, choices: "tuple[str, ...] | list[str]", value: str) -> str:
    """A value of `choices` other than `value`, uniformly."""
    options = [choice for choice in choices if choice != value]
    return options[rng.integers(len(options))]


class _Noiser:
    """Applies one noisy caption's omissions and errors, recording each chance in `events`."""

    def __init__(self, rng: np.random.Generator, settings: CaptionNoise):
        self.rng, self.settings = rng, settings
        self.events: list[tuple[str, str]] = []

    def outcome(self, attribute: str, p_omit: float) -> str:
        """Draw omitted / wrong / kept for one stated attribute (p_omit = 0: never omitted)."""
        if self.rng.random() < p_omit:
            result = "omitted"
        else:
            result = "wrong" if self.rng.random() < self.settings.p_wrong else "kept"
        self.events.append((attribute, result))
        return result

    def value(self, attribute: str, p_omit: float, value: str, choices: "tuple[str, ...] | list[str]") -> str | None:
        result = self.outcome(attribute, p_omit)
        return None if result == "omitted" else _other(self.rng, choices, value) if result == "wrong" else value

    def object_words(self, words: ObjectWords) -> ObjectWords:
        s = self.settings
        colour = self.value("colour", s.p_omit_colour, words.colour or "", list(COLOURS))
        fill = self.value("fill", s.p_omit_fill, words.fill or "", FILLS)
        size = self.value("size", s.p_omit_size, words.size or "", SIZES)
        shape = self.value("shape", 0.0, words.shape, SHAPES) or words.shape
        position = None
        if words.position:
            position = self.value("position", s.p_omit_position, words.position, list(POSITIONS))
        return ObjectWords(shape, colour, fill, size, position)

    def relations(self, spec: CaptionSpec) -> tuple[str | None, str | None]:
        """Omit all relations at once (then the caption says "A and B"), or flip each with p_wrong."""
        if self.rng.random() < self.settings.p_omit_position:
            self.events.append(("position", "omitted"))
            return None, None
        flipped = []
        for relation in (spec.relation, spec.them):
            if relation is None:
                flipped.append(None)
                continue
            wrong = self.rng.random() < self.settings.p_wrong
            self.events.append(("position", "wrong" if wrong else "kept"))
            flipped.append(OPPOSITE[relation] if wrong else relation)
        return flipped[0], flipped[1]

    def background(self, words: BackgroundWords) -> BackgroundWords:
        result = self.outcome("background", self.settings.p_omit_background)
        if result == "omitted":
            return BackgroundWords()
        colours = list(words.colours or ())
        if result == "wrong":
            k = int(self.rng.integers(len(colours)))
            colours[k] = _other(self.rng, [name for name in TINTS if name not in colours], colours[k])
        return BackgroundWords(words.kind, tuple(colours))


def _useless(rng: np.random.Generator) -> str:
    if rng.random() < 0.4:  # a camera's file name
        return f"{('IMG_', 'DSC', 'image')[rng.integers(3)]}{rng.integers(10000):04d}"
    return USELESS_CAPTIONS[rng.integers(len(USELESS_CAPTIONS))]


def _with_extras(text: str, rng: np.random.Generator, noiser: _Noiser) -> str:
    if rng.random() >= noiser.settings.p_extra:
        noiser.events.append(("extra", "kept"))
        return text
    noiser.events.append(("extra", "added"))
    if rng.random() < 0.5:
        return f"{EXTRA_PREFIXES[rng.integers(len(EXTRA_PREFIXES))]} {text}"
    return f"{text} {EXTRA_SUFFIXES[rng.integers(len(EXTRA_SUFFIXES))]}"


def draw_caption(scene: Scene, rng: np.random.Generator, settings: CaptionNoise = CaptionNoise()) -> NoisyCaption:
    """Draw one caption of `scene` under `settings`, with the record of what the noise did."""
    choice = rng.random()
    if choice < settings.p_useless:
        return NoisyCaption(_useless(rng), "useless", [])
    exact = describe(scene, rng)
    if choice < settings.p_useless + settings.p_exact:
        return NoisyCaption(caption_text(exact), "exact", [])
    noiser = _Noiser(rng, settings)
    kept = 1
    while kept < len(exact.objects) and rng.random() >= settings.p_omit_object:
        noiser.events.append(("object", "kept"))
        kept += 1
    if kept < len(exact.objects):
        noiser.events.append(("object", "omitted"))  # this object and every later one
    spec = replace(exact, objects=exact.objects[:kept], them=exact.them if kept == 3 else None)
    spec = replace(spec, objects=tuple(noiser.object_words(words) for words in spec.objects))
    if kept >= 2:
        relation, them = noiser.relations(spec)
        spec = replace(spec, relation=relation, them=them)
    spec = replace(spec, background=noiser.background(spec.background))
    return NoisyCaption(_with_extras(caption_text(spec), rng, noiser), "noisy", noiser.events)


def noisy_caption(scene: Scene, rng: np.random.Generator, settings: CaptionNoise = CaptionNoise()) -> str:
    """A caption of `scene` as loose as web alt-text, under `settings` (`draw_caption`'s text)."""
    return draw_caption(scene, rng, settings).text
