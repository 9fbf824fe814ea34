"""Choose a v2 embedded model's default guidance on validation prompts, as a model's author would.

"All attributes" (the v2 judge, `diffx.embedded.world_judge`) is measured at each guidance scale on
validation prompts: the evaluation stream at prompt-set seed 1000, with every prompt that is also among
the 300 a card reports (prompt-set seed 0) left out (`world_quality.validation_prompts`). The default is the
scale where it peaks. The reported figures (`benchmarks/embedded_quality.py`) are then measured on prompts
no setting was chosen on. With `--write`, the choice becomes the model folder's default (config.json) and
the tuning is kept beside it (guidance_tuning.json), where the card shows it.

Run from the repository root:  OMP_NUM_THREADS=2 python -m benchmarks.tune_guidance --model runs/…/model
The last line printed is `guidance=<chosen w> all=<its rate> n=<prompts>`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from diffx.devices import resolve_device
from diffx.embedded.export import record_default_guidance
from diffx.embedded.quality import load_for_evaluation
from diffx.embedded.world_quality import VALIDATION_SEED, model_world, tune_guidance
from diffx.paths import EMBEDDED_MODEL_DIR

SCALES = "1,2,3,4,5,7.5,10"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=EMBEDDED_MODEL_DIR, help="a v2 model folder")
    parser.add_argument("--n", type=int, default=128, help="validation prompts")
    parser.add_argument("--scales", default=SCALES, help="guidance scales to try, comma-separated")
    parser.add_argument("--seed", type=int, default=VALIDATION_SEED, help="prompt-set seed of the validation prompts")
    parser.add_argument("--batch", type=int, default=64, help="pictures generated at once")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, … or auto")
    parser.add_argument("--write", action="store_true",
                        help="make the chosen scale the model folder's default guidance (config.json)")
    args = parser.parse_args()
    if args.seed == 0:
        parser.error("--seed 0 is the reported prompt set; tune on another (e.g. the default, 1000)")
    model = load_for_evaluation(args.model).to(resolve_device(args.device))
    if model_world(model, args.model) != "shapes2":
        parser.error(f"{args.model} is not a v2 (shapes2) model; v1 models keep their default guidance")
    tuning = tune_guidance(model, [float(w) for w in args.scales.split(",")], args.n, args.seed, args.batch,
                           args.steps)
    console = Console()
    table = Table(title=f"{tuning['n']} validation prompts, {tuning['sampler']}, {tuning['steps']} steps")
    table.add_column("w", justify="right")
    table.add_column("all attributes", justify="right")
    for w, rate in zip(tuning["scales"], tuning["all"], strict=True):
        table.add_row(f"{w:g}" + (" (chosen)" if w == tuning["chosen"] else ""), f"{rate:.3f}")
    console.print(table)
    if args.write:
        record_default_guidance(args.model, tuning)
        console.print(f"wrote {args.model / 'config.json'} (default_guidance {tuning['chosen']:g})")
    best = tuning["all"][tuning["scales"].index(tuning["chosen"])]
    print(f"guidance={tuning['chosen']:g} all={best:.3f} n={tuning['n']}")


if __name__ == "__main__":
    main()
