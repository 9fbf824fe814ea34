"""The worlds the embedded models learn from, behind one interface, so training has one code path.

- "shapes" (the shipped v1 model, `shapes.py`): flat circles, squares and triangles at 64 px, one or
  two objects, 8 colours, plain backgrounds; captions are exact, with words dropped at random.
- "shapes2" (the v2 model, `world.py`): seven shapes, ten colours, solid/striped/dotted fills, plain,
  gradient and checkered backgrounds, 1–3 objects, at 128 px; captions are drawn by the caption-noise
  model of `captions.py`, loose like web alt-text, because loose captions are why classifier-free
  guidance matters in real Stable Diffusion (a model trained on exact captions follows prompts unguided).

A `World` gives training what it needs of a world: scenes from a seeded generator, their pictures,
their captions, each object's coverage mask (for the attention-grounding loss), the model configuration
it is trained with, and the prompts of the training previews. It gives the benchmarks what they need to
judge a model of that world: its shape and colour words, held-out prompts, exact captions, the objects a
prompt names, the judge's reading of a picture and its adherence rates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffx.embedded import captions, judge, shapes, world, world_judge, world_text
from diffx.embedded.captions import CaptionNoise
from diffx.errors import check_choice
from diffx.models.configs import ModelConfig, shapes_world, shapes_world_2


@dataclass(frozen=True)
class World:
    """What training and the benchmarks ask of a world (see the module docstring)."""

    name: str
    make_scene: Callable[[np.random.Generator], Any]
    render: Callable[[Any, int], np.ndarray]  # (scene, size) -> (size, size, 3) uint8
    caption: Callable[[Any, np.random.Generator, CaptionNoise], str]  # a training caption of the scene
    object_masks: Callable[[Any, int], np.ndarray]  # (scene, side) -> (objects, side, side) coverage
    model_config: Callable[[], ModelConfig]
    preview_prompts: tuple[str, ...]
    noisy_captions: bool  # whether `TrainConfig.caption_noise` applies
    max_objects: int  # the most objects a scene holds (scenes hold 1 to max_objects)
    card: tuple[str, ...]  # the model card's opening lines: what the model is and what it learnt from
    shapes: tuple[str, ...]  # the shape words
    colours: tuple[str, ...]  # the object colour words
    eval_prompts: Callable[[int, int], list[str]]  # (n, seed) -> held-out prompts, from the evaluation stream
    exact_caption: Callable[[Any, np.random.Generator], str]  # a caption naming what the scene shows
    prompt_objects: Callable[[str], Sequence[Any]]  # the objects a prompt names (.colour, .shape), in order
    analyse: Callable[[np.ndarray], Any]  # the judge's reading of a picture: .background, .objects (largest first)
    adherence: Callable[[list[str], list[np.ndarray]], dict[str, float]]  # the judge's rate per attribute


def _shapes_caption(scene: shapes.Scene, rng: np.random.Generator, _noise: CaptionNoise) -> str:
    """v1 captions: exact, with size, position and background words dropped at random."""
    return shapes.caption(scene, rng)


def _shapes_prompt_objects(prompt: str) -> Sequence[shapes.ObjectSpec]:
    return shapes.parse_prompt(prompt).objects


def _world_prompt_objects(prompt: str) -> Sequence[world_text.ObjectWords]:
    return world_text.parse_caption(prompt).objects




WORLDS: dict[str, World] = {
    "shapes": World(
        name="shapes", make_scene=shapes.make_scene, render=shapes.render, caption=_shapes_caption,
        object_masks=shapes.object_masks, model_config=shapes_world,
        preview_prompts=("a red circle", "a large blue square in the top left",
                         "a yellow triangle on a black background", "a green circle left of a purple square",
                         "a small white triangle in the bottom right", "an orange square above a blue circle"),
        noisy_captions=False, max_objects=2,
        card=("# shapes-world — diffx's first embedded model (v1)", "",
              "A Stable-Diffusion-v1-architecture model at toy size, trained by `diffx train` on the procedural",
              "shapes world (diffx/embedded/shapes.py): flat circles, squares and triangles in 8 named colours on",
              "a plain background, one or two objects, with captions such as",
              "\"a small red circle in the top left on a blue background\". Its VAE is f4 rather than SD's f8: at",
              "64 px an f8 latent (8x8) blurs the corners that tell a square from a circle."),
        shapes=tuple(shapes.SHAPES), colours=tuple(shapes.COLOURS),
        eval_prompts=shapes.make_eval_prompts, exact_caption=shapes.caption, prompt_objects=_shapes_prompt_objects,
        analyse=judge.analyse, adherence=judge.adherence),
    "shapes2": World(
        name="shapes2", make_scene=world.make_scene, render=world.render, caption=captions.noisy_caption,
        object_masks=world.object_masks, model_config=shapes_world_2,
        preview_prompts=("a red circle", "a large blue striped star in the top left",
                         "a yellow heart on a pale blue checkered background",
                         "a green hexagon left of a purple dotted ring",
                         "a small orange triangle on a white to pale pink gradient background",
                         "a cyan square above a pink circle and a lime star right of them"),
        noisy_captions=True, max_objects=len(world.OBJECT_COUNT_WEIGHTS),
        card=("# shapes-world-2 — diffx's embedded default model (v2)", "",
              "A Stable-Diffusion-v1-architecture model at toy size with SD's f8 VAE, trained by `diffx train` on",
              "the v2 world (diffx/embedded/world.py) at 128 px: circles, squares, triangles, stars, hearts, rings",
              "and hexagons in 10 colours, solid, striped or dotted, on plain, gradient or checkered backgrounds,",
              "1-3 objects with relations; captions drawn by the caption-noise model (diffx/embedded/captions.py),",
              "loose like web alt-text, so that guidance does here what it does in Stable Diffusion."),
        shapes=world.SHAPES, colours=tuple(world.COLOURS),
        eval_prompts=world_text.make_eval_prompts, exact_caption=world_text.exact_caption,
        prompt_objects=_world_prompt_objects, analyse=world_judge.analyse,
        adherence=world_judge.adherence),
}


def get_world(name: str) -> World:
    """The world called `name`; InvalidArgumentError naming the choices otherwise."""
    check_choice("world", name, tuple(WORLDS))
    return WORLDS[name]
