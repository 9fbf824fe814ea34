"""The judge reads renders back correctly, survives blur, and marks images that miss the prompt."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from diffx.embedded.judge import Analysis, adherence, analyse, score
from diffx.embedded.shapes import Scene, ShapeObject, caption, make_scene, render
from diffx.errors import DiffxError

ATTRIBUTES = ("colour", "shape", "position", "size")


def blur(image: np.ndarray, radius: float) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))


def accuracy(scenes: list[Scene], analyses: list[Analysis]) -> dict[str, float]:
    """Share of scenes whose background, object count and every object's attributes were read right."""
    hits = {name: 0 for name in ("count", "background", *ATTRIBUTES)}
    for scene, analysis in zip(scenes, analyses, strict=True):
        hits["background"] += analysis.background == scene.background
        if len(analysis.objects) != len(scene.objects):
            continue
        hits["count"] += 1
        # Pair objects by layout: both lists sorted top-left to bottom-right.
        truth = sorted(scene.objects, key=lambda obj: sum(obj.centre))
        seen = sorted(analysis.objects, key=lambda obj: sum(obj.centre))
        for name in ATTRIBUTES:
            hits[name] += all(getattr(a, name) == getattr(b, name) for a, b in zip(truth, seen, strict=True))
    return {name: count / len(scenes) for name, count in hits.items()}


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    rng = np.random.default_rng(2024)
    return [make_scene(rng) for _ in range(500)]


def test_reads_ground_truth_renders(scenes):
    rates = accuracy(scenes, [analyse(render(scene, 64)) for scene in scenes])
    print("judge accuracy on renders:", rates)
    assert all(rate >= 0.99 for rate in rates.values()), rates


def test_reads_blurred_renders(scenes):
    rates = accuracy(scenes, [analyse(blur(render(scene, 64), 1)) for scene in scenes])
    print("judge accuracy on renders blurred with radius 1:", rates)
    assert rates["shape"] >= 0.95 and rates["colour"] >= 0.95, rates


def test_reads_128_pixel_renders(scenes):
    subset = scenes[:40]
    rates = accuracy(subset, [analyse(render(scene, 128)) for scene in subset])
    assert all(rate == 1.0 for rate in rates.values()), rates


def test_scores_captions_of_their_own_renders(scenes):
    rng = np.random.default_rng(0)
    subset = scenes[:150]
    rates = adherence([caption(scene, rng) for scene in subset], [render(scene) for scene in subset])
    assert rates["all"] >= 0.99 and {"colour", "shape", "position", "size", "background"} <= rates.keys()


def test_ignores_specks_and_accepts_pil_images():
    scene = Scene([ShapeObject("square", "green", "large", "center", (0.5, 0.5), 0.2)], "white")
    image = render(scene, 64)
    image[5:7, 50:52] = (230, 25, 25)  # a 4-pixel red speck
    analysis = analyse(Image.fromarray(image))
    found = [(obj.colour, obj.shape, obj.position) for obj in analysis.objects]
    assert found == [("green", "square", "center")]


def one_circle_image() -> np.ndarray:
    obj = ShapeObject("circle", "red", "large", "top left", (0.25, 0.25), 0.18)
    return render(Scene([obj], "blue"), 64)


def test_score_marks_each_wrong_attribute():
    image = one_circle_image()
    right = "a large red circle in the top left on a blue background"
    assert score(right, image) == {"count": True, "colour": True, "shape": True, "size": True,
                                   "position": True, "background": True}
    assert score("a green circle", image) == {"count": True, "colour": False, "shape": True}
    assert score("a red square", image)["shape"] is False
    assert score("a small red circle", image)["size"] is False
    assert score("a red circle in the bottom right", image)["position"] is False
    assert score("a red circle on a yellow background", image)["background"] is False
    assert score("a red circle and a blue square", image)["count"] is False


def test_score_checks_two_object_order():
    left = ShapeObject("triangle", "yellow", "large", "left", (0.25, 0.5), 0.18)
    right = ShapeObject("square", "green", "small", "right", (0.75, 0.5), 0.1)
    image = render(Scene([left, right], "black"), 64)
    for prompt in ("a yellow triangle left of a green square", "a green square right of a yellow triangle",
                   "a yellow triangle and a green square"):
        assert all(score(prompt, image).values()), prompt
    assert score("a yellow triangle right of a green square", image)["position"] is False
    assert score("a yellow triangle above a green square", image)["position"] is False
    wrong = score("a small yellow triangle left of a green circle", image)
    assert (wrong["colour"], wrong["shape"], wrong["size"], wrong["position"]) == (True, False, False, True)


def test_a_render_of_another_prompt_fails_the_score():
    rng = np.random.default_rng(9)
    failures = 0
    for _ in range(50):
        scene, other = make_scene(rng), make_scene(rng)
        prompt = caption(scene, rng)
        result = score(prompt, render(other))
        failures += not all(result.values())
        if {obj.colour for obj in scene.objects}.isdisjoint(obj.colour for obj in other.objects):
            assert result["colour"] is False, prompt
    assert failures >= 45


def test_adherence_rates():
    image = one_circle_image()
    rates = adherence(["a red circle", "a green circle", "a red square in the top left"], [image] * 3)
    assert rates["colour"] == pytest.approx(2 / 3) and rates["shape"] == pytest.approx(2 / 3)
    assert rates["position"] == 1.0 and rates["all"] == pytest.approx(1 / 3)


def test_user_errors():
    image = one_circle_image()
    with pytest.raises(DiffxError, match="names no coloured shape"):
        score("a photo of a cat", image)
    with pytest.raises(DiffxError, match="one image per prompt"):
        adherence(["a red circle"], [image, image])
    with pytest.raises(DiffxError, match="uint8"):
        analyse(image.astype(np.float32))
