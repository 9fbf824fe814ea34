"""Peak memory of loading a full-size SD1.5 (or SDXL, or SD3) checkpoint with diffx, compared with the file size.

Writes a random checkpoint shaped as the preset `--config` (sd15, or sdxl-base: 3.5 G parameters, 6.9 GB in
fp16) (as a Lightning-style `.ckpt` and as `.safetensors`; SD3 as Stability ships it, a `.safetensors` of the
MMDiT, VAE and both CLIPs: `sd3-medium` is `sd3_medium_incl_clips.safetensors`, 2.0 + 0.8 G parameters, 5.6 GB in
fp16; `--depth N` keeps N of its 24 blocks where memory or disk is short; `sd3-tiny` is a 1-block, 64-wide
MMDiT and 1-layer CLIPs beside the real VAE, for a quick check) to a
temporary folder, then loads each with `diffx.weights.load_model` in a fresh process, touches every
weight (so memory-mapped pages really are read) and reports the process's peak resident set size
(`ru_maxrss`). A loader that copies the file into memory would peak near 2x the file size; diffx maps
the file and hands its tensors to the modules, so the peak should stay near 1x plus the interpreter.

    python benchmarks/load_memory.py [--config sd15|sdxl-base|sd3-medium|sd3-tiny] [--depth N]
                                     [--dtype fp32|fp16] [--model-dtype fp32|fp16] [--dir /tmp]

With `--dtype fp16 --model-dtype fp32` (the real 2 GB file loaded for the CPU) each weight is cast,
so the peak is the fp32 model plus the (clean, reclaimable) mapped pages of the fp16 file.

The last line is `peak_rss_mb=<n> baseline_mb=<n> file_mb=<n> ratio=<peak/file>
above_baseline=<(peak - baseline)/file>` for the worse of the formats, the baseline being the child's peak after
its imports, before the load.
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


def sd3_shapes(preset: str, depth: int | None) -> dict[str, torch.Size]:
    """The tensors of Stability's `_incl_clips` file for SD3-medium (`depth` of its blocks) or a tiny SD3."""
    from dataclasses import replace

    from diffx.models.mmdit import MMDiTConfig, sd3_medium
    from diffx.models.sd3 import SD3Config, build_sd3, clip_g, clip_l

    if preset == "sd3-tiny":
        tiny = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 1,
                "projection_dim": 64}
        config = SD3Config(name=preset, mmdit=MMDiTConfig(name="tiny", depth=1, heads=1, pooled_dim=128), t5=None,
                           clip_l=replace(clip_l(), **tiny), clip_g=replace(clip_g(), **tiny))
    else:
        config = SD3Config(name=preset, mmdit=replace(sd3_medium(), depth=depth or sd3_medium().depth), t5=None)
    with torch.device("meta"):
        return {key: t.shape for key, t in build_sd3(config, weights=False).original_state_dict().items()}


def write_checkpoints(folder: Path, dtype: torch.dtype, preset: str, depth: int | None = None) -> list[Path]:
    """A random state dict of the preset's shapes in the original layout, saved as .ckpt and .safetensors (SD3:
    .safetensors only, as Stability ships it)."""
    from safetensors.torch import save_file

    from diffx.models.configs import PRESETS
    from diffx.models.stable_diffusion import build

    if preset.startswith("sd3"):
        shapes = sd3_shapes(preset, depth)
    else:
        with torch.device("meta"):
            shapes = {key: t.shape for key, t in build(PRESETS[preset]()).original_state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state_dict = {key: torch.randn(shape, generator=generator, dtype=dtype) for key, shape in shapes.items()}
    safetensors = folder / f"{preset}-random.safetensors"
    if preset.startswith("sd3"):
        save_file(state_dict, safetensors)
        return [safetensors]
    ckpt = folder / f"{preset}-random.ckpt"
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
    parser.add_argument("--config", choices=("sd15", "sdxl-base", "sd3-medium", "sd3-tiny"), default="sd15",
                        help="the checkpoint's shapes")
    parser.add_argument("--depth", type=int, default=None, help="sd3-medium: keep this many of its 24 blocks")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the file")
    parser.add_argument("--model-dtype", choices=sorted(DTYPES), default=None, help="default: --dtype")
    parser.add_argument("--dir", default=None, help="where to write the temporary checkpoints")
    parser.add_argument("--write", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        paths = write_checkpoints(Path(args.write), DTYPES[args.dtype], args.config, args.depth)
        print(json.dumps([str(p) for p in paths]))
        return
    if args.measure:
        print(json.dumps(measure(Path(args.measure), DTYPES[args.model_dtype or args.dtype])))
        return

    def run_child(*options: str) -> object:
        # Every step runs in its own process: a child's ru_maxrss starts at its parent's size.
        command = [sys.executable, __file__, "--config", args.config, "--dtype", args.dtype, *options]
        if args.depth:
            command += ["--depth", str(args.depth)]
        if args.model_dtype:
            command += ["--model-dtype", args.model_dtype]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        return json.loads(output.strip().splitlines()[-1])

    if args.depth and args.config == "sd3-medium":
        print(f"sd3-medium reduced to {args.depth} of its 24 MMDiT blocks (--depth): the file is smaller than "
              "Stability's, the ratio is what counts")
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
    print(f"peak_rss_mb={worst['peak_rss_mb']:.0f} baseline_mb={worst['baseline_rss_mb']:.0f} "
          f"file_mb={worst['file_mb']:.0f} ratio={worst['peak_rss_mb'] / worst['file_mb']:.2f} "
          f"above_baseline={(worst['peak_rss_mb'] - worst['baseline_rss_mb']) / worst['file_mb']:.2f}")


if __name__ == "__main__":
    main()
