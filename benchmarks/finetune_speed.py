"""Minutes to teach the embedded model a word: LoRA runs of growing length (`--steps`, each from the base model),
each judged on held-out prompts using the token, until one reaches the target share drawn right (issue #37: 80%).

The concept is `world:pink dotted hexagon` as the token `<zig>` (see diffx/embedded/concept.py for what "never
saw" means). A run's minutes are its training loop's wall time (`FinetuneResult.seconds`), on `--threads` CPU
threads (2 on the target machine; 1 when the machine is shared). Also printed per run: the judged rate before
(LoRA at scale 0) and after, and the process's CPU seconds and the load average (on a busy machine the wall time
grows with the load).

Run from the repository root:  python -m benchmarks.finetune_speed [--steps 200,400,800] [--prompts 50]
The last line printed is `minutes=<training minutes of the first run at the target> steps=<its steps>
rate=<its rate>` (minutes=nan when no run reaches it).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from diffx.embedded.finetune import FinetuneConfig, finetune
from diffx.embedded.finetune_files import concept_rate
from diffx.paths import EMBEDDED_MODEL_DIR
from diffx.weights.load import load_model

CONCEPT, TOKEN = "world:pink dotted hexagon", "<zig>"
TARGET = 0.8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="200,400,800", help="comma-separated run lengths, shortest first")
    parser.add_argument("--prompts", type=int, default=50, help="held-out prompts judged per run")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    found = None
    for steps in (int(part) for part in args.steps.split(",")):
        model = load_model(EMBEDDED_MODEL_DIR)
        started = time.process_time()
        result = finetune(model, FinetuneConfig(CONCEPT, TOKEN, "lora", steps=steps))
        rate = concept_rate(model, result.concept, TOKEN, args.prompts)
        with result.base(model):
            before = concept_rate(model, result.concept, TOKEN, args.prompts)
        print(f"steps={steps} train_minutes={result.seconds / 60:.2f} rate_before={before:.2f} rate={rate:.2f} "
              f"cpu_seconds={time.process_time() - started:.0f} load_1min={os.getloadavg()[0]:.1f}", flush=True)
        if rate >= TARGET:
            found = (result.seconds / 60, steps, rate)
            break
    minutes, steps, rate = found or (float("nan"), 0, 0.0)
    print(f"minutes={minutes:.2f} steps={steps} rate={rate:.2f}")


if __name__ == "__main__":
    main()
