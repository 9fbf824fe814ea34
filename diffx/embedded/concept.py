"""What `diffx finetune` teaches: a concept, its training pictures and captions, and the judge's verdict on it.

A concept is either

- a **world object** (`world:pink dotted hexagon`): one shape in one colour and one fill of the v2 world
  (`world.py`). The embedded model shapes-world-2 was trained on every shape, colour and fill of the world, so no
  object is new to it as a picture; what it never saw is a *word* for one combination. Its captions always spell
  the three attributes out ("a pink dotted hexagon"); the token `<zig>` (BPE-split into "<", "zig", ">" by the
  base tokenizer, words the captions never use) is given that meaning by the fine-tuning alone. Because the world
  can draw it, the world judge (`world_judge.py`) can check a picture drawn from a prompt using the token: the
  prompt with the token written back as the words is judged, and the concept counts as drawn right when the
  shape, the colour and the fill are all read right;
- a **folder** of the user's pictures (PNG or JPEG), resized to the model's side and captioned "a <zig>";
  nothing judges those.

Training scenes of a world concept come from the world's own generator (a stream of their own, `CONCEPT_STREAM`)
with the first object replaced by the concept object, and are captioned exactly (`world_text.describe`) with the
concept's words replaced by the token: "a large <zig> above a blue square on a white background". Held-out
prompts are one-object scenes of the evaluation stream (`EVAL_STREAM`), the concept at a random size, cell and
background: "a small <zig> in the top left on a pale blue background".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from diffx.embedded.shapes import _scene_rng
from diffx.embedded.world import EVAL_STREAM, Scene, _boxes_apart, make_scene, render, to_tensor
from diffx.embedded.world_judge import score
from diffx.embedded.world_text import CaptionSpec, ObjectWords, caption_text, describe, parse_caption
from diffx.errors import InvalidArgumentError, elide
from diffx.images import image_to_tensor, load_image

WORLD_PREFIX = "world:"
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
CONCEPT_STREAM = 3  # the world's scene streams: 0 training, 1 evaluation (shapes.py); fine-tuning scenes draw from 3


@dataclass(frozen=True)
class WorldConcept:
    """One object of the v2 world, named by its shape, colour and fill."""

    shape: str
    colour: str
    fill: str

    @property
    def words(self) -> str:
        """How the world's captions name it: "pink dotted hexagon"."""
        return f"{self.colour} {self.fill} {self.shape}"


@dataclass(frozen=True)
class FolderConcept:
    """The user's pictures of a concept."""

    pictures: tuple[Path, ...]


Concept = WorldConcept | FolderConcept


def parse_concept(text: str) -> Concept:
    """`world:COLOUR FILL SHAPE` (e.g. world:pink dotted hexagon), or a folder holding PNG/JPEG pictures (each
    read once here, so a damaged one is refused before any work)."""
    if text.startswith(WORLD_PREFIX):
        spec = parse_caption(text.removeprefix(WORLD_PREFIX))
        words = spec.objects[0] if len(spec.objects) == 1 else None
        if words is None or words.colour is None or words.fill is None:
            raise InvalidArgumentError(f"--concept {elide(text, 60)!r}: name one world object by colour, fill and "
                                       "shape, e.g. world:pink dotted hexagon")
        return WorldConcept(words.shape, words.colour, words.fill)
    folder = Path(text)
    if not text.strip() or not folder.is_dir():
        raise InvalidArgumentError(f"--concept {elide(text, 80)}: no such folder; give a folder of PNG/JPEG pictures "
                                   "or a world object, e.g. world:pink dotted hexagon")
    pictures = tuple(sorted(p for p in folder.iterdir() if p.suffix.lower() in PICTURE_SUFFIXES and p.is_file()))
    if not pictures:
        raise InvalidArgumentError(f"--concept {elide(text, 80)}: the folder holds no .png/.jpg/.jpeg picture")
    for picture in pictures:
        load_image(picture)  # each one readable, before any work
    return FolderConcept(pictures)


def _with_concept(scene: Scene, concept: WorldConcept) -> Scene | None:
    """`scene` with its first object turned into the concept object (its size and cell kept), or None if the new
    shape's box would come too close to another object's."""
    first = replace(scene.objects[0], shape=concept.shape, colour=concept.colour, fill=concept.fill)
    if not all(_boxes_apart(first.bbox, other.bbox) for other in scene.objects[1:]):
        return None
    return Scene((first, *scene.objects[1:]), scene.background)


def _is_concept(words: ObjectWords, concept: WorldConcept) -> bool:
    return (words.shape, words.colour, words.fill) == (concept.shape, concept.colour, concept.fill)


def token_caption(spec: CaptionSpec, concept: WorldConcept, token: str) -> str:
    """The caption `spec` with every object that is the concept named by `token` (its size and cell kept)."""
    objects = tuple(ObjectWords(token, None, None, words.size, words.position) if _is_concept(words, concept)
                    else words for words in spec.objects)
    return caption_text(replace(spec, objects=objects))


def _concept_scenes(concept: WorldConcept, rng: np.random.Generator, count: int,
                    single: bool = False) -> list[Scene]:
    scenes = []
    while len(scenes) < count:
        scene = make_scene(rng)
        if single:
            scene = Scene(scene.objects[:1], scene.background)
        if (changed := _with_concept(scene, concept)) is not None:
            scenes.append(changed)
    return scenes


def training_examples(concept: Concept, token: str, count: int, seed: int, size: int
                      ) -> tuple[torch.Tensor, list[str]]:
    """(pictures (N, 3, size, size) in [-1, 1], their captions with the token). A world concept: `count` scenes;
    a folder: each picture once, captioned "a <token>"."""
    if isinstance(concept, FolderConcept):
        pictures = [image_to_tensor(load_image(path, (size, size))) for path in concept.pictures]
        return torch.cat(pictures), [f"a {token}"] * len(pictures)
    rng = _scene_rng(CONCEPT_STREAM, seed)
    scenes = _concept_scenes(concept, rng, count)
    captions = [token_caption(describe(scene, rng), concept, token) for scene in scenes]
    return torch.stack([to_tensor(render(scene, size)) for scene in scenes]), captions


def held_out_prompts(concept: WorldConcept, token: str, count: int, seed: int = 0) -> list[tuple[str, str]]:
    """`count` (prompt with the token, the same prompt in the world's words) pairs of one-object scenes from the
    evaluation stream (`EVAL_STREAM`, never trained on)."""
    rng = _scene_rng(EVAL_STREAM, seed, CONCEPT_STREAM)
    pairs = []
    for scene in _concept_scenes(concept, rng, count, single=True):
        spec = describe(scene, rng)
        pairs.append((token_caption(spec, concept, token), caption_text(spec)))
    return pairs


def drawn_right(words_prompt: str, picture: np.ndarray) -> bool:
    """Whether the judge reads the concept's shape, colour and fill right in `picture` (`world_judge.score` of the
    prompt in the world's words; position, size and background are not asked)."""
    verdict = score(words_prompt, picture)
    return verdict["shape"] and verdict["colour"] and verdict["fill"]

