"""Prompt adherence and the attention pointing game of the embedded shapes-world model.

Evaluation prompts come from the shapes world's evaluation stream (never used for training or tuning);
each is generated at the model's default sampler and steps, at the default guidance and at guidance 1
(no guidance), and judged by `diffx.embedded.judge` (see `diffx.embedded.quality`). Targets: colour
>= 95 %, shape >= 85 %, position >= 85 %, pointing >= 80 %, and "all" at guidance 1 at least
`GUIDANCE_GAP` below the default guidance.

A v2 model (shapes-world-2: its config name, or a last training run on the "shapes2" world) is judged on
its own world instead (`diffx.embedded.world_quality`): >= 300 evaluation prompts by group (one object,
2-3 objects), the guidance curve ("all attributes" at w = 1, 2, 3, 5, 7.5, 10, 15), the diversity of
under-specified prompts over 16 seeds and the saturation at each w, the pointing game with noun and colour
maps. `--card` then also writes guidance_curve.png beside MODEL_CARD.md.

Run from the repository root:  OMP_NUM_THREADS=2 python -m benchmarks.embedded_quality [--quick]
`--model` takes a model folder (default: the shipped data/shapes-world-2) or a training folder such as
runs/shapes-world (its latest checkpoints). The last line printed is
`color=<x> shape=<x> position=<x> pointing=<x>` at the default guidance; for a v2 model
`color=<x> shape=<x> position=<x> pointing=<x> gap=<x> diversity_drop=<x>` (gap: "all attributes" at the
default guidance minus at w = 1; diversity_drop: diversity at w = 1 minus at the default).
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
from diffx.embedded.world_measures import GUIDANCE_SCALES
from diffx.embedded.world_quality import (
    GROUPS,
    adherence_rows,
    check_rows,
    curve_rows,
    evaluate_world,
    model_world,
    world_last_line,
    world_targets,
)
from diffx.models.stable_diffusion import StableDiffusion
from diffx.paths import EMBEDDED_MODEL_DIR

QUICK_N = 40
V1_N, V2_N = 200, 300


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=EMBEDDED_MODEL_DIR, help="model folder or training folder")
    parser.add_argument("--n", type=int, default=None, help=f"number of evaluation prompts ({V1_N}; v2: {V2_N})")
    parser.add_argument("--guidance", type=float, default=None, help="guidance to test (default: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="prompt-set seed; prompt i is generated with seed + i")
    parser.add_argument("--out", type=Path, default=None, help="write both results as JSON here")
    parser.add_argument("--quick", action="store_true", help=f"only {QUICK_N} prompts")
    parser.add_argument("--card", action="store_true",
                        help="record the figures in the model folder's MODEL_CARD.md (rewritten from training.json)")
    parser.add_argument("--device", default="cpu", help="cpu (the reported figures), cuda, … or auto")
    parser.add_argument("--guidances", default=",".join(f"{w:g}" for w in GUIDANCE_SCALES),
                        help="v2: the guidance scales of the curve (the model's default is added)")
    parser.add_argument("--open-prompts", type=int, default=16, help="v2: under-specified prompts for diversity")
    parser.add_argument("--seeds", type=int, default=16, help="v2: seeds per under-specified prompt")
    parser.add_argument("--batch", type=int, default=64, help="v2: pictures generated at once")
    parser.add_argument("--steps", type=int, default=None,
                        help="v2: sampling steps (default: the model's, as targets are stated; fewer for smoke tests)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    model = load_for_evaluation(args.model).to(resolve_device(args.device))
    if model_world(model, args.model) == "shapes2":
        main_v2(args, model)
    else:
        main_v1(args, model)


def main_v2(args: argparse.Namespace, model: StableDiffusion) -> None:
    """The v2 evaluation: tables of adherence by group, the guidance curve and its checks; the v2 last line."""
    n = QUICK_N if args.quick else args.n or V2_N
    console = Console()
    with Progress(console=console) as progress:
        task = progress.add_task("guidance curve", total=None)
        result = evaluate_world(model, n, args.seed, [float(w) for w in args.guidances.split(",")],
                                args.open_prompts, args.seeds, args.batch, steps=args.steps,
                                progress=lambda _, done, total: progress.update(task, completed=done, total=total))
    title = (f"{result['model']}: {n} evaluation prompts, {result['sampler']}, {result['steps']} steps, "
             f"guidance {result['guidance']:g}")
    for caption, header, rows in (
            (title, ("attribute", *GROUPS, "target"), adherence_rows(result)),
            (f"guidance curve ({args.open_prompts} open prompts x {args.seeds} seeds for diversity)",
             ("w", "all attributes", GROUPS[0], GROUPS[1], "diversity", "saturation"), curve_rows(result)),
            ("checks", ("check", "figure"), check_rows(result))):
        table = Table(title=caption)
        for column in header:
            table.add_column(column, justify="left" if column in ("attribute", "check") else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    console.print(f"pointing trials: {result['pointing_trials']}; {result['seconds']:.0f} s in all")
    record(args, {**result, "targets_reached": world_targets(result)}, console)
    print(world_last_line(result))


def record(args: argparse.Namespace, scores: dict, console: Console) -> None:
    """Write the scores as JSON (--out) and into the model card (--card), as asked."""
    if args.out:
        args.out.write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {args.out}")
    if args.card:
        console.print(f"wrote {update_model_card(args.model, scores)}")


def main_v1(args: argparse.Namespace, model: StableDiffusion) -> None:
    """The v1 evaluation, as it always was: the default guidance against guidance 1."""
    n = QUICK_N if args.quick else args.n or V1_N
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
    record(args, {**results, "targets_reached": meets_targets(default, unguided)}, console)
    print(last_line(default))


if __name__ == "__main__":
    main()
