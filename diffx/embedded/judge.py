"""A fixed, rule-based judge for shapes-world pictures: what is drawn, and does it match the prompt?

`analyse` reads an image back into a background colour and a list of objects:
  1. every pixel is snapped to the nearest named colour (`shapes.COLOURS`, Euclidean RGB);
  2. the background is the most common snapped colour on the image border;
  3. objects are the 4-connected regions of non-background pixels, minus specks;
  4. around each region, every pixel is modelled as a mix `background + coverage * (colour -
     background)` (how an antialiased or blurred edge forms); the region's colour is the named
     colour whose mixing line explains the pixels best, so an edge blurred into an in-between
     colour (red on yellow looks orange) does not change the answer;
  5. its shape comes from blur-tolerant ratios: a triangle (apex up) has a third as many pixels in
     the top half of its bounding box as in the bottom half, a circle or square as many ("taper"
     1/3 vs 1); the coverage fills `area / (tallest column * widest row)` = 1 of a square and pi/4
     of a circle (blur moves coverage around but keeps these sums);
  6. size and position use the same thresholds and grid as the data (`SIZE_THRESHOLD`, `POSITIONS`).

`score` compares an analysis with what `parse_prompt` reads from the prompt; `adherence` averages.
"""

from dataclasses import dataclass
from itertools import permutations

import numpy as np
from PIL import Image

from diffx.embedded.shapes import COLOURS, POSITIONS, SIZE_THRESHOLD, ObjectSpec, parse_prompt
from diffx.errors import InputImageError, InvalidArgumentError

PALETTE = np.array(list(COLOURS.values()), dtype=np.float64)  # (K, 3)
PALETTE_NAMES = list(COLOURS)
MIN_AREA_FRACTION = 0.004  # regions smaller than this share of the image are specks (16 px at 64x64)
BORDER_FRACTION = 1 / 32  # width of the border ring read for the background colour
WINDOW_FRACTION = 3 / 64  # margin around a region where blurred coverage is still collected
# Triangle below this taper (ideal 1/3; blurred renders reach ~0.7, circles and squares stay above ~0.83).
TRIANGLE_TAPER = 0.75
# Square above this fill: halfway between a circle (pi/4) and a square (1).
SQUARE_FILL = (np.pi / 4 + 1) / 2


@dataclass
class DetectedObject:
    """One region found in an image. Positions and lengths are fractions of the image side."""

    colour: str
    shape: str
    size: str
    position: str
    centre: tuple[float, float]  # bounding-box centre, as in `ShapeObject.centre`
    radius: float  # half the longer of the tallest column and widest row, as in `ShapeObject.radius`
    area: float  # covered share of the image
    taper: float  # pixels in the top half of the bounding box / pixels in the bottom half
    fill: float  # coverage area / (tallest column * widest row): 1 square, pi/4 circle, 1/2 triangle


@dataclass
class Analysis:
    """What `analyse` sees: the background colour and the objects, largest first."""

    background: str
    objects: list[DetectedObject]


def _as_array(image: "np.ndarray | Image.Image") -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputImageError(
            f"the judge needs an (H, W, 3) uint8 RGB image, got shape {image.shape} dtype {image.dtype}; "
            "convert with np.asarray(pil_image.convert('RGB'))"
        )
    return image


def _connected_regions(mask: np.ndarray) -> np.ndarray:
    """Label the 4-connected regions of `mask` (H, W) bool; -1 outside the mask.

    Each pixel starts with its own index and repeatedly takes the smallest label among its
    4-neighbours in the mask, until nothing changes: every region ends up labelled by its
    smallest pixel index. Iterations ~ the regions' diameter, each one vectorised.
    """
    height, width = mask.shape
    outside = height * width
    labels = np.where(mask, np.arange(outside).reshape(height, width), outside)
    padded = np.full((height + 2, width + 2), outside)
    while True:
        padded[1:-1, 1:-1] = labels
        neighbours = np.minimum(np.minimum(padded[:-2, 1:-1], padded[2:, 1:-1]),  # up, down
                                np.minimum(padded[1:-1, :-2], padded[1:-1, 2:]))  # left, right
        updated = np.where(mask, np.minimum(labels, neighbours), outside)
        if np.array_equal(updated, labels):
            return np.where(mask, labels, -1)
        labels = updated


def _fit_colour(window: np.ndarray, background_rgb: np.ndarray, background: int) -> tuple[int, np.ndarray]:
    """The named colour that best explains `window` (h, w, 3) as background/colour mixes, and its coverage.

    For each colour c, a pixel p's coverage is its projection on the segment from the background b
    to c, `clip((p - b).(c - b) / |c - b|^2, 0, 1)`, and the residual is what that mix misses.
    """
    offsets = window - background_rgb  # (h, w, 3)
    directions = PALETTE - background_rgb  # (K, 3)
    lengths = np.maximum((directions**2).sum(axis=-1), 1.0)  # (K,)
    projections = np.einsum("hwc,kc->khw", offsets, directions) / lengths[:, None, None]  # (K, h, w)
    coverage = np.clip(projections, 0, 1)
    misses = offsets - coverage[..., None] * directions[:, None, None, :]  # (K, h, w, 3)
    residual = (misses**2).sum(axis=(1, 2, 3))  # (K,)
    residual[background] = np.inf
    colour = int(residual.argmin())
    return colour, coverage[colour]


def _describe_region(region: np.ndarray, others: np.ndarray, pixels: np.ndarray, background_rgb: np.ndarray,
                     background: int) -> DetectedObject:
    """Measure one region (H, W) bool; `others` marks the other regions' pixels, kept out of its window."""
    side = max(region.shape)
    rows, cols = np.nonzero(region)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    margin = max(1, round(side * WINDOW_FRACTION))
    window = (slice(max(top - margin, 0), bottom + margin), slice(max(left - margin, 0), right + margin))
    patch = np.where(others[window][..., None], background_rgb, pixels[window])  # (h, w, 3)
    colour, coverage = _fit_colour(patch, background_rgb, background)
    tallest_column, widest_row = coverage.sum(axis=0).max(), coverage.sum(axis=1).max()
    fill = coverage.sum() / max(tallest_column * widest_row, 1e-6)
    middle = (top + bottom) / 2
    taper = (rows + 0.5 < middle).sum() / max((rows + 0.5 > middle).sum(), 1)
    if taper < TRIANGLE_TAPER:
        shape = "triangle"
    else:
        shape = "square" if fill > SQUARE_FILL else "circle"
    centre = ((left + right) / 2 / side, (top + bottom) / 2 / side)
    radius = max(tallest_column, widest_row) / 2 / side
    position = min(POSITIONS, key=lambda name: np.hypot(*np.subtract(POSITIONS[name], centre)))
    return DetectedObject(
        colour=PALETTE_NAMES[colour], shape=shape, size="large" if radius > SIZE_THRESHOLD else "small",
        position=position, centre=(float(centre[0]), float(centre[1])), radius=float(radius),
        area=float(coverage.sum() / region.size), taper=float(taper), fill=float(fill),
    )


def analyse(image: "np.ndarray | Image.Image") -> Analysis:
    """Find the background colour and the objects of a shapes-world image (H, W, 3) uint8 or PIL."""
    pixels = _as_array(image).astype(np.float64)
    height, width, _ = pixels.shape
    squared_distances = ((pixels[:, :, None, :] - PALETTE) ** 2).sum(axis=-1)  # (H, W, K)
    nearest = squared_distances.argmin(axis=-1)  # (H, W) index into PALETTE
    ring = max(1, round(min(height, width) * BORDER_FRACTION))
    border = np.ones((height, width), dtype=bool)
    border[ring:-ring, ring:-ring] = False
    background = int(np.bincount(nearest[border], minlength=len(PALETTE_NAMES)).argmax())
    # The actual background shade (a generated image is rarely exactly the named colour).
    background_rgb = np.median(pixels[border & (nearest == background)], axis=0)
    labels = _connected_regions(nearest != background)
    ids, areas = np.unique(labels[labels >= 0], return_counts=True)
    min_area = MIN_AREA_FRACTION * height * width
    kept = [label for label, area in zip(ids, areas, strict=True) if area >= min_area]
    foreground = labels >= 0
    objects = [
        _describe_region(labels == label, foreground & (labels != label), pixels, background_rgb, background)
        for label in kept
    ]
    objects.sort(key=lambda obj: obj.area, reverse=True)
    return Analysis(background=PALETTE_NAMES[background], objects=objects)


def _match(wanted: list[ObjectSpec], found: list[DetectedObject]) -> list[DetectedObject | None]:
    """Pair each wanted object with a distinct found one, agreeing on as many colours + shapes as possible.

    Ties go to the larger found objects (they come first). Unpaired wanted objects get None.
    """
    candidates = found[:4]  # the largest few: anything smaller is debris, and this bounds the search
    if len(candidates) < len(wanted):
        candidates = candidates + [None] * (len(wanted) - len(candidates))

    def agreement(pairing: tuple) -> int:
        return sum((obj.colour == spec.colour) + (obj.shape == spec.shape)
                   for spec, obj in zip(wanted, pairing, strict=True) if obj is not None)

    return list(max(permutations(candidates, len(wanted)), key=agreement))


def _relation_holds(relation: str, first: DetectedObject, second: DetectedObject) -> bool:
    dx, dy = second.centre[0] - first.centre[0], second.centre[1] - first.centre[1]
    horizontal = abs(dx) > abs(dy)
    return {
        "left of": horizontal and dx > 0, "right of": horizontal and dx < 0,
        "above": not horizontal and dy > 0, "below": not horizontal and dy < 0,
    }[relation]


def score(prompt: str, image: "np.ndarray | Image.Image") -> dict[str, bool]:
    """Which attributes the prompt names does the image get right?

    Keys, present only when the prompt names them: "count" (as many objects as asked), "colour",
    "shape" (always), "size", "position" (a one-object position, or a two-object relation such as
    "left of"), "background". Each is True only if it holds for every object the prompt names.
    """
    spec = parse_prompt(prompt)
    if not spec.objects:
        raise InvalidArgumentError(
            f"prompt {prompt!r} names no coloured shape the judge can check; write e.g. 'a red circle'"
        )
    analysis = analyse(image)
    found = _match(spec.objects, analysis.objects)
    pairs = list(zip(spec.objects, found, strict=True))
    result = {
        "count": len(analysis.objects) == len(spec.objects),
        "colour": all(obj is not None and obj.colour == want.colour for want, obj in pairs),
        "shape": all(obj is not None and obj.shape == want.shape for want, obj in pairs),
    }
    if any(want.size for want, _ in pairs):
        result["size"] = all(obj is not None and obj.size == want.size for want, obj in pairs if want.size)
    if spec.objects[0].position:
        result["position"] = found[0] is not None and found[0].position == spec.objects[0].position
    if spec.relation:
        result["position"] = None not in found and _relation_holds(spec.relation, found[0], found[1])
    if spec.background:
        result["background"] = analysis.background == spec.background
    return result


def adherence(prompts: list[str], images: "list[np.ndarray | Image.Image]") -> dict[str, float]:
    """Rate of each `score` key over the prompts that name it, plus "all": prompts fully right."""
    if not prompts or len(prompts) != len(images):
        raise InvalidArgumentError(
            f"got {len(prompts)} prompts and {len(images)} images; pass one image per prompt (at least one)"
        )
    scores = [score(prompt, image) for prompt, image in zip(prompts, images, strict=True)]
    keys = sorted({key for result in scores for key in result})
    rates = {key: float(np.mean([result[key] for result in scores if key in result])) for key in keys}
    rates["all"] = float(np.mean([all(result.values()) for result in scores]))
    return rates
