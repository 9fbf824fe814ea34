"""Disk size of an SD1.5 trace with the attention explorer's detail: budget ≤ 300 MB for 50 steps at 512 px
with per-layer maps (`TraceOptions(attention_detail="layers")`); per-head maps only when asked.

Fifty SD1.5 steps do not run in reasonable time on a CPU, and need not: a trace file is its header plus
per-step rows of fixed size, so its size is a + b·S in the step count S. This script runs the real SD1.5
U-Net (its config, random weights, 512 px: a 64×64 latent, 16 cross-attention layers from 64×64 down to
8×8, 8 heads) for 1 and 2 steps with the tracer listening as `diffx attention --heads` records — the default
tensors, every layer's and every head's maps, the 16×16 self-attention maps — saves real trace files
(checked by `load_trace`), with and without the head maps, and extrapolates b = size(2) − size(1),
a = size(1) − b to S = 50. The safetensors header names every tensor once and grows only by the digits
of larger offsets (< 1 kB).

Worst case for the token count: a prompt filling the 77-token window (maps grow with the K tokens kept).

Run from the repository root:  OMP_NUM_THREADS=2 python -m benchmarks.trace_memory
The last line printed is `layers_mb=<x> heads_mb=<x> budget_mb=300 per_step_layers_kb=<x> …`.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from diffx.models.attention import observe_attention
from diffx.models.configs import sd15
from diffx.models.stable_diffusion import build_without_weights
from diffx.models.unet import UNet
from diffx.pipeline.observers import ImageRun
from diffx.pipeline.settings import GenerationSettings, resolve_settings
from diffx.sampling.samplers import StepRecord
from diffx.trace import Tracer, load_trace, save_trace, trace_meta
from diffx.views.attention import explorer_options

BUDGET_MB = 300
STEPS = 50
LONG_PROMPT = " ".join(["a red circle above a small blue square on a green background"] * 8)  # > 77 tokens


def traced_files(unet: UNet, run: ImageRun, meta_model, steps: int, folder: Path) -> dict[str, int]:
    """Run `steps` U-Net evaluations with CFG's batch [uncond; cond] under the explorer's tracer with heads;
    save the trace, and the same trace without its head maps (what "layers" records); their sizes."""
    config = meta_model.config
    side = config.image_size // config.vae.downsample_factor
    tracer = Tracer((side, side), explorer_options(heads=True), num_tokens=run.tokens.num_tokens,
                    num_negative_tokens=run.negative_tokens.num_tokens)
    generator = torch.Generator().manual_seed(0)
    context = torch.randn(2, 77, config.unet.context_dim, generator=generator)
    for index in range(steps):
        x = torch.randn(1, 4, side, side, generator=generator)
        with torch.no_grad(), observe_attention(tracer):
            eps = unet(x.expand(2, -1, -1, -1), torch.tensor(999.0 - index), context)
        tracer.on_guidance(eps[:1], eps[1:])
        tracer.on_step(StepRecord(index=index, num_steps=steps, timestep=999.0 - index, sigma=1.0,
                                  alpha_cumprod=0.5, x=x, state=x, eps_pred=eps[1:], x0_pred=x, x_next=x,
                                  next_sigma=0.0))
    extra = {"final_latent": torch.zeros(4, side, side),
             "image": torch.zeros(config.image_size, config.image_size, 3, dtype=torch.uint8)}
    heads = tracer.finish(run, trace_meta(meta_model, run), extra)
    layers = replace(heads, tensors={key: value for key, value in heads.tensors.items()
                                     if not key.startswith("head_attention.")})
    sizes = {}
    for name, trace in (("layers", layers), ("heads", heads)):
        path = save_trace(trace, folder / f"{name}-{steps}.safetensors")
        load_trace(path)  # a real, valid trace file
        sizes[name] = path.stat().st_size
    return sizes


def main() -> None:
    torch.manual_seed(0)
    start = time.perf_counter()
    meta_model = build_without_weights(sd15())  # the config, tokenizer and identity, no weights
    unet = UNet(sd15().unet).eval()  # the real SD1.5 U-Net, random weights
    settings = resolve_settings(meta_model, GenerationSettings(prompt=LONG_PROMPT, width=512, height=512,
                                                               steps=STEPS, guidance=7.5))
    tokens = meta_model.tokenizer.encode(LONG_PROMPT)
    run = ImageRun(index=0, settings=settings, mode="text2img", tokens=tokens,
                   negative_tokens=meta_model.tokenizer.encode(""), latent_shape=(1, 4, 64, 64))
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        one, two = (traced_files(unet, run, meta_model, steps, Path(folder)) for steps in (1, 2))
        for name in ("layers", "heads"):
            per_step = two[name] - one[name]
            fixed = one[name] - per_step
            results[name] = (fixed + STEPS * per_step, per_step, fixed)
    print(f"SD1.5 512 px, {tokens.num_tokens} prompt tokens kept; measured in {time.perf_counter() - start:.0f} s")
    for name, (total, per_step, fixed) in results.items():
        print(f"{name:>6}: {per_step / 1e3:,.0f} kB per step + {fixed / 1e3:,.0f} kB fixed → {STEPS} steps "
              f"{total / 1e6:.1f} MB (budget {BUDGET_MB} MB for per-layer maps)")
    layers, heads = results["layers"], results["heads"]
    print(f"layers_mb={layers[0] / 1e6:.1f} heads_mb={heads[0] / 1e6:.1f} budget_mb={BUDGET_MB} "
          f"per_step_layers_kb={layers[1] / 1e3:.0f} per_step_heads_kb={heads[1] / 1e3:.0f} "
          f"tokens={tokens.num_tokens} within_budget={layers[0] / 1e6 <= BUDGET_MB}")


if __name__ == "__main__":
    main()
