"""How each embedded model holds up with fewer steps: adherence ("every attribute right") at several step counts,
each model at its own sampler and default guidance — shapes-world-2 (a U-Net v-model on a diffusion schedule,
DDIM) against shapes-world-flow (an MMDiT trained with rectified flow, Euler) on the same world (issue #36).

Prompts are shapes world 2's evaluation stream (`world_text.make_eval_prompts(n, 0)`, the 300 that
`benchmarks/embedded_quality.py` judges), prompt i at seed i; judged by the world judge. Reported per model and
step count: the one-object prompts' and all prompts' "all" (every attribute named right).

Run from the repository root:
    python -m benchmarks.steps_by_model --models shapes-world-2,shapes-world-flow --steps 4,8,25 [--n 300]
The last line printed is `<model>@<steps>=<one-object all> …` for every model and step count.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from rich.console import Console
from rich.table import Table

from diffx.devices import resolve_device
from diffx.embedded.world_quality import GROUPS, generate_pictures, grouped_rates
from diffx.embedded.world_text import make_eval_prompts
from diffx.pipeline.settings import GenerationSettings
from diffx.weights.load import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="shapes-world-2,shapes-world-flow", help="model names or folders")
    parser.add_argument("--steps", default="4,8,25", help="comma-separated step counts")
    parser.add_argument("--n", type=int, default=300, help="evaluation prompts")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu (the reported figures), cuda, … or auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prompts, seeds = make_eval_prompts(args.n, 0), list(range(args.n))
    steps = [int(part) for part in args.steps.split(",")]
    table = Table(title=f"every attribute right, {args.n} evaluation prompts (prompt i at seed i)")
    for column in ("model", "sampler", "steps", GROUPS[0], GROUPS[2], "seconds"):
        table.add_column(column)
    last = []
    for name in args.models.split(","):
        model = load_model(name).to(resolve_device(args.device))
        sampler = GenerationSettings().resolved(model).sampler
        for count in steps:
            started = time.perf_counter()
            rates = grouped_rates(prompts, generate_pictures(model, prompts, seeds, batch=args.batch, steps=count))
            one, every = rates[GROUPS[0]]["all"], rates[GROUPS[2]]["all"]
            table.add_row(model.config.name, sampler, str(count), f"{one:.3f}", f"{every:.3f}",
                          f"{time.perf_counter() - started:.0f}")
            last.append(f"{model.config.name}@{count}={one:.3f}")
    Console().print(table)
    print(f"load_1min={os.getloadavg()[0]:.1f}")
    print(" ".join(last))


if __name__ == "__main__":
    main()
