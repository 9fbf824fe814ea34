"""The v2 world: deterministic scenes covering its vocabulary, renders, coverage masks, exact captions, the parser."""

import numpy as np
import pytest

from diffx.embedded.shapes import EVAL_STREAM, TRAIN_STREAM, _scene_rng
from diffx.embedded.world import (
    BACKGROUND_KINDS,
    COLOURS,
    FILLS,
    SHAPES,
    TINTS,
    Background,
    Scene,
    WorldObject,
    make_scene,
    object_masks,
    render,
)
from diffx.embedded.world_text import (
    BackgroundWords,
    CaptionSpec,
    ObjectWords,
    caption_text,
    describe,
    make_eval_prompts,
    make_open_prompts,
    parse_caption,
    relations_between,
)
from diffx.errors import DiffxError


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    rng = _scene_rng(TRAIN_STREAM, 11)
    return [make_scene(rng) for _ in range(400)]


def test_a_seed_fixes_the_scene_and_streams_differ():
    first, again = make_scene(_scene_rng(TRAIN_STREAM, 5)), make_scene(_scene_rng(TRAIN_STREAM, 5))
    assert first == again and np.array_equal(render(first), render(again))
    assert make_scene(_scene_rng(EVAL_STREAM, 5)) != first


def test_scenes_cover_the_vocabulary_and_keep_objects_apart(scenes):
    objects = [obj for scene in scenes for obj in scene.objects]
    assert {obj.shape for obj in objects} == set(SHAPES) and {obj.colour for obj in objects} == set(COLOURS)
    assert {obj.fill for obj in objects} == set(FILLS) and {obj.size for obj in objects} == {"small", "large"}
    assert {scene.background.kind for scene in scenes} == set(BACKGROUND_KINDS)
    assert {tint for scene in scenes for tint in scene.background.colours} == set(TINTS)
    assert {len(scene.objects) for scene in scenes} == {1, 2, 3}
    for scene in scenes:
        assert len({obj.position for obj in scene.objects}) == len(scene.objects)  # one object per grid cell
        assert all(0 < v < 1 for obj in scene.objects for v in obj.bbox)
        masks = object_masks(scene, 64)
        assert masks.sum(axis=0).max() <= 1.0 + 1e-6  # objects never overlap


def test_render_and_masks_agree():
    obj = WorldObject("ring", "purple", "large", "center", (0.5, 0.5), 0.2, fill="dotted")
    scene = Scene((obj,), Background("plain", ("white",)))
    image = render(scene)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    assert (image[64, 64] == TINTS["white"]).all()  # the ring's hole shows the background
    mask = object_masks(scene, 128)[0]
    painted = np.abs(image.astype(int) - TINTS["white"]).sum(axis=-1) > 0
    assert np.array_equal(painted, mask > 0)
    expected = np.pi * 0.2**2 * (1 - 0.55**2) * 128**2
    assert abs(mask.sum() - expected) / expected < 0.01  # exact coverage, antialiased edges included
    assert object_masks(scene, 16).shape == (1, 16, 16)
    with pytest.raises(DiffxError):
        render(scene, 8)


def test_exact_captions_parse_back(scenes):
    rng = np.random.default_rng(0)
    for scene in scenes:
        spec = describe(scene, rng)
        assert parse_caption(caption_text(spec)) == spec
        if len(scene.objects) >= 2:
            assert spec.relation is not None and (len(scene.objects) == 2) == (spec.them is None)


def test_caption_grammar_and_relations():
    left = WorldObject("star", "red", "large", "top left", (0.25, 0.25), 0.18, fill="striped")
    right = WorldObject("square", "blue", "small", "bottom right", (0.75, 0.75), 0.1, fill="solid")
    assert relations_between(left, right) == ["left of", "above"]
    spec = CaptionSpec((ObjectWords("star", "red", "striped", "large", "top left"),),
                       background=BackgroundWords("plain", ("pale blue",)))
    assert caption_text(spec) == "a large red striped star in the top left on a pale blue background"
    three = parse_caption("Photo of a red circle to the left of a blue square, and a green heart below them. HD")
    assert [obj.shape for obj in three.objects] == ["circle", "square", "heart"]
    assert (three.relation, three.them) == ("left of", "below")
    text = "a big orange hexagon in the middle on a white to pale pink gradient background"
    assert parse_caption(text) == CaptionSpec(
        (ObjectWords("hexagon", "orange", None, "large", "center"),), None, None,
        BackgroundWords("gradient", ("white", "pale pink")))
    assert parse_caption("two stars on a checkered background").background == BackgroundWords("checkered", None)
    assert parse_caption("IMG_2041").objects == ()


def test_prompts():
    prompts = make_eval_prompts(50, seed=3)
    assert prompts == make_eval_prompts(50, seed=3) and prompts != make_eval_prompts(50, seed=4)
    assert all(parse_caption(prompt).background.colours for prompt in prompts)
    open_prompts = make_open_prompts(20)
    for prompt in open_prompts:
        (obj,) = parse_caption(prompt).objects
        assert obj.colour and obj.shape and obj == ObjectWords(obj.shape, obj.colour)
        assert parse_caption(prompt).background == BackgroundWords()
