"""Prompt adherence and the attention pointing game of the embedded shapes-world model.

Evaluation prompts come from the shapes world's evaluation stream (never used for training or tuning);
each is generated at the model's default sampler and steps, at the default guidance and at guidance 1
(no guidance), and judged by `diffx.embedded.judge` (see `diffx.embedded.quality`). Targets: colour
>= 95 %, shape >= 85 %, position >= 85 %, pointing >= 80 %, and "all" at guidance 1 at least
`GUIDANCE_GAP` below the default guidance.

Run from the repository root:  OMP_NUM_THREADS=2 python -m benchmarks.embedded_quality [--quick]
`--model` takes a model folder (default: the shipped data/shapes-world) or a training folder such as
runs/shapes-world (its latest checkpoints). The last line printed is
`color=<x> shape=<x> position=<x> pointing=<x>` at the default guidance.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from diffx.devices import resolve_device
from diffx.embedded.card import update_model_card
from diffx.embedded.quality import evaluate, last_line, load_for_evaluation, meets_targets, summary_rows
from diffx.embedded.shapes import make_eval_prompts
from diffx.paths import EMBEDDED_MODEL_DIR

QUICK_N = 40


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=EMBEDDED_MODEL_DIR, help="model folder or training folder")
    parser.add_argument("--n", type=int, default=200, help="number of evaluation prompts")
    parser.add_argument("--guidance", type=float, default=None, help="guidance to test (default: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="prompt-set seed; prompt i is generated with seed + i")
    parser.add_argument("--out", type=Path, default=None, help="write both results as JSON here")
    parser.add_argument("--quick", action="store_true", help=f"only {QUICK_N} prompts")
    parser.add_argument("--card", action="store_true",
                        help="record the figures in the model folder's MODEL_CARD.md (rewritten from training.json)")
    parser.add_argument("--device", default="cpu", help="cpu (the reported figures), cuda, … or auto")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    n = QUICK_N if args.quick else args.n
    model = load_for_evaluation(args.model).to(resolve_device(args.device))
    prompts = make_eval_prompts(n, args.seed)
    console = Console()
    results = {}
    with Progress(console=console) as progress:
        for name, guidance in (("default", args.guidance), ("unguided", 1.0)):
            label = "default guidance" if guidance is None else f"guidance {guidance:g}"
            task = progress.add_task(label, total=n)
            results[name] = evaluate(model, prompts, guidance, args.seed,
                                     progress=lambda done, task=task: progress.update(task, completed=done))
    default, unguided = results["default"], results["unguided"]

    table = Table(title=f"{default['model']}: {n} evaluation prompts, {default['sampler']}, {default['steps']} steps")
    for column, justify in (("attribute", "left"), (f"guidance {default['guidance']:g}", "right"),
                            ("guidance 1", "right"), ("target", "right")):
        table.add_column(column, justify=justify)
    for row in summary_rows(default, unguided):
        table.add_row(*row)
    console.print(table)
    console.print(f"pointing trials: {default['pointing_trials']} (guidance 1: {unguided['pointing_trials']}); "
                  f"{default['seconds_per_image']:.2f} s per image at the default guidance")
    scores = {**results, "targets_reached": meets_targets(default, unguided)}
    if args.out:
        args.out.write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {args.out}")
    if args.card:
        console.print(f"wrote {update_model_card(args.model, scores)}")
    print(last_line(default))


if __name__ == "__main__":
    main()
