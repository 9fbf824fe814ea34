"""A fixed, rule-based judge for v2-world pictures (`world.py`): what is drawn, and does it match the prompt?

`analyse` reads a picture, without its scene, into a background (kind and tints) and objects
(shape, colour, fill, size, grid position), using what the palette was designed for:
  1. every pixel is compared with the object colours, each a segment in RGB from its dark shade to its
     base (`world.colour_segments`), and with the background set: the segments between every two
     tints (gradients) and from each tint to its checkered shade. Nearer an object segment is
     foreground; an antialiased or blurred edge flips at about half coverage;
  2. objects are the 4-connected foreground regions (`judge._connected_regions`), minus specks;
  3. a region's colour is the segment that best explains its core (the region less a 2-pixel rim,
     where the background bleeds in): blur mixes base and shade along the segment, so it keeps the hue;
  4. its fill is how far along the segment the core sits: near the base end it is solid, else
     patterned; stripes run along one diagonal, so grouping the core by x + y explains much more of
     its darkness than grouping by x - y, while the dot grid is symmetric;
  5. its shape is the template (`world.shape_template`) stretched to the region's bounding box that
     overlaps the region best (soft intersection over union): the shapes keep a fixed orientation,
     and blur only rounds their corners;
  6. the shape's own extents turn the box into a centre and a radius: size by `SIZE_THRESHOLD`,
     position by the nearest grid point, relations by centre differences over `RELATION_MARGIN`;
  7. the background pixels (away from objects) are fitted with a plane per channel: a large residual
     is a checkered background, a large slope a gradient (its tints are the plane at the two edges),
     else plain; a tint is the nearest named one (a checkered one read from its lighter tiles).

`score` compares an analysis with what `world_text.parse_caption` reads from a prompt; `adherence`
averages scores over many prompts.
"""

from dataclasses import dataclass
from itertools import combinations

import numpy as np
from PIL import Image

from diffx.embedded.judge import _as_array, _connected_regions, _match
from diffx.embedded.world import (
    CHECKER_SHADE,
    POSITIONS,
    SHAPE_EXTENTS,
    SHAPES,
    SIZE_THRESHOLD,
    TINTS,
    Background,
    WorldObject,
    colour_segments,
    shape_template,
)
from diffx.embedded.world_text import CaptionSpec, parse_caption
from diffx.errors import InvalidArgumentError

COLOUR_NAMES, DARK_ENDS, BASE_ENDS = colour_segments()
TINT_NAMES = list(TINTS)
TINT_RGB = np.array(list(TINTS.values()), dtype=np.float64)
MIN_AREA_FRACTION = 0.003  # regions smaller than this share of the image are specks (49 px at 128)
MAX_OBJECTS = 6  # regions read, largest first: the world has at most 3, the rest is debris
CORE_EROSION = 2  # pixels taken off a region's rim before its colour and fill are read
BACKGROUND_CLEARANCE = 3  # background pixels this close to an object are left out of the background fit
SOLID_DARKNESS = 0.1  # mean darkness (0 base .. 1 shade) of a core below which the fill is solid
STRIPE_ASYMMETRY = 0.2  # (x + y) minus (x - y) share of darkness variance above which it is striped
CHECKER_RESIDUAL = 8.0  # RMS residual (levels) of the background plane above which it is checkered
GRADIENT_CHANGE = 12.0  # change (levels, along the steeper axis) above which the background is a gradient
TEMPLATE_SIZE = 32  # side of the square that regions and shape templates are compared at
# A pixel with every channel at or above this is at least half background (objects have a channel <= 130,
# tints none below 200), so only darker pixels need the exact distances.
PALE_LEVEL = 200
RELATION_MARGIN = 0.12  # centres must differ by this (fraction of the image) for "left of" etc.


def _segments() -> tuple[np.ndarray, np.ndarray]:
    """Background segments (starts, ends), each (S, 3): tint to tint, and tint to its checkered shade."""
    pairs = list(combinations(range(len(TINT_RGB)), 2))
    starts = np.concatenate([TINT_RGB[[a for a, _ in pairs]], TINT_RGB])
    ends = np.concatenate([TINT_RGB[[b for _, b in pairs]], TINT_RGB * CHECKER_SHADE])
    return starts, ends


BACKGROUND_STARTS, BACKGROUND_ENDS = _segments()


@dataclass
class SeenObject(WorldObject):
    """One object read from a picture: its `WorldObject` attributes (`centre` the shape's centre, not
    its box's), the share of the image it covers, and how well its shape template fits it (soft IoU,
    about 0.9 or more on a clean render)."""

    area: float = 0.0
    match: float = 0.0


@dataclass
class WorldAnalysis:
    """What `analyse` sees: the background and the objects, largest first, and every relation that holds
    between two of them, as (i, relation, j): "object i relation object j"."""

    background: Background
    objects: list[SeenObject]
    relations: list[tuple[int, str, int]]


def _dots(pixels: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """(N, S): every pixel (N, 3) dotted with every vector (S, 3), channel by channel (a BLAS call for an
    inner size of 3 costs more than these three broadcast products)."""
    return pixels[:, 0:1] * vectors[:, 0] + pixels[:, 1:2] * vectors[:, 1] + pixels[:, 2:3] * vectors[:, 2]


def segment_distances(pixels: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared distance (N, S) from each pixel (N, 3) to each segment, and where on it the nearest point lies (N, S).

    The point is `starts + t (ends - starts)` with t in [0, 1]. Written with dot products, so it never
    builds an (N, S, 3) array: |p - a - t d|^2 = |p - a|^2 - 2 t (p - a).d + t^2 |d|^2.
    """
    direction = ends - starts  # (S, 3)
    length = np.maximum((direction**2).sum(axis=1), 1e-9)
    along = _dots(pixels, direction) - (starts * direction).sum(axis=1)  # (p - a).d
    t = np.clip(along / length, 0.0, 1.0)
    to_start = (pixels**2).sum(axis=1, keepdims=True) - 2 * _dots(pixels, starts) + (starts**2).sum(axis=1)
    return np.maximum(to_start - t * (2 * along - t * length), 0.0), t


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """`mask` less `steps` rims of pixels (4-neighbourhood); pixels outside the image count as empty."""
    for _ in range(steps):
        padded = np.pad(mask, 1)
        mask = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask


def _diagonal_share(darkness: np.ndarray, diagonal: np.ndarray) -> float:
    """Share of the darkness variance explained by its mean along each diagonal line (0 .. 1)."""
    index = diagonal - diagonal.min()
    counts = np.bincount(index)
    means = np.bincount(index, weights=darkness) / np.maximum(counts, 1)
    total = darkness.var() * len(darkness)
    return float((counts * (means - darkness.mean()) ** 2).sum() / max(total, 1e-9))


def _read_fill(darkness: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> str:
    if darkness.mean() < SOLID_DARKNESS:
        return "solid"
    asymmetry = _diagonal_share(darkness, rows + cols) - _diagonal_share(darkness, rows - cols)
    return "striped" if asymmetry > STRIPE_ASYMMETRY else "dotted"


def _read_shape(region: np.ndarray) -> tuple[str, float]:
    """The shape whose template best overlaps `region` (its bounding-box crop, float) and that overlap.

    Stretching every template to the region's box is the same as stretching the region to the
    templates' square: one resize, and the templates are drawn once.
    """
    square = np.asarray(Image.fromarray(region, mode="F").resize((TEMPLATE_SIZE, TEMPLATE_SIZE), Image.Resampling.BOX))
    overlaps = {
        shape: float(np.minimum(template, square).sum() / max(np.maximum(template, square).sum(), 1e-9))
        for shape in SHAPES
        for template in (shape_template(shape, TEMPLATE_SIZE, TEMPLATE_SIZE),)
    }
    best = max(overlaps, key=overlaps.__getitem__)
    return best, overlaps[best]


def _describe(region: np.ndarray, distances: np.ndarray, along: np.ndarray) -> SeenObject:
    """Read one region (H, W) bool, given every pixel's squared distances to, and positions along, the
    colour segments (H, W, K)."""
    side = region.shape[0]
    rows, cols = np.nonzero(region)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    shape, match = _read_shape(region[top:bottom, left:right].astype(np.float32))
    core = _erode(region, CORE_EROSION)
    if core.sum() < 8:  # too thin to erode (a small ring under heavy blur): read the whole region
        core = region
    colour = int(distances[core].sum(axis=0).argmin())
    core_rows, core_cols = np.nonzero(core)
    fill = _read_fill(1.0 - along[core_rows, core_cols, colour], core_rows, core_cols)
    x0, y0, x1, y1 = SHAPE_EXTENTS[shape]
    width, height = right - left, bottom - top
    radius = (width / (x1 - x0) + height / (y1 - y0)) / 2 / side
    centre = ((left + width * -x0 / (x1 - x0)) / side, (top + height * -y0 / (y1 - y0)) / side)
    position = min(POSITIONS, key=lambda name: np.hypot(*np.subtract(POSITIONS[name], centre)))
    return SeenObject(
        shape=shape, colour=COLOUR_NAMES[colour], fill=fill, size="large" if radius > SIZE_THRESHOLD else "small",
        position=position, centre=(float(centre[0]), float(centre[1])), radius=float(radius),
        area=float(region.mean()), match=match,
    )


def _nearest_tint(rgb: np.ndarray) -> str:
    return TINT_NAMES[int(((TINT_RGB - rgb) ** 2).sum(axis=1).argmin())]


def _read_background(pixels: np.ndarray, mask: np.ndarray) -> Background:
    """Read the background from `pixels` (H, W, 3) where `mask` (H, W) is True (see step 7)."""
    side = pixels.shape[0]
    rows, cols = np.nonzero(mask)
    values = pixels[rows, cols]  # (N, 3)
    design = np.stack([np.ones(len(rows)), (cols + 0.5) / side - 0.5, (rows + 0.5) / side - 0.5], axis=1)
    plane, *_ = np.linalg.lstsq(design, values, rcond=None)  # (3, 3): offset, x slope, y slope per channel
    residual = float(np.sqrt(((values - design @ plane) ** 2).mean()))
    if residual > CHECKER_RESIDUAL:
        brightness = values.sum(axis=1)
        lighter = values[brightness >= np.percentile(brightness, 75)]  # the top quarter: all lighter tiles
        return Background("checkered", (_nearest_tint(np.median(lighter, axis=0)),))
    x_change, y_change = np.linalg.norm(plane[1]), np.linalg.norm(plane[2])
    if max(x_change, y_change) > GRADIENT_CHANGE:
        vertical = bool(y_change > x_change)
        edge = (side - 1) / side / 2  # the centres of the first and last pixel rows or columns
        slope = plane[2] if vertical else plane[1]
        colours = (_nearest_tint(plane[0] - edge * slope), _nearest_tint(plane[0] + edge * slope))
        return Background("gradient", colours, vertical)
    return Background("plain", (_nearest_tint(np.median(values, axis=0)),))


def relations_seen(first: SeenObject, second: SeenObject) -> list[str]:
    """Every relation "first R second" the two centres show by more than RELATION_MARGIN."""
    dx, dy = second.centre[0] - first.centre[0], second.centre[1] - first.centre[1]
    holds = {"left of": dx > RELATION_MARGIN, "right of": -dx > RELATION_MARGIN,
             "above": dy > RELATION_MARGIN, "below": -dy > RELATION_MARGIN}
    return [name for name, true in holds.items() if true]


def analyse(image: "np.ndarray | Image.Image") -> WorldAnalysis:
    """Read a v2-world picture (H, W, 3) uint8 or PIL, square, 64 px or more (128 as rendered)."""
    array = _as_array(image)
    if array.shape[0] != array.shape[1] or array.shape[0] < 64:
        raise InvalidArgumentError(f"the v2 judge reads square pictures of 64 px or more, got {array.shape[:2]}")
    pixels = array.astype(np.float64)
    side = pixels.shape[0]
    flat = pixels.reshape(-1, 3)
    candidates = flat.min(axis=1) < PALE_LEVEL
    distances = np.full((len(flat), len(COLOUR_NAMES)), np.inf)
    along = np.zeros_like(distances)
    distances[candidates], along[candidates] = segment_distances(flat[candidates], DARK_ENDS, BASE_ENDS)
    background_distances, _ = segment_distances(flat[candidates], BACKGROUND_STARTS, BACKGROUND_ENDS)
    foreground = np.zeros(len(flat), dtype=bool)
    foreground[candidates] = distances[candidates].min(axis=1) < background_distances.min(axis=1)
    foreground = foreground.reshape(side, side)
    labels = _connected_regions(foreground)
    ids, areas = np.unique(labels[labels >= 0], return_counts=True)
    kept = [label for area, label in sorted(zip(areas, ids, strict=True), reverse=True)
            if area >= MIN_AREA_FRACTION * side * side][:MAX_OBJECTS]
    shape3 = (side, side, len(COLOUR_NAMES))
    objects = [_describe(labels == label, distances.reshape(shape3), along.reshape(shape3)) for label in kept]
    clear = ~_erode(~foreground, BACKGROUND_CLEARANCE)  # the objects, grown by the clearance
    background = _read_background(pixels, ~clear if (~clear).sum() > side else ~foreground)
    relations = [(i, name, j) for i, a in enumerate(objects) for j, b in enumerate(objects) if i != j
                 for name in relations_seen(a, b)]
    return WorldAnalysis(background, objects, relations)


def _background_right(spec: CaptionSpec, seen: Background) -> bool:
    wanted = spec.background
    if wanted.kind and wanted.kind != seen.kind:
        return False
    if wanted.colours and wanted.kind == "gradient":
        return sorted(wanted.colours) == sorted(seen.colours)  # a caption does not say which way it runs
    return not wanted.colours or wanted.colours[0] == seen.colours[0]


def _position_right(spec: CaptionSpec, found: list[SeenObject | None]) -> bool:
    if None in found:
        return False
    if len(spec.objects) == 1:
        return found[0].position == spec.objects[0].position
    right = spec.relation is None or spec.relation in relations_seen(found[0], found[1])
    if spec.them is not None and len(found) == 3:
        right = right and all(spec.them in relations_seen(found[2], other) for other in found[:2])
    return right


def score(prompt: str, image: "np.ndarray | Image.Image") -> dict[str, bool]:
    """Which attributes the prompt names does the picture get right?

    Keys, present only when the prompt names them: "count" (as many objects as named), "shape" (always),
    "colour", "fill", "size", "position" (a one-object grid position, or the relations), "background"
    (its kind and tints as far as named); each True only if it holds for every object named. "all" is
    whether they all hold.
    """
    spec = parse_caption(prompt)
    if not spec.objects:
        raise InvalidArgumentError(f"prompt {prompt!r} names no shape the judge can check; write e.g. 'a red circle'")
    analysis = analyse(image)
    found = _match(list(spec.objects), analysis.objects)
    pairs = list(zip(spec.objects, found, strict=True))
    result = {"count": len(analysis.objects) == len(spec.objects)}
    for attribute in ("shape", "colour", "fill", "size"):
        named = [(want, seen) for want, seen in pairs if getattr(want, attribute)]
        if named:
            result[attribute] = all(seen is not None and getattr(seen, attribute) == getattr(want, attribute)
                                    for want, seen in named)
    if spec.objects[0].position or spec.relation or spec.them:
        result["position"] = _position_right(spec, found)
    if spec.background.kind or spec.background.colours:
        result["background"] = _background_right(spec, analysis.background)
    result["all"] = all(result.values())
    return result


def adherence(prompts: list[str], images: "list[np.ndarray | Image.Image]") -> dict[str, float]:
    """For each `score` key, the share of the prompts naming it that the pictures get right ("all": of every prompt)."""
    if not prompts or len(prompts) != len(images):
        raise InvalidArgumentError(f"got {len(prompts)} prompts and {len(images)} images; pass one image per prompt")
    results = [score(prompt, image) for prompt, image in zip(prompts, images, strict=True)]
    names = sorted({name for result in results for name in result})
    return {name: float(np.mean([result[name] for result in results if name in result])) for name in names}
