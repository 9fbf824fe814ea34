"""A whole picture on the CPU: `diffx denoise` on the fast path vs diffusers' StableDiffusionPipeline in fp32.

SD1.5 at 512 px, 25 DDIM steps, guidance 7.5, with random weights (PyTorch's default initialisation, seed 0)
written once as an fp16 .safetensors file, as the real v1-5 file is. diffx runs as a user runs it:
`python -m diffx denoise --model <file> --dtype auto ...` in a fresh process, timed from start to exit:
loading, the prompt, 25 U-Net steps (the CFG pair as one batch of 2), x_t and x̂0 previews at every step,
the VAE decode and the pictures written. `--dtype auto` picks the bf16 fast path for a file this size on a CPU
with native bf16 (`diffx models` says whether this one has it). diffusers runs in this process on the same
tensors in fp32, and only its `pipe(...)` call is timed, not its loading: the ratio is conservative.

Run from the repository root:  python -m benchmarks.denoise_speed [--dir /tmp]
The last line is `ratio=<diffx denoise wall time / diffusers pipe time> diffx_s=<…> diffusers_s=<…>`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler
from safetensors.torch import save_file

from diffx.devices import cpu_description
from diffx.models.configs import sd15
from diffx.models.stable_diffusion import build
from tests.models.tokenizer_files import write_vocab_folder  # the test suite's diffusers witnesses, reused
from tests.pipeline.test_generation import SD15_SCHEDULER, diffusers_pipeline

PROMPT = "a photograph of an astronaut riding a horse"
STEPS, GUIDANCE, SIZE, THREADS = 25, 7.5, 512, 2


def run_diffx(model_file: Path, out: Path) -> float:
    """Wall-clock seconds of `diffx denoise` in a fresh process, from start to exit."""
    command = [sys.executable, "-m", "diffx", "denoise", "--model", str(model_file), "--dtype", "auto",
               "--prompt", PROMPT, "--steps", str(STEPS), "--guidance", str(GUIDANCE), "--size", str(SIZE),
               "--sampler", "ddim", "--spacing", "leading", "--seed", "0", "--out", str(out), "--force"]
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})
    elapsed = time.perf_counter() - start
    print(completed.stdout.strip())
    if completed.returncode != 0:
        sys.exit(f"diffx denoise failed with exit status {completed.returncode}: {completed.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write the 1.7 GB checkpoint (a temp folder)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    print(cpu_description())
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        folder = Path(folder)
        torch.manual_seed(0)
        model = build(sd15()).eval()
        model_file = folder / "sd15-random.safetensors"
        save_file({key: tensor.half().contiguous() for key, tensor in model.original_state_dict().items()},
                  model_file)
        print(f"wrote {model_file.stat().st_size / 1e9:.2f} GB")

        diffx_seconds = run_diffx(model_file, folder / "denoise.png")
        print(f"diffx denoise (--dtype auto), from process start to exit: {diffx_seconds:.1f} s")

        pipe = diffusers_pipeline(model, write_vocab_folder(folder / "tokenizer"))
        pipe.scheduler = DDIMScheduler.from_config(SD15_SCHEDULER)
        with torch.inference_mode():
            start = time.perf_counter()
            pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=SIZE, width=SIZE,
                 generator=torch.Generator().manual_seed(0), output_type="np")
            diffusers_seconds = time.perf_counter() - start
        print(f"diffusers StableDiffusionPipeline fp32, the pipe(...) call alone: {diffusers_seconds:.1f} s")
    print(f"ratio={diffx_seconds / diffusers_seconds:.3f} diffx_s={diffx_seconds:.1f} "
          f"diffusers_s={diffusers_seconds:.1f}")


if __name__ == "__main__":
    main()
