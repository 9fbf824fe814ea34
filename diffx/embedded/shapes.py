"""The shapes world: flat-coloured circles, squares and triangles on a plain background, with captions.

A scene holds one object placed on a 3x3 grid ("a small red circle in the top left on a blue
background") or two objects side by side or one above the other ("a red circle left of a blue
square"). Everything is drawn from a numpy `Generator`, so a seed fixes pixels and caption.

Two-object convention: `Scene.objects[0]` is the left (or top) object. Captions name the relation
with "left of", "right of", "above" or "below"; the bare form "A and B" lists the objects
left-to-right (or top-to-bottom) and leaves the axis open.

Captions drop the size, position and background words at random (they are sampled independently of
the scene), so the model also learns to follow short prompts such as "a red circle".

Training and evaluation draw from separate seed streams (`TRAIN_STREAM`, `EVAL_STREAM`): the same
integer seed gives unrelated scenes in the two.
"""

import re
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw

from diffx.errors import InvalidArgumentError

# Saturated, well-separated RGB values: the judge snaps every pixel to the nearest of these.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (20, 170, 40),
    "blue": (30, 70, 235),
    "yellow": (250, 225, 20),
    "purple": (140, 40, 190),
    "orange": (255, 140, 0),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
# Position name -> object centre (x, y) as a fraction of the image; y grows downwards.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25), "top": (0.5, 0.25), "top right": (0.75, 0.25),
    "left": (0.25, 0.5), "center": (0.5, 0.5), "right": (0.75, 0.5),
    "bottom left": (0.25, 0.75), "bottom": (0.5, 0.75), "bottom right": (0.75, 0.75),
}
# Size name -> range of the object's radius: half its bounding box side, as a fraction of the image.
SIZE_RADIUS: dict[str, tuple[float, float]] = {"small": (0.09, 0.12), "large": (0.17, 0.21)}
# Radius halfway between the largest small object and the smallest large one.
SIZE_THRESHOLD = (SIZE_RADIUS["small"][1] + SIZE_RADIUS["large"][0]) / 2
# Two-object relations, named as in captions: "A left of B" means A is the left object.
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

POSITION_JITTER = 0.025  # single objects move this far (fraction of the image) around their grid point
PAIR_JITTER = 0.05  # two objects move this far along the axis they do not share
TWO_OBJECT_PROBABILITY = 0.4
SUPERSAMPLE = 4  # draw at 4x and box-filter down: each pixel gets its exact coverage (antialiasing)

TRAIN_STREAM = 0
EVAL_STREAM = 1

POSITION_PHRASES: dict[str, str] = {
    "center": "in the center", "left": "on the left", "right": "on the right",
    "top": "at the top", "bottom": "at the bottom",
    "top left": "in the top left", "top right": "in the top right",
    "bottom left": "in the bottom left", "bottom right": "in the bottom right",
}


@dataclass
class ShapeObject:
    """One flat-coloured shape. `centre` and `radius` are fractions of the image side."""

    shape: str
    colour: str
    size: str
    position: str
    centre: tuple[float, float]
    radius: float

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) as fractions of the image side."""
        x, y = self.centre
        return (x - self.radius, y - self.radius, x + self.radius, y + self.radius)


@dataclass
class Scene:
    """A background colour and one or two objects; with two, `objects[0]` is the left or top one."""

    objects: list[ShapeObject]
    background: str

    @property
    def axis(self) -> str | None:
        """How two objects are laid out: "horizontal", "vertical", or None for a single object."""
        if len(self.objects) < 2:
            return None
        return "horizontal" if self.objects[0].position == "left" else "vertical"


@dataclass
class ObjectSpec:
    """What a prompt asks of one object; None means the prompt does not say."""

    shape: str
    colour: str
    size: str | None = None
    position: str | None = None


@dataclass
class PromptSpec:
    """What a prompt asks for, as parsed by `parse_prompt`. `relation` is one of RELATIONS or None."""

    objects: list[ObjectSpec] = field(default_factory=list)
    background: str | None = None
    relation: str | None = None


def _random_object(rng: np.random.Generator, shape_colour: tuple[str, str], position: str,
                   centre: tuple[float, float]) -> ShapeObject:
    size = SIZES[rng.integers(len(SIZES))]
    radius = float(rng.uniform(*SIZE_RADIUS[size]))
    return ShapeObject(shape_colour[0], shape_colour[1], size, position, centre, radius)


def make_scene(rng: np.random.Generator) -> Scene:
    """Draw a random scene: one object on the 3x3 grid, or two objects side by side / stacked."""
    names = list(COLOURS)
    kinds = [(shape, colour) for shape in SHAPES for colour in names]
    if rng.random() < TWO_OBJECT_PROBABILITY:
        first, second = rng.choice(len(kinds), size=2, replace=False)  # never two identical objects
        offsets = rng.uniform(-PAIR_JITTER, PAIR_JITTER, size=2)
        if rng.random() < 0.5:
            slots = [("left", (0.25, 0.5 + offsets[0])), ("right", (0.75, 0.5 + offsets[1]))]
        else:
            slots = [("top", (0.5 + offsets[0], 0.25)), ("bottom", (0.5 + offsets[1], 0.75))]
        objects = [_random_object(rng, kinds[k], name, centre)
                   for k, (name, centre) in zip((first, second), slots, strict=True)]
    else:
        position = list(POSITIONS)[rng.integers(len(POSITIONS))]
        grid_x, grid_y = POSITIONS[position]
        dx, dy = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2)
        objects = [_random_object(rng, kinds[rng.integers(len(kinds))], position, (grid_x + dx, grid_y + dy))]
    used = {obj.colour for obj in objects}
    free = [name for name in names if name not in used]
    return Scene(objects=objects, background=free[rng.integers(len(free))])


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """Draw `scene` as a (size, size, 3) uint8 image, antialiased by 4x supersampling."""
    if size < 16:
        raise InvalidArgumentError(f"shapes-world image size {size} is too small; use 16 or more (e.g. 64)")
    canvas_size = size * SUPERSAMPLE
    canvas = Image.new("RGB", (canvas_size, canvas_size), COLOURS[scene.background])
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        _draw(draw, obj, canvas_size, COLOURS[obj.colour])
    return np.array(canvas.resize((size, size), Image.Resampling.BOX))  # a writable copy, unlike np.asarray


def object_masks(scene: Scene, size: int = 16) -> np.ndarray:
    """(objects, size, size) float32 in [0, 1]: how much of each pixel every object covers, drawn alone.

    Where two objects overlap each mask keeps its own whole shape. At the latent size (16 for the
    embedded model) these are the regions the attention-grounding loss pulls object words into.
    """
    canvas_size = size * SUPERSAMPLE
    masks = []
    for obj in scene.objects:
        canvas = Image.new("L", (canvas_size, canvas_size), 0)
        _draw(ImageDraw.Draw(canvas), obj, canvas_size, 255)
        masks.append(np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255)
    return np.stack(masks)


def _draw(draw: ImageDraw.ImageDraw, obj: ShapeObject, canvas_size: int, fill: tuple[int, int, int] | int) -> None:
    x, y, r = obj.centre[0] * canvas_size, obj.centre[1] * canvas_size, obj.radius * canvas_size
    if obj.shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)
    else:  # triangle: apex up, base and height both 2r, so it fills half its bounding box
        draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [-1, 1], the range the VAE and U-Net work in."""
    return torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0


def _with_article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _describe(obj: ShapeObject, rng: np.random.Generator) -> str:
    size = f"{obj.size} " if rng.random() < 0.6 else ""
    return _with_article(f"{size}{obj.colour} {obj.shape}")


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """Describe `scene` in words, dropping size, position and background words at random."""
    if len(scene.objects) == 1:
        (obj,) = scene.objects
        words = _describe(obj, rng)
        if rng.random() < 0.7:
            words += " " + POSITION_PHRASES[obj.position]
    else:
        first, second = (_describe(obj, rng) for obj in scene.objects)
        forward, backward = ("left of", "right of") if scene.axis == "horizontal" else ("above", "below")
        form = rng.integers(3)
        if form == 0:
            words = f"{first} {forward} {second}"
        elif form == 1:
            words = f"{second} {backward} {first}"
        else:
            words = f"{first} and {second}"
    if rng.random() < 0.6:
        words += f" on {_with_article(scene.background)} background"
    return words


_SIZE_WORDS = {"small": "small", "tiny": "small", "little": "small", "large": "large", "big": "large"}
_COLOUR = "|".join(COLOURS)
_OBJECT_RE = re.compile(rf"\b(?:({'|'.join(_SIZE_WORDS)})\s+)?({_COLOUR})\s+({'|'.join(SHAPES)})s?\b")
_BACKGROUND_RE = re.compile(rf"\b({_COLOUR})\s+background\b")
_RELATION_RE = re.compile(r"\b(left of|right of|above|below)\b")
_POSITION_RE = re.compile(r"\b(?:(top|bottom)\s+(left|right)|(center)|(left|right|top|bottom))\b")


def parse_prompt(prompt: str) -> PromptSpec:
    """Read which shapes, colours, sizes, positions and background a prompt asks for.

    The inverse of `caption`, tolerant of case, punctuation, "centre"/"middle", "upper"/"lower",
    "big"/"tiny" and "to the left of". Words it does not know are ignored; a prompt naming no
    coloured shape gives an empty `objects` list.
    """
    text = prompt.lower()
    text = re.sub(r"[^a-z ]+", " ", text)
    text = re.sub(r"\b(centre|middle)\b", "center", text)
    text = re.sub(r"\bupper\b", "top", text)
    text = re.sub(r"\blower\b", "bottom", text)
    spec = PromptSpec()
    background = _BACKGROUND_RE.search(text)
    if background:
        spec.background = background.group(1)
        text = text[:background.start()] + text[background.end():]
    matches = list(_OBJECT_RE.finditer(text))[:2]
    for match in matches:
        size_word, colour, shape = match.groups()
        spec.objects.append(ObjectSpec(shape, colour, _SIZE_WORDS.get(size_word) if size_word else None))
    if len(matches) == 2:
        relation = _RELATION_RE.search(text, matches[0].end(), matches[1].start())
        spec.relation = relation.group(1) if relation else None
    elif len(matches) == 1:
        rest = text[:matches[0].start()] + " " + text[matches[0].end():]
        position = _POSITION_RE.search(rest)
        if position:
            spec.objects[0].position = " ".join(word for word in position.groups() if word)
    return spec


def object_word_indices(words: list[str], objects: list[ObjectSpec]) -> list[tuple[int, int] | None]:
    """(colour word, shape word) indices in `words` of each object: the first shape word after the
    object's colour word. Searching in order keeps "a red circle left of a blue circle" apart. None where
    the words lack one."""
    indices: list[tuple[int, int] | None] = []
    cursor = 0
    for spec in objects:
        found = None
        colour_at = next((i for i in range(cursor, len(words)) if words[i] == spec.colour), None)
        if colour_at is not None:
            shape_at = next((i for i in range(colour_at + 1, len(words)) if words[i] in (spec.shape, spec.shape + "s")),
                            None)
            found = (colour_at, shape_at) if shape_at is not None else None
        indices.append(found)
        cursor = found[1] + 1 if found is not None else cursor
    return indices


def _scene_rng(stream: int, seed: int, index: int | None = None) -> np.random.Generator:
    """Independent generator per (stream, seed, index): numpy hashes the whole list into the state."""
    entropy = [stream, seed] if index is None else [stream, seed, index]
    return np.random.default_rng(entropy)


def make_eval_prompts(n: int, seed: int = 0) -> list[str]:
    """`n` prompts for evaluation, drawn from `EVAL_STREAM` (separate from the training stream)."""
    rng = _scene_rng(EVAL_STREAM, seed)
    return [caption(make_scene(rng), rng) for _ in range(n)]

