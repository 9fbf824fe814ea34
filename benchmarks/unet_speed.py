"""U-Net forward speed: diffx vs diffusers with the same weights, SD1.5 config, CPU.

Batch 2 (the cond/uncond pair of classifier-free guidance), 32x32 latent (a 256x256 image), 77x768 context.
The two models run alternately in one process so that machine load affects both alike; the median of
several timed runs follows a warmup (the minimum is printed too: on a shared machine it is the best
estimate of the unloaded cost). Then diffx in bf16 against diffusers in fp32: speed and error.

Run from the repository root:  python -m benchmarks.unet_speed
The last line printed is `ratio=<diffx fp32 time / diffusers fp32 time>`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from diffusers import UNet2DConditionModel

from diffx.diffusers_layout import rename_key, unet_rename_rules
from diffx.models.configs import sd15
from diffx.models.unet import UNet

WARMUP = 2
REPEATS = 7


def diffusers_unet(ours: UNet) -> UNet2DConditionModel:
    """diffusers' SD1.5 U-Net holding the very tensors of `ours` (no second copy), names mapped by diffx's rules.

    diffusers' default `UNet2DConditionModel` is SD1.5's but for the text context width (1280 there, 768 here).
    """
    with torch.device("meta"):
        theirs = UNet2DConditionModel(sample_size=64, cross_attention_dim=ours.config.context_dim)
    rules, weights = unet_rename_rules(ours.config), ours.state_dict()
    theirs.load_state_dict({key: weights[rename_key(key, rules)] for key in theirs.state_dict()}, strict=True,
                           assign=True)
    return theirs.eval()


def seconds(forward: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    forward()
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model_config = sd15()
    ours = UNet(model_config.unet).eval()
    theirs = diffusers_unet(ours)

    x = torch.randn(2, 4, 32, 32)
    timesteps = torch.tensor([999, 999])
    context = torch.randn(2, 77, 768)

    def run_ours() -> torch.Tensor:
        return ours(x, timesteps, context)

    def run_theirs() -> torch.Tensor:
        return theirs(x, timesteps, encoder_hidden_states=context).sample

    times: dict[str, list[float]] = {"diffx fp32": [], "diffusers fp32": []}
    with torch.inference_mode():
        for i in range(WARMUP + REPEATS):
            for name, forward in (("diffx fp32", run_ours), ("diffusers fp32", run_theirs)):
                elapsed = seconds(forward)
                if i >= WARMUP:
                    times[name].append(elapsed)
        eps_theirs = run_theirs()
        fp32_diff = (run_ours() - eps_theirs).abs().max().item()

        # bf16: cast our copy in place (diffusers keeps the fp32 tensors) and the inputs with it.
        ours.to(torch.bfloat16)
        x, context = x.bfloat16(), context.bfloat16()
        times["diffx bf16"] = [seconds(run_ours) for _ in range(WARMUP + REPEATS)][WARMUP:]
        eps_bf16 = run_ours().float()

    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"{name:15s} median {median:6.2f} s   min {min(times[name]):6.2f} s   (runs: {runs})")
    print(f"fp32 max abs diff diffx vs diffusers: {fp32_diff:.3g}")
    relative_error = ((eps_bf16 - eps_theirs).norm() / eps_theirs.norm()).item()
    print(f"diffx bf16 vs diffusers fp32: speedup {medians['diffusers fp32'] / medians['diffx bf16']:.2f}x, "
          f"relative error {relative_error:.3g}")
    print(f"ratio={medians['diffx fp32'] / medians['diffusers fp32']:.3f}")


if __name__ == "__main__":
    main()
