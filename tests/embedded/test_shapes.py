"""The shapes world: deterministic scenes, captions that say what is drawn, clean layouts."""

import numpy as np
import pytest
import torch

from diffx.embedded.shapes import (
    COLOURS,
    EVAL_STREAM,
    POSITIONS,
    SHAPES,
    SIZE_RADIUS,
    TRAIN_STREAM,
    Scene,
    ShapeObject,
    caption,
    make_eval_prompts,
    make_scene,
    object_masks,
    parse_prompt,
    render,
)
from diffx.errors import DiffxError
from tests.embedded.shapes_samples import ShapesDataset, sample_batch


def random_scenes(count: int, seed: int = 0) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [make_scene(rng) for _ in range(count)]


def test_same_seed_same_pixels_and_caption():
    first, second = ShapesDataset(50, seed=3), ShapesDataset(50, seed=3)
    for index in (0, 17, 49):
        image_a, caption_a = first[index]
        image_b, caption_b = second[index]
        assert caption_a == caption_b
        assert torch.equal(image_a, image_b)
    other_images = torch.stack([ShapesDataset(50, seed=4)[i][0] for i in range(5)])
    assert not torch.equal(other_images, torch.stack([first[i][0] for i in range(5)]))


def test_dataset_items_are_independent_of_access_order():
    dataset = ShapesDataset(10, seed=1)
    later_first = dataset[7]
    for index in range(7):
        dataset[index]
    assert dataset[7][1] == later_first[1] and torch.equal(dataset[7][0], later_first[0])


def test_sample_batch_shapes_range_and_determinism():
    images, captions, scenes = sample_batch(6, 11, size=64)
    assert images.shape == (6, 3, 64, 64) and images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert len(captions) == len(scenes) == 6
    again, captions_again, _ = sample_batch(6, 11, size=64)
    assert torch.equal(images, again) and captions == captions_again
    rng = np.random.default_rng(0)
    assert sample_batch(2, rng)[1] != sample_batch(2, rng)[1]  # a live generator streams new data


def test_renders_at_128_pixels_with_the_same_layout():
    scene = random_scenes(1, seed=5)[0]
    small, large = render(scene, 64), render(scene, 128)
    assert small.shape == (64, 64, 3) and large.shape == (128, 128, 3) and large.dtype == np.uint8
    # Box-filtering the 128 px render down to 64 px gives (nearly) the 64 px render.
    halved = large.astype(np.float64).reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
    assert np.abs(halved - small).mean() < 2.0


def test_render_colours_and_antialiasing():
    obj = ShapeObject("circle", "red", "large", "center", (0.5, 0.5), 0.2)
    image = render(Scene([obj], "blue"), 64)
    assert tuple(image[0, 0]) == COLOURS["blue"]
    assert tuple(image[32, 32]) == COLOURS["red"]
    # Edge pixels are partial mixes of the two colours: the rendering is antialiased.
    pure = np.all(image == COLOURS["red"], axis=-1) | np.all(image == COLOURS["blue"], axis=-1)
    assert 20 < (~pure).sum() < 200
    # The covered area matches the analytic disc area pi r^2 (in pixels, red fraction per pixel).
    blue, red = COLOURS["blue"][2], COLOURS["red"][2]
    red_coverage = (image[..., 2].astype(float) - blue) / (red - blue)
    assert red_coverage.sum() == pytest.approx(np.pi * (0.2 * 64) ** 2, rel=0.03)


def test_object_masks_cover_each_object_alone_at_the_latent_size():
    square = ShapeObject("square", "red", "large", "left", (0.25, 0.5), 0.125)
    triangle = ShapeObject("triangle", "blue", "large", "right", (0.3, 0.5), 0.125)  # overlaps the square
    masks = object_masks(Scene([square, triangle], "white"), 16)
    assert masks.shape == (2, 16, 16) and masks.dtype == np.float32 and 0 <= masks.min() and masks.max() == 1
    assert masks[0].sum() == pytest.approx((2 * 0.125 * 16) ** 2, rel=0.15)  # 4x4 px (PIL draws edges inclusive)
    assert masks[1].sum() == pytest.approx((2 * 0.125 * 16) ** 2 / 2, rel=0.15)  # a triangle fills half its box
    assert masks[0, 8, 3] == 1 and masks[0, 8, 12] == 0  # inside / far from the square
    assert masks[1].sum() > 0 and (masks[0] * masks[1]).sum() > 0  # each keeps its whole shape where they overlap


def test_render_rejects_tiny_images():
    with pytest.raises(DiffxError, match="too small"):
        render(random_scenes(1)[0], 8)


def test_parsing_a_caption_recovers_the_scene():
    rng = np.random.default_rng(7)
    for _ in range(300):
        scene = make_scene(rng)
        text = caption(scene, rng)
        spec = parse_prompt(text)
        assert len(spec.objects) == len(scene.objects), text
        assert spec.background in (None, scene.background), text
        if len(scene.objects) == 1:
            (obj,), (want,) = scene.objects, spec.objects
            assert (want.shape, want.colour) == (obj.shape, obj.colour), text
            assert want.size in (None, obj.size) and want.position in (None, obj.position), text
            continue
        # Two objects: the relation words put the caption's objects in the scene's order.
        first, second = scene.objects
        named = [(want.shape, want.colour) for want in spec.objects]
        if spec.relation in ("left of", "above", None):
            expected = [(first.shape, first.colour), (second.shape, second.colour)]
        else:
            expected = [(second.shape, second.colour), (first.shape, first.colour)]
        assert named == expected, text
        if spec.relation is not None:
            axis = "horizontal" if spec.relation in ("left of", "right of") else "vertical"
            assert axis == scene.axis, text


def test_captions_use_every_form():
    rng = np.random.default_rng(0)
    specs = [parse_prompt(caption(make_scene(rng), rng)) for _ in range(400)]
    assert {spec.relation for spec in specs} == {None, "left of", "right of", "above", "below"}
    assert any(spec.background is None for spec in specs) and any(spec.background for spec in specs)
    singles = [spec.objects[0] for spec in specs if len(spec.objects) == 1]
    assert {obj.position for obj in singles} == {None, *POSITIONS}
    assert {obj.size for obj in singles} == {None, "small", "large"}


def test_parse_prompt_variants():
    spec = parse_prompt("A big Orange Square, upper-left corner; Purple background.")
    (obj,) = spec.objects
    assert (obj.shape, obj.colour, obj.size, obj.position) == ("square", "orange", "large", "top left")
    assert spec.background == "purple"
    spec = parse_prompt("a tiny white triangle to the left of a black circle")
    assert [(o.colour, o.shape) for o in spec.objects] == [("white", "triangle"), ("black", "circle")]
    assert spec.relation == "left of" and spec.objects[0].size == "small"
    assert parse_prompt("a green circle in the centre").objects[0].position == "center"
    assert parse_prompt("a photo of a cat").objects == []


def test_background_differs_from_every_object():
    for scene in random_scenes(500):
        assert scene.background not in {obj.colour for obj in scene.objects}


def test_objects_lie_inside_the_image_and_apart():
    scenes = random_scenes(500)
    for scene in scenes:
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.bbox
            assert 0.0 < x0 < x1 < 1.0 and 0.0 < y0 < y1 < 1.0
            assert SIZE_RADIUS[obj.size][0] <= obj.radius <= SIZE_RADIUS[obj.size][1]
            assert obj.shape in SHAPES and obj.colour in COLOURS
        if len(scene.objects) == 2:
            a, b = (obj.bbox for obj in scene.objects)
            assert a[2] < b[0] or a[3] < b[1]  # first box entirely left of, or above, the second
    assert {len(scene.objects) for scene in scenes} == {1, 2}


def test_two_object_layout_matches_the_position_names():
    for scene in random_scenes(300):
        if len(scene.objects) == 1:
            obj = scene.objects[0]
            nearest = min(POSITIONS, key=lambda name: np.hypot(*np.subtract(POSITIONS[name], obj.centre)))
            assert nearest == obj.position
            continue
        first, second = scene.objects
        if scene.axis == "horizontal":
            assert (first.position, second.position) == ("left", "right")
            assert first.centre[0] < second.centre[0]
        else:
            assert (first.position, second.position) == ("top", "bottom")
            assert first.centre[1] < second.centre[1]


def test_eval_prompts_come_from_their_own_seed_stream():
    assert TRAIN_STREAM != EVAL_STREAM
    prompts = make_eval_prompts(20, seed=0)
    assert prompts == make_eval_prompts(20, seed=0)
    assert prompts != make_eval_prompts(20, seed=1)
    assert prompts != sample_batch(20, 0)[1]  # same integer seed, different stream
    assert all(parse_prompt(prompt).objects for prompt in prompts)
