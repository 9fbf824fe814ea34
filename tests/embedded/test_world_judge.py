"""The v2 judge reads v2-world renders back without their scenes, survives blur and noise, and scores prompts.

Measured on the 300 eval-stream scenes below (seed 7), per object attribute and per picture
(count, background kind and tints):
  * clean renders: 1.000 for every attribute;
  * Gaussian blur radius 1.5 + noise sigma 5: shape 0.973, fill 0.998, every other 1.000;
  * 5x5 box blur + noise sigma 5: shape 0.957, fill 0.998, every other 1.000.
(Gaussian radius 2 + noise drops shape to ~0.88: small stars and hexagons round into circles.)
A picture takes ~13-15 ms on one busy core.
"""

import time

import numpy as np
import pytest
from PIL import Image, ImageFilter

from diffx.embedded.shapes import EVAL_STREAM, _scene_rng
from diffx.embedded.world import Background, Scene, WorldObject, make_scene, render
from diffx.embedded.world_judge import WorldAnalysis, adherence, analyse, score
from diffx.embedded.world_text import exact_caption
from diffx.errors import DiffxError

ATTRIBUTES = ("shape", "colour", "fill", "size", "position")


def degrade(image: np.ndarray, blur: ImageFilter.Filter, noise: float, rng: np.random.Generator) -> np.ndarray:
    blurred = np.asarray(Image.fromarray(image).filter(blur), dtype=np.float64)
    return np.clip(np.rint(blurred + rng.normal(0, noise, blurred.shape)), 0, 255).astype(np.uint8)


def accuracy(scenes: list[Scene], analyses: list[WorldAnalysis]) -> dict[str, float]:
    """Per picture: count, background kind and tints; per object (paired by nearest centre): each attribute."""
    hits = {name: 0 for name in ("count", "background kind", "background colours", *ATTRIBUTES)}
    objects = 0
    for scene, analysis in zip(scenes, analyses, strict=True):
        hits["background kind"] += analysis.background.kind == scene.background.kind
        hits["background colours"] += analysis.background.colours == scene.background.colours
        hits["count"] += len(analysis.objects) == len(scene.objects)
        for truth in scene.objects:
            objects += 1
            seen = min(analysis.objects, key=lambda obj: np.hypot(*np.subtract(obj.centre, truth.centre)))
            for name in ATTRIBUTES:
                hits[name] += getattr(seen, name) == getattr(truth, name)
    return {name: count / (objects if name in ATTRIBUTES else len(scenes)) for name, count in hits.items()}


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    rng = _scene_rng(EVAL_STREAM, 7)
    return [make_scene(rng) for _ in range(300)]


@pytest.fixture(scope="module")
def renders(scenes) -> list[np.ndarray]:
    return [render(scene) for scene in scenes]


def test_reads_clean_renders(scenes, renders):
    start = time.perf_counter()
    analyses = [analyse(image) for image in renders]
    per_picture = (time.perf_counter() - start) / len(renders)
    rates = accuracy(scenes, analyses)
    print(f"judge accuracy on clean renders: {rates}; {1000 * per_picture:.1f} ms a picture")
    assert all(rate >= 0.99 for rate in rates.values()), rates
    assert per_picture < 0.1  # ~15 ms here; a loose bound, the test machine is shared


@pytest.mark.parametrize("blur, shape_bar", [(ImageFilter.GaussianBlur(1.5), 0.95), (ImageFilter.BoxBlur(2), 0.94)])
def test_reads_blurred_noisy_renders(scenes, renders, blur, shape_bar):
    rng = np.random.default_rng(3)
    rates = accuracy(scenes, [analyse(degrade(image, blur, 5.0, rng)) for image in renders])
    print(f"judge accuracy with {blur} and noise 5: {rates}")
    assert rates.pop("shape") >= shape_bar and all(rate >= 0.99 for rate in rates.values()), rates


def test_scores_exact_captions_of_their_own_renders(scenes, renders):
    rng = np.random.default_rng(0)
    subset = range(120)
    rates = adherence([exact_caption(scenes[k], rng) for k in subset], [renders[k] for k in subset])
    assert rates["all"] >= 0.99, rates
    assert {"count", "shape", "colour", "fill", "size", "position", "background"} <= rates.keys()


def one_star() -> np.ndarray:
    obj = WorldObject("star", "red", "large", "top left", (0.27, 0.27), 0.18, fill="striped")
    return render(Scene((obj,), Background("plain", ("pale blue",))))


def test_score_marks_each_wrong_attribute():
    image = Image.fromarray(one_star())  # PIL input works too
    assert all(score("a large red striped star in the top left on a pale blue background", image).values())
    wrong = {
        "colour": "a large green striped star", "shape": "a large red striped heart", "fill": "a red dotted star",
        "size": "a small red star", "position": "a red star in the bottom right",
        "background": "a red star on a pale pink background",
    }
    for attribute, prompt in wrong.items():
        result = score(prompt, image)
        assert result[attribute] is False and result["all"] is False, (prompt, result)
        assert all(value for name, value in result.items() if name not in (attribute, "all")), (prompt, result)
    assert "size" not in score("a red star", image)  # only what the prompt names is scored


def test_reads_relations_and_gradient():
    objects = (WorldObject("circle", "blue", "small", "left", (0.25, 0.5), 0.1, fill="solid"),
               WorldObject("ring", "orange", "large", "right", (0.75, 0.5), 0.18, fill="dotted"),
               WorldObject("heart", "lime", "small", "bottom", (0.5, 0.78), 0.1, fill="striped"))
    image = render(Scene(objects, Background("gradient", ("white", "pale green"), vertical=True)))
    analysis = analyse(image)
    assert analysis.background == Background("gradient", ("white", "pale green"), vertical=True)
    prompt = ("a blue circle left of an orange ring and a lime heart below them"
              " on a pale green to white gradient background")
    assert all(score(prompt, image).values())
    assert not score("a blue circle right of an orange ring", image)["position"]
    assert not score("a blue circle left of an orange ring and a lime heart above them", image)["position"]


def test_rejects_unreadable_input():
    with pytest.raises(DiffxError):
        analyse(np.zeros((128, 128), dtype=np.uint8))
    with pytest.raises(DiffxError):
        score("photo hd", one_star())
