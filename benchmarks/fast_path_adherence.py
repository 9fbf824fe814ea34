"""Is the CPU fast path faithful? The embedded model judged in fp32 and on the fast path, same prompts, same seeds.

The fast path (`diffx.models.fast_cpu`: bf16 weights and activations, channels-last, prepacked convolutions)
rounds every activation to 8 mantissa bits. Relative errors of ε̂ (benchmarks/unet_speed.py) say how far one
step moves; this says whether the pictures still show what was asked. The embedded model is cast to the fast
path (`--dtype auto` keeps it in fp32, being small: this is the check that the cast is safe) and both copies
draw the evaluation prompts of `benchmarks/embedded_quality.py` (of the model's world) at the model's default
settings, prompt i at seed i; the world's judge (`diffx.embedded.judge` or `world_judge`) reads every
picture. Issue #18's bar: adherence equal within 1 point.

Run from the repository root:  python -m benchmarks.fast_path_adherence [--n 200] [--model FOLDER]
The last line is `fp32=<all attributes right, fp32> fast=<the same, fast path> diff=<fast - fp32>
max_attribute_diff=<the largest |fast - fp32| over the judge's attributes>`.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from diffx.embedded.quality import load_for_evaluation
from diffx.embedded.world_quality import model_world
from diffx.embedded.worlds import get_world
from diffx.models.fast_cpu import FAST_DTYPE
from diffx.paths import EMBEDDED_MODEL_DIR
from diffx.pipeline.generation import generate
from diffx.pipeline.settings import GenerationSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="evaluation prompts (prompt i uses seed i)")
    parser.add_argument("--model", type=Path, default=EMBEDDED_MODEL_DIR, help="model folder or training folder")
    args = parser.parse_args()
    torch.set_num_threads(2)
    fp32 = load_for_evaluation(args.model).eval()
    world = get_world(model_world(fp32, args.model))
    models = {"fp32": fp32, "fast": copy.deepcopy(fp32).to(dtype=FAST_DTYPE)}
    prompts = world.eval_prompts(args.n, 0)
    console = Console()
    rates, seconds = {}, {}
    with Progress(console=console) as progress:
        for name, model in models.items():
            task = progress.add_task(name, total=args.n)
            start, pictures = time.perf_counter(), []
            for i, prompt in enumerate(prompts):
                pictures.append(generate(model, GenerationSettings(prompt=prompt, seed=i)).images[0])
                progress.advance(task)
            seconds[name] = (time.perf_counter() - start) / args.n
            rates[name] = world.adherence(prompts, pictures)
    table = Table(title=f"{fp32.config.name}: {args.n} evaluation prompts, default guidance, judged")
    for column in ("attribute", "fp32", "fast path", "difference"):
        table.add_column(column, justify="left" if column == "attribute" else "right")
    for attribute in rates["fp32"]:  # the judge's attributes, then "all": every attribute of a prompt right
        table.add_row(attribute, f"{rates['fp32'][attribute]:.3f}", f"{rates['fast'][attribute]:.3f}",
                      f"{rates['fast'][attribute] - rates['fp32'][attribute]:+.3f}")
    console.print(table)
    console.print(f"seconds per picture: fp32 {seconds['fp32']:.2f}, fast path {seconds['fast']:.2f}")
    diffs = {attribute: rates["fast"][attribute] - rates["fp32"][attribute] for attribute in rates["fp32"]}
    print(f"fp32={rates['fp32']['all']:.3f} fast={rates['fast']['all']:.3f} diff={diffs['all']:+.3f} "
          f"max_attribute_diff={max(abs(diffs[key]) for key in diffs if key != 'all'):.3f}")


if __name__ == "__main__":
    main()
