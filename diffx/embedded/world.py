"""The v2 world: patterned shapes on plain, gradient or checkered backgrounds, at 128x128 px.

The second embedded model's training pictures. Like the v1 shapes world (`shapes.py`, which stays
as it is for the shipped v1 model) a scene is drawn from a numpy `Generator`, so a seed fixes the
pixels, and training and evaluation draw from separate seed streams (`TRAIN_STREAM`, `EVAL_STREAM`).

A scene holds 1-3 objects, each with a shape (`SHAPES`), a colour (`COLOURS`), a fill (`FILLS`), a
size (`SIZES`) and a cell of the 3x3 grid (`POSITIONS`, the v1 grid); no two objects share a cell
and their bounding boxes keep a gap (`OBJECT_GAP`), so they never touch.

The palette is designed for a judge that reads a model's imperfect pictures:
  * object colours are saturated and far apart; every one has a channel at or below 130;
  * a striped or dotted fill paints its pattern in a darker shade of the object colour
    (`SHADE` times it). Base and shade lie on one ray from black, so blur that mixes them keeps the
    hue: the judge reads the colour as the ray (`colour_segments`) and the fill as how far along it;
  * stripes run diagonally ("/"), dots sit on a square grid: blur cannot turn one into the other,
    and the judge tells them apart by the asymmetry between the two diagonals;
  * backgrounds are pale tints (`TINTS`, every channel >= 170 even in the checkered shade), so
    "is this pixel object or background" is never in doubt. A gradient runs linearly between two
    tints, left to right or top to bottom; a checkered background alternates a tint with
    `CHECKER_SHADE` times it in tiles of `CHECKER_TILE`, coarse enough to survive blur.

Rendering supersamples by 4 and box-filters down (as `shapes.render`), so every pixel gets its exact
coverage. `object_masks` draws each object's coverage alone, for the attention-grounding loss.
Captions (exact ones and their parser) are in `world_text.py`, the caption-noise model in
`captions.py`, the judge in `world_judge.py`.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from diffx.embedded.shapes import EVAL_STREAM, POSITIONS, SUPERSAMPLE, TRAIN_STREAM, ShapeObject, to_tensor
from diffx.errors import InvalidArgumentError

__all__ = [
    "BACKGROUND_KINDS", "COLOURS", "EVAL_STREAM", "FILLS", "POSITIONS", "SHAPES", "SIZES", "TINTS",
    "TRAIN_STREAM", "Background", "Scene", "WorldObject", "make_scene", "object_masks", "render", "to_tensor",
]

IMAGE_SIZE = 128
# Saturated object colours; each has a channel <= 130, far from the pale backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 25, 30),
    "orange": (250, 115, 0),
    "yellow": (240, 215, 0),
    "lime": (130, 210, 20),
    "green": (0, 135, 55),
    "cyan": (0, 185, 215),
    "blue": (30, 60, 225),
    "purple": (130, 35, 185),
    "pink": (240, 70, 165),
    "grey": (125, 125, 125),
}
# Pale background tints; every channel >= 200 (>= 170 in the checkered shade).
TINTS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "pale blue": (200, 222, 252),
    "pale pink": (252, 208, 226),
    "pale yellow": (250, 242, 185),
    "pale green": (204, 240, 204),
    "pale purple": (226, 208, 248),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "ring", "hexagon")
FILLS: tuple[str, ...] = ("solid", "striped", "dotted")
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUND_KINDS: tuple[str, ...] = ("plain", "gradient", "checkered")
# Size name -> range of the object's radius (half its nominal 2r x 2r box), as a fraction of the image.
SIZE_RADIUS: dict[str, tuple[float, float]] = {"small": (0.085, 0.115), "large": (0.165, 0.2)}
SIZE_THRESHOLD = (SIZE_RADIUS["small"][1] + SIZE_RADIUS["large"][0]) / 2
OBJECT_COUNT_WEIGHTS = (0.4, 0.35, 0.25)  # P(1 object), P(2), P(3)
BACKGROUND_WEIGHTS = (0.4, 0.3, 0.3)  # P(plain), P(gradient), P(checkered)

SHADE = 0.55  # stripes and dots are the object colour times this
CHECKER_SHADE = 0.85  # the darker checkered tiles are the tint times this
CHECKER_TILE = 1 / 8  # side of a checkered tile (16 px at 128)
STRIPE_PERIOD = 0.08  # stripe period across the stripes (~10 px at 128): half dark, half base
DOT_PERIOD = 0.08  # spacing of the dot grid
DOT_RADIUS = 0.022  # radius of a dot (~3 px at 128)
POSITION_JITTER = 0.025  # objects move this far (fraction of the image) around their grid point
OBJECT_GAP = 0.03  # the least gap between two objects' bounding boxes
MARGIN = 0.01  # objects stay this far inside the image
RING_HOLE = 0.55  # a ring's hole radius over its outer radius
STAR_INNER = 0.5  # a star's inner vertices' radius over its tips'


@dataclass
class WorldObject(ShapeObject):
    """One shape: a v1 `ShapeObject` (`centre` and `radius` fractions of the image side) with a fill.

    The shape fills at most the 2r x 2r box around its centre; `SHAPE_EXTENTS` says exactly which part.
    """

    fill: str = "solid"

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1): the drawn shape's bounding box, as fractions of the image side."""
        x0, y0, x1, y1 = SHAPE_EXTENTS[self.shape]
        x, y, r = self.centre[0], self.centre[1], self.radius
        return (x + x0 * r, y + y0 * r, x + x1 * r, y + y1 * r)


@dataclass(frozen=True)
class Background:
    """`kind` is one of BACKGROUND_KINDS; `colours` holds one tint, or two for a gradient (from the
    left or top edge to the right or bottom one, as `vertical` says)."""

    kind: str
    colours: tuple[str, ...]
    vertical: bool = False


@dataclass(frozen=True)
class Scene:
    """A background and 1-3 objects, in the order the exact caption names them."""

    objects: tuple[WorldObject, ...]
    background: Background


def _polygon(points: np.ndarray) -> np.ndarray:
    """Scale the points (n, 2) so their bounding box is exactly [-1, 1] on its longer axis, centred on 0."""
    low, high = points.min(axis=0), points.max(axis=0)
    return (points - (low + high) / 2) * (2 / (high - low).max())


def _unit_outlines() -> dict[str, list[np.ndarray]]:
    """Each shape as polygons (n, 2) around (0, 0) with radius 1 (y down); the second polygon of a ring is its hole.

    Curved shapes are 96-gons: at 4x supersampling their edge is within a hundredth of a pixel of the curve.
    """
    turn = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    circle = np.stack([np.cos(turn), np.sin(turn)], axis=1)
    tips = -np.pi / 2 + np.arange(10) * np.pi / 5  # 5 tips and 5 inner corners, a tip straight up
    star = np.stack([np.cos(tips), np.sin(tips)], axis=1) * np.where(np.arange(10) % 2, STAR_INNER, 1.0)[:, None]
    corners = -np.pi / 2 + np.arange(6) * np.pi / 3  # pointy top and bottom
    heart = np.stack([16 * np.sin(turn) ** 3,
                      -(13 * np.cos(turn) - 5 * np.cos(2 * turn) - 2 * np.cos(3 * turn) - np.cos(4 * turn))], axis=1)
    return {
        "circle": [circle],
        "square": [np.array([(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)])],
        "triangle": [np.array([(0.0, -1.0), (1.0, 1.0), (-1.0, 1.0)])],  # apex up, fills half its box
        "star": [star],
        "heart": [_polygon(heart)],
        "ring": [circle, circle * RING_HOLE],
        "hexagon": [np.stack([np.cos(corners), np.sin(corners)], axis=1)],
    }


OUTLINES = _unit_outlines()
# Shape -> (x0, y0, x1, y1): its bounding box around its centre, in units of its radius.
SHAPE_EXTENTS: dict[str, tuple[float, float, float, float]] = {
    name: (*(float(v) for v in polygons[0].min(axis=0)), *(float(v) for v in polygons[0].max(axis=0)))
    for name, polygons in OUTLINES.items()
}


def _boxes_apart(first: tuple[float, ...], second: tuple[float, ...]) -> bool:
    """Whether two (x0, y0, x1, y1) boxes leave at least OBJECT_GAP between them on some axis."""
    return (first[2] + OBJECT_GAP <= second[0] or second[2] + OBJECT_GAP <= first[0]
            or first[3] + OBJECT_GAP <= second[1] or second[3] + OBJECT_GAP <= first[1])


def _random_object(rng: np.random.Generator, position: str) -> WorldObject:
    size = SIZES[rng.integers(len(SIZES))]
    radius = float(rng.uniform(*SIZE_RADIUS[size]))
    shape = SHAPES[rng.integers(len(SHAPES))]
    x0, y0, x1, y1 = SHAPE_EXTENTS[shape]
    grid_x, grid_y = POSITIONS[position]
    dx, dy = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2)
    # Keep the whole shape inside the picture: a large object in an edge cell leans inwards.
    x = float(np.clip(grid_x + dx, MARGIN - x0 * radius, 1 - MARGIN - x1 * radius))
    y = float(np.clip(grid_y + dy, MARGIN - y0 * radius, 1 - MARGIN - y1 * radius))
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    fill = FILLS[rng.integers(len(FILLS))]
    return WorldObject(shape, colour, size, position, (x, y), radius, fill)


def _random_objects(rng: np.random.Generator, count: int) -> tuple[WorldObject, ...]:
    """`count` objects in distinct grid cells whose boxes keep apart; redraws until they do (always in a few tries)."""
    cells = list(POSITIONS)
    while True:
        chosen = rng.choice(len(cells), size=count, replace=False)
        objects = tuple(_random_object(rng, cells[k]) for k in chosen)
        if all(_boxes_apart(a.bbox, b.bbox) for i, a in enumerate(objects) for b in objects[i + 1:]):
            return objects


def _random_background(rng: np.random.Generator) -> Background:
    kind = BACKGROUND_KINDS[rng.choice(len(BACKGROUND_KINDS), p=BACKGROUND_WEIGHTS)]
    names = list(TINTS)
    if kind == "gradient":
        first, second = rng.choice(len(names), size=2, replace=False)
        return Background(kind, (names[first], names[second]), vertical=bool(rng.random() < 0.5))
    return Background(kind, (names[rng.integers(len(names))],))


def make_scene(rng: np.random.Generator) -> Scene:
    """Draw a random scene: 1-3 objects (`OBJECT_COUNT_WEIGHTS`) on a random background."""
    count = 1 + int(rng.choice(len(OBJECT_COUNT_WEIGHTS), p=OBJECT_COUNT_WEIGHTS))
    objects = _random_objects(rng, count)
    return Scene(objects=objects, background=_random_background(rng))


def draw_outline(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], value: int) -> None:
    """Draw `shape` stretched to fill `box` (x0, y0, x1, y1 in pixels), in `value`; a ring's hole stays empty.

    The renderer passes the shape's own box, the judge any box it measured (to compare templates).
    """
    x0, y0, x1, y1 = SHAPE_EXTENTS[shape]
    scale = np.array([(box[2] - box[0]) / (x1 - x0), (box[3] - box[1]) / (y1 - y0)])
    origin = np.array([box[0] - x0 * scale[0], box[1] - y0 * scale[1]])
    for k, outline in enumerate(OUTLINES[shape]):
        points = outline * scale + origin
        draw.polygon([tuple(point) for point in points.tolist()], fill=0 if k else value)


@lru_cache(maxsize=256)
def shape_template(shape: str, width: int, height: int) -> np.ndarray:
    """(height, width) float32 in [0, 1]: `shape` stretched to fill a width x height box, antialiased.

    The judge compares a region it found with each shape's template at the region's own size.
    """
    canvas = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    draw_outline(ImageDraw.Draw(canvas), shape, (0, 0, width * SUPERSAMPLE, height * SUPERSAMPLE), 255)
    return np.asarray(canvas.resize((width, height), Image.Resampling.BOX), dtype=np.float32) / 255


def _coverage(obj: WorldObject, canvas_size: int) -> np.ndarray:
    """(canvas_size, canvas_size) float32: 1 inside the object, 0 outside (drawn at canvas resolution)."""
    canvas = Image.new("L", (canvas_size, canvas_size), 0)
    draw_outline(ImageDraw.Draw(canvas), obj.shape, tuple(v * canvas_size for v in obj.bbox), 255)
    return np.asarray(canvas, dtype=np.float32) / 255


def _pattern(obj: WorldObject, canvas_size: int) -> np.ndarray:
    """(canvas_size, canvas_size) float32: 1 where the fill paints the darker shade, else 0.

    The pattern is laid out from the object's centre, so a dot or a stripe always crosses it.
    """
    coords = (np.arange(canvas_size, dtype=np.float32) + 0.5) / canvas_size
    x, y = coords[None, :] - obj.centre[0], coords[:, None] - obj.centre[1]
    if obj.fill == "striped":  # "/" stripes: constant along x + y, a period STRIPE_PERIOD across them
        phase = (x + y) / (STRIPE_PERIOD * np.sqrt(2)) + 0.25
        return ((phase % 1.0) < 0.5).astype(np.float32)
    if obj.fill == "dotted":
        dx = (x / DOT_PERIOD + 0.5) % 1.0 - 0.5
        dy = (y / DOT_PERIOD + 0.5) % 1.0 - 0.5
        return ((dx**2 + dy**2) * DOT_PERIOD**2 < DOT_RADIUS**2).astype(np.float32)
    return np.zeros((canvas_size, canvas_size), dtype=np.float32)


def _background_pixels(background: Background, canvas_size: int) -> np.ndarray:
    """(canvas_size, canvas_size, 3) float32 RGB of the background alone."""
    first = np.array(TINTS[background.colours[0]], dtype=np.float32)
    ramp = (np.arange(canvas_size, dtype=np.float32) + 0.5) / canvas_size
    if background.kind == "gradient":
        second = np.array(TINTS[background.colours[1]], dtype=np.float32)
        along = ramp[:, None] if background.vertical else ramp[None, :]  # (S, 1) or (1, S)
        return first + along[..., None] * (second - first)
    pixels = np.broadcast_to(first, (canvas_size, canvas_size, 3)).copy()
    if background.kind == "checkered":
        tile = (ramp // CHECKER_TILE).astype(int)
        dark = (tile[:, None] + tile[None, :]) % 2 == 1
        pixels[dark] *= CHECKER_SHADE
    return pixels


def _check_size(size: int) -> None:
    if size < 16:
        raise InvalidArgumentError(f"world image size {size} is too small; use 16 or more (e.g. {IMAGE_SIZE})")


def _box_filter(canvas: np.ndarray, size: int) -> np.ndarray:
    """Average SUPERSAMPLE x SUPERSAMPLE blocks: each output pixel gets its exact coverage."""
    return canvas.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, *canvas.shape[2:]).mean(axis=(1, 3))


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw `scene` as a (size, size, 3) uint8 image, antialiased by 4x supersampling."""
    _check_size(size)
    canvas_size = size * SUPERSAMPLE
    canvas = _background_pixels(scene.background, canvas_size)
    for obj in scene.objects:
        coverage = _coverage(obj, canvas_size)[..., None]
        colour = np.array(COLOURS[obj.colour], dtype=np.float32)
        paint = colour * (1 - (1 - SHADE) * _pattern(obj, canvas_size))[..., None]  # base, or base * SHADE
        canvas = canvas * (1 - coverage) + paint * coverage
    return np.clip(np.rint(_box_filter(canvas, size)), 0, 255).astype(np.uint8)


def object_masks(scene: Scene, size: int = 16) -> np.ndarray:
    """(objects, size, size) float32 in [0, 1]: how much of each pixel every object covers, drawn alone.

    As `shapes.object_masks`: a ring's mask leaves its hole empty, and at the latent size these are
    the regions the attention-grounding loss pulls each object's words into.
    """
    canvas_size = size * SUPERSAMPLE
    return np.stack([_box_filter(_coverage(obj, canvas_size), size) for obj in scene.objects]).astype(np.float32)


def colour_segments() -> tuple[list[str], np.ndarray, np.ndarray]:
    """The object colours as segments in RGB: names, dark ends (K, 3) (`SHADE` times) and base ends (K, 3).

    Every pixel of an object, base, shade or a blur of the two, lies on its colour's segment.
    """
    base = np.array(list(COLOURS.values()), dtype=np.float64)
    return list(COLOURS), base * SHADE, base
