"""Peak memory of loading a full-size SD1.5 (or SDXL) checkpoint with diffx, compared with the file size.

Writes a random checkpoint shaped as the preset `--config` (sd15, or sdxl-base: 3.5 G parameters, 6.9 GB in
fp16) (as a Lightning-style `.ckpt` and as `.safetensors`) to a
temporary folder, then loads each with `diffx.weights.load_model` in a fresh process, touches every
weight (so memory-mapped pages really are read) and reports the process's peak resident set size
(`ru_maxrss`). A loader that copies the file into memory would peak near 2x the file size; diffx maps
the file and hands its tensors to the modules, so the peak should stay near 1x plus the interpreter.

    python benchmarks/load_memory.py [--config sd15|sdxl-base] [--dtype fp32|fp16] [--model-dtype fp32|fp16]
                                     [--dir /tmp]

With `--dtype fp16 --model-dtype fp32` (the real 2 GB file loaded for the CPU) each weight is cast,
so the peak is the fp32 model plus the (clean, reclaimable) mapped pages of the fp16 file.

The last line is `peak_rss_mb=<n> file_mb=<n> ratio=<peak/file>` for the worse of the two formats.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


def write_checkpoints(folder: Path, dtype: torch.dtype, preset: str) -> list[Path]:
    """A random state dict of the preset's shapes in the original layout, saved as .ckpt and .safetensors."""
    from safetensors.torch import save_file

    from diffx.models.configs import PRESETS
    from diffx.models.stable_diffusion import build

    with torch.device("meta"):
        shapes = {key: t.shape for key, t in build(PRESETS[preset]()).original_state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state_dict = {key: torch.randn(shape, generator=generator, dtype=dtype) for key, shape in shapes.items()}
    ckpt, safetensors = folder / f"{preset}-random.ckpt", folder / f"{preset}-random.safetensors"
    torch.save({"state_dict": state_dict, "global_step": 1}, ckpt)
    save_file(state_dict, safetensors)
    return [ckpt, safetensors]


def measure(path: Path, dtype: torch.dtype) -> dict:
    """Run in a fresh process: load, touch every weight, report timings and peak RSS."""
    from diffx.weights.load import load_model

    baseline = peak_rss_mb()
    start = time.perf_counter()
    model = load_model(path, dtype=dtype)
    load_seconds = time.perf_counter() - start
    after_load = peak_rss_mb()
    checksum = sum(p.float().sum().item() for module in model.modules().values() for p in module.parameters())
    return {
        "file": path.name, "file_mb": path.stat().st_size / 2**20, "baseline_rss_mb": baseline,
        "rss_after_load_mb": after_load, "peak_rss_mb": peak_rss_mb(), "load_s": load_seconds,
        "parameters": model.num_parameters(), "checksum": checksum,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("sd15", "sdxl-base"), default="sd15", help="the checkpoint's shapes")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the file")
    parser.add_argument("--model-dtype", choices=sorted(DTYPES), default=None, help="default: --dtype")
    parser.add_argument("--dir", default=None, help="where to write the temporary checkpoints")
    parser.add_argument("--write", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        print(json.dumps([str(p) for p in write_checkpoints(Path(args.write), DTYPES[args.dtype], args.config)]))
        return
    if args.measure:
        print(json.dumps(measure(Path(args.measure), DTYPES[args.model_dtype or args.dtype])))
        return

    def run_child(*options: str) -> object:
        # Every step runs in its own process: a child's ru_maxrss starts at its parent's size.
        command = [sys.executable, __file__, "--config", args.config, "--dtype", args.dtype, *options]
        if args.model_dtype:
            command += ["--model-dtype", args.model_dtype]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        return json.loads(output.strip().splitlines()[-1])

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        start = time.perf_counter()
        paths = [Path(p) for p in run_child("--write", folder)]
        print(f"wrote {', '.join(p.name for p in paths)} in {time.perf_counter() - start:.0f} s")
        results = []
        for path in paths:
            result = run_child("--measure", str(path))
            results.append(result)
            print(
                f"{result['file']}: load {result['load_s']:.1f} s, "
                f"rss after import {result['baseline_rss_mb']:.0f} MB, "
                f"after load {result['rss_after_load_mb']:.0f} MB, after touching all weights "
                f"{result['peak_rss_mb']:.0f} MB, file {result['file_mb']:.0f} MB, "
                f"{result['parameters']:,} parameters"
            )
    worst = max(results, key=lambda r: r["peak_rss_mb"] / r["file_mb"])
    print(f"peak_rss_mb={worst['peak_rss_mb']:.0f} file_mb={worst['file_mb']:.0f} "
          f"ratio={worst['peak_rss_mb'] / worst['file_mb']:.2f}")


if __name__ == "__main__":
    main()
