"""Which U-Net layers localise? The pointing game (see `diffx.embedded.quality`) per cross-attention layer.

For the two-object prompts of its world's evaluation stream, the embedded model (or `--model`) generates each
picture (seed `seed + i` for prompt i, default sampler, steps and guidance) with every layer's
cross-attention recorded (`TraceOptions(attention_detail="layers")`). Each drawn object's shape word
then has one map per layer — the layer's mean over heads, averaged over all steps, at the layer's own
grid — and the DAAM aggregate. A trial is a hit when the map's maximum, upsampled bilinearly to the
picture, lies in the object's (dilated) box: the same test `quality.points_at` applies to the aggregate.

Run from the repository root:  OMP_NUM_THREADS=2 python -m benchmarks.attention_layers [--n 60] [--model FOLDER]
The last line printed is `aggregate=<rate> down.0=<rate> … trials=<count>`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from diffx.embedded.quality import load_for_evaluation, pointed_objects, points_at
from diffx.embedded.world_quality import model_world
from diffx.embedded.worlds import World, get_world
from diffx.paths import EMBEDDED_MODEL_DIR
from diffx.pipeline.settings import GenerationSettings
from diffx.trace import Trace, TraceOptions, generate_traced
from diffx.views.attention import layer_title

LAYERS = TraceOptions(record=("attention",), attention_detail="layers")


def layer_hits(world: World, prompt: str, image, trace: Trace) -> dict[str | None, list[bool]]:
    """Layer index (None = the aggregate) -> one hit/miss per object of the prompt that the picture shows."""
    height, width = image.shape[:2]
    layers = [None, *range(len(trace.attention_layers))]
    words = {layer: trace.token_maps(None, layer) for layer in layers}  # (K, r, c), mean over steps
    hits: dict[str | None, list[bool]] = {layer: [] for layer in layers}
    for drawn, _, shape_at in pointed_objects(world, prompt, image, trace.words):
        for layer in layers:
            _, columns = trace.token_columns(words[layer])
            hits[layer].append(points_at(columns[1 + shape_at], drawn, height, width))
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60, help="number of two-object prompts")
    parser.add_argument("--seed", type=int, default=0, help="prompt-set seed; prompt i is generated with seed + i")
    parser.add_argument("--model", type=Path, default=EMBEDDED_MODEL_DIR, help="model folder or training folder")
    args = parser.parse_args()
    model = load_for_evaluation(args.model)
    world = get_world(model_world(model, args.model))
    candidates = world.eval_prompts(20 * args.n, args.seed)
    prompts = [(i, p) for i, p in enumerate(candidates) if len(world.prompt_objects(p)) == 2][: args.n]
    console = Console()
    totals: dict[str | None, list[bool]] = {}
    names: dict[str | None, str] = {}
    start = time.perf_counter()
    with Progress(console=console) as progress:
        task = progress.add_task("pointing game per layer", total=len(prompts))
        for index, prompt in prompts:
            result = generate_traced(model, GenerationSettings(prompt=prompt, seed=args.seed + index), options=LAYERS)
            trace = result.traces[0]
            for layer, hits in layer_hits(world, prompt, result.images[0], trace).items():
                totals.setdefault(layer, []).extend(hits)
                names[layer] = layer_title(trace, layer)
            progress.advance(task)
    trials = len(totals[None])
    console.print(f"{len(prompts)} two-object prompts, {trials} trials, "
                  f"{(time.perf_counter() - start) / len(prompts):.1f} s per image")
    for layer, hits in totals.items():
        console.print(f"{names[layer]:<24} pointing {sum(hits) / max(1, len(hits)):.3f}")
    keys = {layer: "aggregate" if layer is None else names[layer].split()[0] for layer in totals}
    print(" ".join(f"{keys[layer]}={sum(hits) / max(1, len(hits)):.3f}" for layer, hits in totals.items())
          + f" trials={trials}")


if __name__ == "__main__":
    main()
