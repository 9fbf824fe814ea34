"""What guidance does to a v2-world model's pictures, measured from the pictures alone.

Three measures, each a number per guidance scale w, with the checks the v2 targets make of them:

* **Adherence** ("all attributes", `world_judge.adherence`) should rise with w: the guidance curve.
  `curve_checks` asks that "all" at w = 1 lie at least `GUIDANCE_GAP` below the default guidance and
  that it never fall between w = 1 and the default (Ho & Salimans 2022, fig. 1: guidance trades
  diversity for fidelity).
* **Diversity** (`diversity`) should fall as w rises. An under-specified prompt such as "a red circle"
  leaves the background kind and tint, the object's position, size and fill to the model; over many
  seeds an unguided model spreads its choices the way its training captions did, a strongly guided one
  collapses onto the modes the caption most predicts. For each attribute the prompt leaves open, the
  judge reads the value from every seed's picture and we take the Shannon entropy of those values,
  normalised by the largest entropy the seeds could show (log2 of the fewer of the seed count and the
  number of values the judge can report), so every attribute weighs alike and the measure runs from 0
  (every seed the same) to 1 (as spread as the seeds allow). Entropy, not a distinct-value count,
  because it also sees that 15 of 16 seeds agree; the distinct counts are reported beside it.
* **Saturation** (`oversaturated`) should rise past the default: large w over-shoots ε̂ and the decoded
  colours are pushed past anything in the data, the over-saturated look of SD at w = 15-20. Saturation is
  chroma (max − min channel, the HSV/HSL definition of colourfulness), and the v2 world's palette bounds
  it: no clean picture has a pixel more chromatic than `WORLD_MAX_CHROMA` (the most saturated colour).
  The bound is convex in RGB, so antialiased edges, stripes, dots, gradients and checkered shades all stay
  inside it and a clean render scores exactly 0; a pixel beyond it is a colour more saturated than the
  world ever shows. The measure is the share of such pixels. Brightness is left out on purpose: the VAE
  decodes a white (250) background a few levels too bright at every w (measured on the 4,250-step v2
  checkpoint: 22% of the pixels of open-prompt pictures at w = 1 above the brightest channel, falling
  with w as guidance picks tinted backgrounds), which says which background was chosen, not how
  saturated the colours are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np

from diffx.embedded.judge import _as_array, _match
from diffx.embedded.world import BACKGROUND_KINDS, COLOURS, FILLS, POSITIONS, SIZES, TINTS
from diffx.embedded.world_judge import WorldAnalysis
from diffx.embedded.world_text import CaptionSpec
from diffx.errors import InvalidArgumentError

# "All attributes" at w = 1 must be at least this far below the default guidance (issue #14).
GUIDANCE_GAP = 0.20
# The guidance scales of the curve (the model's default is added when it is not among them).
GUIDANCE_SCALES: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0)
WORLD_MAX_CHROMA = max(max(rgb) - min(rgb) for rgb in [*COLOURS.values(), *TINTS.values()])
NONE = "none"  # an object attribute of a picture with no object the judge can pair with the prompt's
# How many values the judge can report for each open attribute: the bound of its entropy.
ATTRIBUTE_VALUES: dict[str, int] = {
    "background kind": len(BACKGROUND_KINDS),
    "background tint": len(TINTS) + len(list(combinations(TINTS, 2))),  # one tint, or a gradient's pair
    "position": len(POSITIONS) + 1, "size": len(SIZES) + 1, "fill": len(FILLS) + 1,  # + NONE
}


def oversaturated(image: np.ndarray) -> float:
    """Share of pixels of `image` (H, W, 3) uint8 more saturated than any colour of the v2 world (chroma, max −
    min channel, above `WORLD_MAX_CHROMA`; see the module docstring)."""
    pixels = _as_array(image).astype(np.int16)
    return float((pixels.max(axis=2) - pixels.min(axis=2) > WORLD_MAX_CHROMA).mean())


def open_attributes(spec: CaptionSpec) -> list[str]:
    """The attributes of `ATTRIBUTE_VALUES` a one-object prompt leaves to the model."""
    first = spec.objects[0] if spec.objects else None
    named = {"background kind": spec.background.kind, "background tint": spec.background.colours,
             "position": first and first.position, "size": first and first.size, "fill": first and first.fill}
    return [name for name, value in named.items() if not value]


def attribute_values(spec: CaptionSpec, analysis: WorldAnalysis) -> dict[str, str]:
    """What the judge reads of each `ATTRIBUTE_VALUES` attribute in a picture of the prompt `spec`: the
    object attributes are those of the object paired with the prompt's first (`judge._match`), `NONE`
    without one."""
    background = analysis.background
    tints = sorted(background.colours) if background.kind == "gradient" else background.colours[:1]
    obj = _match(list(spec.objects[:1]), analysis.objects)[0] if spec.objects else None
    return {"background kind": background.kind, "background tint": " to ".join(tints),
            "position": obj.position if obj else NONE, "size": obj.size if obj else NONE,
            "fill": obj.fill if obj else NONE}


def entropy_bits(values: Sequence[str]) -> float:
    """Shannon entropy (bits) of the empirical distribution of `values`."""
    counts = np.array(list(Counter(values).values()), dtype=np.float64)
    shares = counts / counts.sum()
    return float(-(shares * np.log2(shares)).sum())


def normalised_entropy(values: Sequence[str], possible: int) -> float:
    """`entropy_bits` over the most the values could show: log2 of min(len(values), possible); 0 for one value."""
    most = np.log2(min(len(values), possible))
    return entropy_bits(values) / most if most > 0 else 0.0


def diversity(specs: Sequence[CaptionSpec], analyses: Sequence[Sequence[WorldAnalysis]]) -> dict:
    """The diversity of the pictures of under-specified prompts (see the module docstring).

    `analyses[p]` holds the judge's readings of prompt p's pictures, one per seed. Returns "diversity"
    (the mean normalised entropy over every prompt's open attributes), and per attribute the mean
    normalised entropy ("by_attribute") and the mean count of distinct values ("distinct").
    """
    if not specs or len(specs) != len(analyses) or any(len(seeds) < 2 for seeds in analyses):
        raise InvalidArgumentError("diversity needs at least two pictures of every prompt, one list per prompt")
    entropies: dict[str, list[float]] = {name: [] for name in ATTRIBUTE_VALUES}
    distinct: dict[str, list[int]] = {name: [] for name in ATTRIBUTE_VALUES}
    for spec, seeds in zip(specs, analyses, strict=True):
        read = [attribute_values(spec, analysis) for analysis in seeds]
        for name in open_attributes(spec):
            values = [reading[name] for reading in read]
            entropies[name].append(normalised_entropy(values, ATTRIBUTE_VALUES[name]))
            distinct[name].append(len(set(values)))
    every = [value for values in entropies.values() for value in values]
    return {"diversity": float(np.mean(every)) if every else 0.0,
            "by_attribute": {name: float(np.mean(values)) for name, values in entropies.items() if values},
            "distinct": {name: float(np.mean(values)) for name, values in distinct.items() if values}}


def curve_value(curve: Sequence[Mapping], guidance: float, key: str) -> float:
    """`key` of the curve point at `guidance` (points are dicts with a "guidance" key)."""
    for point in curve:
        if point["guidance"] == guidance:
            return point[key]
    have = ", ".join(f"{point['guidance']:g}" for point in curve)
    raise InvalidArgumentError(f"the curve has no point at guidance {guidance:g}; it has {have}")


def curve_checks(curve: Sequence[Mapping], default: float) -> dict[str, bool]:
    """The guidance-curve checks on `curve` (points with "guidance", "all", "diversity", "saturation"):

    - "guidance gap": "all" at w = 1 at least `GUIDANCE_GAP` below the default guidance's;
    - "monotone to default": "all" never falls from one scale to the next, from w = 1 up to the default;
    - "diversity falls": diversity at the default below diversity at w = 1;
    - "saturation rises": saturation at the largest scale above saturation at the default.
    """
    points = sorted(curve, key=lambda point: point["guidance"])
    rising = [point["all"] for point in points if 1.0 <= point["guidance"] <= default]
    largest = points[-1]["guidance"]
    return {
        "guidance gap": gap(curve, default) >= GUIDANCE_GAP - 1e-9,  # rates are fractions: 0.7 - 0.5 is 0.1999…
        "monotone to default": all(b >= a for a, b in zip(rising, rising[1:], strict=False)),
        "diversity falls": diversity_drop(curve, default) > 0,
        "saturation rises": largest > default and curve_value(curve, largest, "saturation")
        > curve_value(curve, default, "saturation"),
    }


def gap(curve: Sequence[Mapping], default: float) -> float:
    """"All attributes" at the default guidance minus at w = 1."""
    return curve_value(curve, default, "all") - curve_value(curve, 1.0, "all")


def diversity_drop(curve: Sequence[Mapping], default: float) -> float:
    """Diversity at w = 1 minus at the default guidance."""
    return curve_value(curve, 1.0, "diversity") - curve_value(curve, default, "diversity")
