"""Editing attention on the embedded model (or `--model`), judged by its world's judge (`diffx.embedded.judge`
or `world_judge`).

1. Prompt-to-prompt word swap (Hertz et al. 2022). For N one-object evaluation prompts, swap the shape
   word (even prompts: the world's next shape, circle → square → …) or the colour word (odd prompts: the
   next colour that no word of the prompt names) and run the edit with the prompt's seed,
   without and with the source's cross-attention injected for the first τ of the steps. "changed": the
   judge reads the swapped attribute of the edit's largest object as asked. "others stay": the edit's
   largest object has the source picture's other attributes (shape or colour, size, position) and the
   background is the same. Target: both >= 90 % with injection, "others stay" clearly lower without.
   Printed over all prompts and over the "readable" ones, whose source picture the judge finds an object
   in (a source drawn in its background's colour leaves nothing to judge the edit against).
2. Re-weighting a colour word. For M prompts, the colour word at several weights, as word weights
   ("a (red:w) circle", A1111's semantics) and as prompt-to-prompt attention re-weighting (c on the
   injected maps, τ = 1): the judge's reading is the share of the picture covered by objects it reads
   as that colour, averaged over the prompts; printed with whether it rises monotonically with the weight.

Run from the repository root:  OMP_NUM_THREADS=2 python -m benchmarks.attention_edit [--n 100 --m 10] [--model F]
Last line: swap_changed=<x> swap_others=<x> plain_others=<x> readable=<n> readable_changed=<x> readable_others=<x>
readable_plain_others=<x> weights_monotonic=<bool> reweight_monotonic=<bool>
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from diffx.embedded.quality import load_for_evaluation
from diffx.embedded.shapes import object_word_indices
from diffx.embedded.world_quality import model_world
from diffx.embedded.worlds import World, get_world
from diffx.experiments.prompt_to_prompt import align_tokens, inject, prompt_to_prompt, record_source, word_scales
from diffx.paths import EMBEDDED_MODEL_DIR
from diffx.pipeline.conditioning import tokenize
from diffx.pipeline.generation import generate
from diffx.pipeline.settings import GenerationSettings

WORD_WEIGHTS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
ATTENTION_SCALES = (0.0, 0.5, 1.0, 2.0, 4.0)


def swap_target(world: World, prompt: str, index: int) -> tuple[str, str, str] | None:
    """(edited prompt, swapped attribute, wanted value) for a one-object prompt; None for two objects."""
    objects, words = list(world.prompt_objects(prompt)), prompt.split()
    found = object_word_indices(words, objects)[0] if len(objects) == 1 else None
    if found is None:
        return None
    obj, (colour_at, shape_at) = objects[0], found
    if index % 2 == 0:
        new = world.shapes[(world.shapes.index(obj.shape) + 1) % len(world.shapes)]
        at, attribute = shape_at, "shape"
    else:
        colours = list(world.colours)
        new = next(c for c in colours[colours.index(obj.colour) + 1:] + colours if c not in words)
        at, attribute = colour_at, "colour"
    return " ".join(new if i == at else word for i, word in enumerate(words)), attribute, new


def judge_swap(source, edit, attribute: str, wanted: str) -> tuple[bool, bool]:
    """(the swapped attribute is as asked, every other attribute is the source picture's), from two analyses
    of the world's judge (objects largest first, and the background)."""
    if not source.objects or not edit.objects:
        return False, False
    before, after = source.objects[0], edit.objects[0]
    changed = getattr(after, attribute) == wanted
    kept = [name for name in ("colour", "shape", "size", "position") if name != attribute]
    others = all(getattr(after, name) == getattr(before, name) for name in kept) and \
        edit.background == source.background
    return changed, others


def colour_share(analysis, colour: str) -> float:
    """The judge's reading of a colour: the share of the picture covered by objects it reads as that colour."""
    return sum(obj.area for obj in analysis.objects if obj.colour == colour)


def word_swaps(model, world: World, prompts: list[str], tau: float, self_tau: float, progress: Progress
               ) -> dict[str, float]:
    """Rates over all prompts, and over those whose source picture the judge can read ("readable": it finds
    an object in it; on the others neither the change nor what stayed can be judged)."""
    task = progress.add_task("word swaps", total=len(prompts))
    keys = ("changed", "others", "plain_changed", "plain_others")
    records = []
    for index, prompt in enumerate(prompts):
        edit_prompt, attribute, wanted = swap_target(world, prompt, index)
        edit = prompt_to_prompt(model, GenerationSettings(prompt=prompt, seed=index), edit_prompt, tau=tau,
                                self_tau=self_tau)
        source = world.analyse(edit.source.images[0])
        record = {"readable": bool(source.objects)}
        for prefix, run in (("", edit.injected), ("plain_", edit.plain)):
            changed, others = judge_swap(source, world.analyse(run.images[0]), attribute, wanted)
            record[prefix + "changed"], record[prefix + "others"] = changed, changed and others
        records.append(record)
        progress.update(task, advance=1)
        progress.console.log(f"swap {index + 1}/{len(prompts)}: {record}")
    readable = [record for record in records if record["readable"]]
    rates = {key: float(np.mean([record[key] for record in records])) for key in keys}
    rates |= {f"readable_{key}": float(np.mean([record[key] for record in readable])) for key in keys}
    return rates | {"n": len(records), "readable": len(readable)}


def reweighting(model, world: World, prompts: list[str], progress: Progress) -> dict[str, list[float]]:
    task = progress.add_task("re-weighting", total=len(prompts))
    shares: dict[str, list[list[float]]] = {"weights": [], "attention": []}
    for index, prompt in enumerate(prompts):
        colour = world.prompt_objects(prompt)[0].colour
        settings = GenerationSettings(prompt=prompt, seed=index)
        weighted = [generate(model, GenerationSettings(prompt=prompt.replace(colour, f"({colour}:{w:g})", 1),
                                                       seed=index)).images[0] for w in WORD_WEIGHTS]
        shares["weights"].append([colour_share(world.analyse(image), colour) for image in weighted])
        _, recorder = record_source(model, settings, tau=1.0)  # one source run, injected at every factor
        tokens = tokenize(model, prompt)
        token_map = align_tokens(tokens, tokens)
        edits = [inject(model, settings, recorder, token_map, word_scales(tokens, {colour: c})).images[0]
                 for c in ATTENTION_SCALES]
        shares["attention"].append([colour_share(world.analyse(image), colour) for image in edits])
        progress.update(task, advance=1)
        progress.console.log(f"re-weighting {index + 1}/{len(prompts)}")
    return {key: np.mean(values, axis=0).tolist() for key, values in shares.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="word-swap prompts (one-object evaluation prompts)")
    parser.add_argument("--m", type=int, default=10, help="re-weighting prompts")
    parser.add_argument("--tau", type=float, default=0.6, help="fraction of the steps with injected attention")
    parser.add_argument("--self-tau", type=float, default=0.0, help="fraction with injected self-attention")
    parser.add_argument("--model", type=Path, default=EMBEDDED_MODEL_DIR, help="model folder or training folder")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the shared 2-core machine: one thread per run is the fastest
    model = load_for_evaluation(args.model)
    world = get_world(model_world(model, args.model))
    pool = world.eval_prompts(6 * (args.n + args.m), 0)
    single = [p for i, p in enumerate(pool) if swap_target(world, p, i) is not None]
    swaps, weights = single[: args.n], single[args.n: args.n + args.m]
    console = Console()
    start = time.perf_counter()
    with Progress(console=console) as progress:
        rates = word_swaps(model, world, swaps, args.tau, args.self_tau, progress)
        shares = reweighting(model, world, weights, progress) if weights else {}
    table = Table(title=f"word swap, {rates['n']} prompts, τ = {args.tau:g}, self-attention τ = {args.self_tau:g} "
                        "(judge: largest object and background)")
    for column in ("", "swapped attribute as asked", "others stay (and swapped as asked)"):
        table.add_column(column)
    for prefix, label in (("", "all prompts"), ("readable_", f"the {rates['readable']} readable sources")):
        table.add_row(f"with injection, {label}", f"{rates[prefix + 'changed']:.1%}", f"{rates[prefix + 'others']:.1%}")
        table.add_row(f"without injection, {label}", f"{rates[prefix + 'plain_changed']:.1%}",
                      f"{rates[prefix + 'plain_others']:.1%}")
    console.print(table)
    monotonic = {"weights": None, "attention": None}
    for key, factors, label in (("weights", WORD_WEIGHTS, "word weight (colour:w)"),
                                ("attention", ATTENTION_SCALES, "attention re-weighting c (τ = 1)")):
        if key not in shares:
            continue
        values = shares[key]
        monotonic[key] = all(b >= a for a, b in zip(values, values[1:], strict=False))
        console.print(f"{label}: " + ", ".join(f"{f:g} → {v:.3f}" for f, v in zip(factors, values, strict=True))
                      + f"  (share of the picture in the colour, {len(weights)} prompts; "
                      f"{'monotonic' if monotonic[key] else 'NOT monotonic'})")
    console.print(f"{time.perf_counter() - start:.0f} s")
    print(f"swap_changed={rates['changed']:.3f} swap_others={rates['others']:.3f} "
          f"plain_others={rates['plain_others']:.3f} readable={rates['readable']} "
          f"readable_changed={rates['readable_changed']:.3f} readable_others={rates['readable_others']:.3f} "
          f"readable_plain_others={rates['readable_plain_others']:.3f} weights_monotonic={monotonic['weights']} "
          f"reweight_monotonic={monotonic['attention']}")


if __name__ == "__main__":
    main()
