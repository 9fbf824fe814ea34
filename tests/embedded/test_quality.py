"""The quality measures: objects paired with their words, the pointing game hits and misses, evaluate rates."""

from dataclasses import replace

import torch

from diffx.embedded.quality import evaluate, meets_targets, pointed_objects, pointing_trials
from diffx.embedded.shapes import Scene, ShapeObject, render
from diffx.embedded.worlds import WORLDS
from diffx.models.configs import tiny
from diffx.models.stable_diffusion import build, build_without_weights
from diffx.models.tokenizer import ClipTokenizer
from diffx.pipeline.settings import GenerationSettings
from diffx.trace.record import Trace

PROMPT = "a red circle left of a blue square"
SCENE = Scene([ShapeObject("circle", "red", "small", "left", (0.25, 0.5), 0.12),
               ShapeObject("square", "blue", "small", "right", (0.75, 0.5), 0.12)], background="white")


def bump(centre: tuple[float, float], side: int = 16) -> torch.Tensor:
    """A (side, side) Gaussian bump at `centre` (fractions of the image)."""
    coords = (torch.arange(side) + 0.5) / side
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    return torch.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / 0.01)


def fake_trace(words: list[str], peaks: dict[str, tuple[float, float]], steps: int = 3) -> Trace:
    """A trace whose every step maps word w (one token each) to a bump at peaks[w], else a flat map."""
    maps = [torch.full((16, 16), 0.1)]  # start token
    maps += [bump(peaks[word]) if word in peaks else torch.full((16, 16), 0.1) for word in words]
    maps.append(torch.full((16, 16), 0.1))  # end token
    attention = torch.stack(maps)[None].repeat(steps, 1, 1, 1)  # (S, K, 16, 16)
    prompt = " ".join(words)
    tokens = ClipTokenizer.default().encode(prompt)
    assert tokens.words == words and tokens.num_tokens == len(words) + 2  # one BPE token per word
    settings = GenerationSettings(prompt=prompt).resolved(build_without_weights(tiny()))
    return Trace(settings=settings, tokens=tokens, negative_tokens=ClipTokenizer.default().encode(""),
                 tensors={"timesteps": torch.arange(steps).float(), "attention": attention})


def test_pointed_objects_pair_each_drawn_object_with_its_words_in_order():
    image = render(SCENE)
    words = PROMPT.split()
    trials = pointed_objects(WORLDS["shapes"], PROMPT, image, words)
    assert [(obj.colour, obj.shape, colour_at, shape_at) for obj, colour_at, shape_at in trials] == [
        ("red", "circle", 1, 2), ("blue", "square", 6, 7)]
    assert trials[0][0].centre[0] < 0.5 < trials[1][0].centre[0]  # the judge's objects, where they are drawn
    same_shape = "a red circle left of a blue circle"
    drawn = render(Scene([SCENE.objects[0], replace(SCENE.objects[1], shape="circle")], background="white"))
    assert [t[1:] for t in pointed_objects(WORLDS["shapes"], same_shape, drawn, same_shape.split())] == [(1, 2), (6, 7)]
    assert pointed_objects(WORLDS["shapes"], "a red circle", image, ["a", "red", "circle"]) == []  # one object
    assert pointed_objects(WORLDS["shapes"], PROMPT, image, "a green circle left of a blue square".split()) == [
        (trials[1][0], 6, 7)]  # the red circle's words are missing: no trial for it


def test_pointing_game_hits_where_each_word_looks_at_its_object():
    image = render(SCENE)
    words = PROMPT.split()
    right = fake_trace(words, {"circle": (0.25, 0.5), "square": (0.75, 0.5)})
    assert pointing_trials(PROMPT, image, right) == [True, True]
    swapped = fake_trace(words, {"circle": (0.75, 0.5), "square": (0.25, 0.5)})
    assert pointing_trials(PROMPT, image, swapped) == [False, False]
    beside = fake_trace(words, {"circle": (0.25, 0.15), "square": (0.75, 0.5)})  # above the circle's box
    assert pointing_trials(PROMPT, image, beside) == [False, True]


def test_pointing_game_skips_objects_the_picture_lacks_and_single_objects():
    image = render(Scene([SCENE.objects[0]], background="white"))
    trace = fake_trace(PROMPT.split(), {"circle": (0.25, 0.5), "square": (0.75, 0.5)})
    assert pointing_trials(PROMPT, image, trace) == [True]
    assert pointing_trials("a red circle on the left", image, trace) == []


def test_evaluate_reports_rates_at_the_model_defaults():
    torch.manual_seed(0)
    model = build(replace(tiny(), default_steps=2))
    prompts = [PROMPT, "a green triangle at the top"]
    result = evaluate(model, prompts, seed=3)
    assert (result["n"], result["seed"], result["steps"]) == (2, 3, model.config.default_steps)
    assert result["guidance"] == model.config.default_guidance
    assert {"colour", "shape", "position", "all"} <= set(result["rates"])
    assert all(0.0 <= rate <= 1.0 for rate in result["rates"].values())
    assert evaluate(model, prompts[1:], guidance=1.0)["guidance"] == 1.0


def test_meets_targets_needs_every_rate_and_a_guidance_gap():
    rates = {"colour": 0.96, "shape": 0.9, "position": 0.9, "all": 0.8}
    default = {"rates": rates, "pointing": 0.85}
    reached = meets_targets(default, {"rates": {**rates, "all": 0.5}, "pointing": 0.4})
    assert all(reached.values())
    reached = meets_targets({"rates": {**rates, "colour": 0.9}, "pointing": None}, {"rates": {**rates, "all": 0.75}})
    assert reached == {"colour": False, "shape": True, "position": True, "pointing": False, "guidance gap": False}
