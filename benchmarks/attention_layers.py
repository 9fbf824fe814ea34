"""Which U-Net layers localise? The pointing game (see `diffx.embedded.quality`) per cross-attention layer.

For the two-object prompts of the shapes world's evaluation stream, the embedded model generates each
picture (seed `seed + i` for prompt i, default sampler, steps and guidance) with every layer's
cross-attention recorded (`TraceOptions(attention_detail="layers")`). Each drawn object's shape word
then has one map per layer — the layer's mean over heads, averaged over all steps, at the layer's own
grid — and the DAAM aggregate. A trial is a hit when the map's maximum, upsampled bilinearly to the
picture, lies in the object's (dilated) box: the same test `quality.points_at` applies to the aggregate.

Run from the repository root:  OMP_NUM_THREADS=2 python -m benchmarks.attention_layers [--n 60]
The last line printed is `aggregate=<rate> down.0=<rate> … trials=<count>`.
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.progress import Progress

from diffx.attention_views import layer_title
from diffx.embedded.judge import analyse
from diffx.embedded.quality import load_for_evaluation, points_at, shape_word_indices
from diffx.embedded.shapes import make_eval_prompts, parse_prompt
from diffx.paths import EMBEDDED_MODEL_DIR
from diffx.pipeline import GenerationSettings
from diffx.trace import Trace, TraceOptions, generate_traced

LAYERS = TraceOptions(record=("attention",), attention_detail="layers")


def layer_hits(prompt: str, image, trace: Trace) -> dict[str | None, list[bool]]:
    """Layer index (None = the aggregate) -> one hit/miss per object of the prompt that the picture shows."""
    spec = parse_prompt(prompt)
    found = analyse(image).objects
    height, width = image.shape[:2]
    layers = [None, *range(len(trace.attention_layers))]
    words = {layer: trace.token_maps(None, layer) for layer in layers}  # (K, r, c), mean over steps
    hits: dict[str | None, list[bool]] = {layer: [] for layer in layers}
    for want, word_index in zip(spec.objects, shape_word_indices(trace.words, spec.objects), strict=True):
        drawn = next((obj for obj in found if obj.colour == want.colour and obj.shape == want.shape), None)
        if drawn is None or word_index is None:
            continue  # an object the model did not draw cannot be pointed at: no trial
        for layer in layers:
            _, columns = trace.token_columns(words[layer])
            hits[layer].append(points_at(columns[1 + word_index], drawn, height, width))
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60, help="number of two-object prompts")
    parser.add_argument("--seed", type=int, default=0, help="prompt-set seed; prompt i is generated with seed + i")
    args = parser.parse_args()
    model = load_for_evaluation(EMBEDDED_MODEL_DIR)
    candidates = make_eval_prompts(20 * args.n, args.seed)
    prompts = [(i, p) for i, p in enumerate(candidates) if len(parse_prompt(p).objects) == 2][: args.n]
    console = Console()
    totals: dict[str | None, list[bool]] = {}
    names: dict[str | None, str] = {}
    start = time.perf_counter()
    with Progress(console=console) as progress:
        task = progress.add_task("pointing game per layer", total=len(prompts))
        for index, prompt in prompts:
            result = generate_traced(model, GenerationSettings(prompt=prompt, seed=args.seed + index), options=LAYERS)
            trace = result.traces[0]
            for layer, hits in layer_hits(prompt, result.images[0], trace).items():
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
