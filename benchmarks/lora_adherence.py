"""What a LoRA costs the embedded model elsewhere: adherence on the usual held-out prompts (no trigger word) without
the LoRA, with it at scale 0 and at scale 1 (issue #37: scale 0 within 2 points of the base model; scale 1
measured).

Prompts are shapes world 2's evaluation stream (`world_text.make_eval_prompts(n, 0)`, the 300 that
`benchmarks/embedded_quality.py` judges), prompt i at seed i, at the model's default sampler, steps and guidance;
judged by the world judge (`diffx.embedded.world_judge`): "all" = every attribute named right, then each
attribute alone.
A LoRA at scale 0 adds nothing (the hook returns the layer's own output), so its pictures are compared with the
base model's pixel for pixel as well.

Run from the repository root:  python -m benchmarks.lora_adherence --lora zig.safetensors [--n 300]
(`diffx finetune --concept "world:pink dotted hexagon" --token "<zig>" --out zig.safetensors` trains one.)
The last line printed is `all_base=<x> all_scale0=<x> all_scale1=<x> delta_scale0=<points> delta_scale1=<points>
scale0_identical=<True|False>`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from diffx.embedded.world_quality import GROUPS, generate_pictures, grouped_rates
from diffx.embedded.world_text import make_eval_prompts
from diffx.paths import EMBEDDED_MODEL_DIR
from diffx.weights.load import load_model
from diffx.weights.lora_apply import apply_lora

ATTRIBUTES = ("all", "colour", "fill", "shape", "position", "size", "count", "background")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora", type=Path, required=True, help="the LoRA file (e.g. diffx finetune's)")
    parser.add_argument("--n", type=int, default=300, help="held-out prompts (the usual 300)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(EMBEDDED_MODEL_DIR)
    prompts = make_eval_prompts(args.n, 0)
    seeds = list(range(args.n))
    started = time.perf_counter()
    pictures = {"base": generate_pictures(model, prompts, seeds, batch=args.batch)}
    applied = apply_lora(model, args.lora, scale=0.0)
    pictures["scale0"] = generate_pictures(model, prompts, seeds, batch=args.batch)
    applied.scale = 1.0
    pictures["scale1"] = generate_pictures(model, prompts, seeds, batch=args.batch)
    rates = {name: grouped_rates(prompts, images)[GROUPS[2]] for name, images in pictures.items()}
    for name, rate in rates.items():
        print(f"{name}: " + " ".join(f"{key}={rate.get(key, float('nan')):.3f}" for key in ATTRIBUTES), flush=True)
    identical = all(np.array_equal(a, b) for a, b in zip(pictures["base"], pictures["scale0"], strict=True))
    print(f"n={args.n} seconds={time.perf_counter() - started:.0f} load_1min={os.getloadavg()[0]:.1f}")
    base = rates["base"]["all"]
    print(f"all_base={base:.3f} all_scale0={rates['scale0']['all']:.3f} all_scale1={rates['scale1']['all']:.3f} "
          f"delta_scale0={100 * (rates['scale0']['all'] - base):.1f} "
          f"delta_scale1={100 * (rates['scale1']['all'] - base):.1f} scale0_identical={identical}")


if __name__ == "__main__":
    main()
