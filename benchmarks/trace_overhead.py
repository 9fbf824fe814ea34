"""What tracing costs: one generation with the full default trace vs the same generation untraced.

(a) SD1.5 widths with random weights, 256x256 px (a 32x32 latent), 3 DDIM steps, guidance 7.5;
(b) the embedded shapes-world model with its defaults (data/shapes-world-2).
Traced and untraced runs alternate in one process so that machine load hits both alike; after a warmup
the median of REPEATS runs each is compared. Also printed: the size a 50-step 512 px SD1.5 trace would
have, from the per-step bytes of case (a)'s trace scaled to the 64x64 latent.

With `--config sd3`: (c) an SD3-shaped model with random weights instead — the MMDiT at SD3-medium's width
(1536, 24 heads of 64) with 4 of its 24 blocks, CLIP-L and bigG at their widths with 2 layers each, no T5 (its
256 context rows are zeros, so the joint attention is as long as SD3's: 77 + 256 text tokens), 256x256 px
(256 image tokens), 3 Euler steps, guidance 7; the default trace records the joint quadrants too.

Run from the repository root:  python -m benchmarks.trace_overhead [--config sd3]
The last line printed is `ratio=<traced / untraced median>` of case (a), or (c) with --config sd3.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from diffx.models.configs import sd15, shapes_world
from diffx.models.mmdit import sd3_medium
from diffx.models.sd3 import SD3Config, StableDiffusion3, build_sd3, clip_g, clip_l
from diffx.models.stable_diffusion import StableDiffusion, build
from diffx.paths import EMBEDDED_MODEL_DIR
from diffx.pipeline.generation import generate
from diffx.pipeline.settings import GenerationSettings
from diffx.trace import Trace, generate_traced
from diffx.weights.load import load_model

WARMUP = 1
REPEATS = 5
PROMPT = "a red cube on a blue floor"


def embedded_model() -> StableDiffusion:
    if EMBEDDED_MODEL_DIR.is_dir() and any(EMBEDDED_MODEL_DIR.iterdir()):
        return load_model(EMBEDDED_MODEL_DIR)
    print(f"(no model in {EMBEDDED_MODEL_DIR}: shapes-world with random weights)")
    return build(shapes_world()).eval()


def compare(name: str, model: StableDiffusion, settings: GenerationSettings) -> tuple[float, Trace]:
    """Median traced and untraced seconds, printed; returns their ratio and the last trace."""
    times: dict[str, list[float]] = {"untraced": [], "traced": []}
    trace = None
    for i in range(WARMUP + REPEATS):
        for kind in times:
            start = time.perf_counter()
            if kind == "traced":
                trace = generate_traced(model, settings).traces[0]
            else:
                generate(model, settings)
            if i >= WARMUP:
                times[kind].append(time.perf_counter() - start)
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    for kind, values in times.items():
        runs = ", ".join(f"{t:.2f}" for t in values)
        print(f"{name} {kind:9s} median {medians[kind]:7.3f} s   (runs: {runs})")
    ratio = medians["traced"] / medians["untraced"]
    print(f"{name} traced / untraced: {ratio:.3f}")
    return ratio, trace


def sd15_trace_megabytes(trace: Trace, latent_side: int, steps: int = 50) -> float:
    """A `steps`-step 512 px SD1.5 trace: per-step tensors scale with the latent area (64² at 512 px)."""
    config = sd15()
    scale = (config.image_size // config.vae.downsample_factor / latent_side) ** 2
    image_bytes = config.image_size**2 * 3  # uint8
    latent_bytes = trace.tensors["final_latent"].numel() * 4 * scale
    return (steps * trace.bytes_per_step() * scale + image_bytes + latent_bytes) / 1e6


def sd3_shaped() -> StableDiffusion3:
    """Case (c)'s model: SD3-medium's widths, reduced depth, random weights (module docstring)."""
    torch.manual_seed(0)
    short = {"num_hidden_layers": 2}
    config = SD3Config(name="sd3-shaped", mmdit=replace(sd3_medium(), depth=4), clip_l=replace(clip_l(), **short),
                       clip_g=replace(clip_g(), **short), t5=None)
    return build_sd3(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("sd15", "sd3"), default="sd15")
    if parser.parse_args().config == "sd3":
        ratio, _ = compare("(c) SD3-shaped 256px", sd3_shaped(),
                           GenerationSettings(prompt=PROMPT, steps=3, guidance=7.0, height=256, width=256))
        print(f"ratio={ratio:.3f}")
        return
    torch.manual_seed(0)
    sd = build(sd15()).eval()
    ratio_sd, trace = compare("(a) SD1.5 256px", sd, GenerationSettings(prompt=PROMPT, steps=3, guidance=7.5,
                                                                         sampler="ddim", height=256, width=256))
    megabytes = sd15_trace_megabytes(trace, latent_side=32)
    del sd
    compare("(b) shapes-world", embedded_model(), GenerationSettings(prompt="a red circle above a blue square"))
    print(f"50-step 512 px SD1.5 trace ({trace.tokens.num_tokens} tokens, default record): "
          f"{megabytes:.1f} MB")
    print(f"ratio={ratio_sd:.3f}")


if __name__ == "__main__":
    main()
