"""U-Net forward speed: diffx (fp32 and the CPU fast path) vs diffusers fp32 with the same weights, SD1.5, CPU.

Batch 2 (the cond/uncond pair of classifier-free guidance), 77x768 context, at a 32x32 latent (a 256x256
image) and a 64x64 one (512x512). The three models run alternately in one process so that machine load
affects them alike; after a warmup, the minimum (on a shared machine the best estimate of the unloaded cost)
and the median of the timed runs are printed. The fast path (`diffx.models.fast_cpu`: bf16 weights and
activations, channels-last convolutions) is compared with diffusers fp32 for speed and for the relative
error of ε̂, |ε̂_fast - ε̂_fp32| / |ε̂_fp32|.

Achieved GFLOP/s (FLOPs of the convolutions, linear layers and attention matmuls, counted once on the meta
device, divided by the minimum time) are set against this machine's matmul peak measured in the same run:
a 2048x2048 matmul in fp32 and in bf16 at the same thread count.

Attention's share sets a floor under the fast path: on a CPU the scaled-dot-product kernels are bound by
their exponentials, not by matmuls, and run about as fast in bf16 as in fp32 (measured here: 254 ms fp32,
268 ms bf16 for one 4,096-token self-attention of SD1.5's first level). The profiler's attention seconds in
both precisions are printed, and with them Amdahl's estimate of the best fast_ratio at that size: attention
as fast as it is now plus all the rest of diffusers' time divided by the measured bf16/fp32 matmul peak ratio
(not a strict floor: diffusers fp32 does not run at the fp32 peak either).

Run from the repository root:  python -m benchmarks.unet_speed
The last line printed is `ratio=<diffx fp32 / diffusers fp32> fast_ratio=<diffx fast / diffusers fp32>`, 32x32,
both from the minimum times.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch
from diffusers import UNet2DConditionModel
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from diffx.devices import cpu_description
from diffx.models.configs import sd15
from diffx.models.fast_cpu import to_fast_path
from diffx.models.unet import UNet
from diffx.weights.diffusers_layout import rename_key, unet_rename_rules

THREADS = 2
WARMUP = 2
REPEATS = 5
SIZES = (32, 64)
M = TypeVar("M", bound=nn.Module)


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


def seconds(forward: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    forward()
    return time.perf_counter() - start


def race(runs: dict[str, Callable[[], object]], warmup: int = WARMUP, repeats: int = REPEATS
         ) -> dict[str, list[float]]:
    """Time every run `repeats` times after `warmup` untimed rounds, interleaved: round i runs each once."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(warmup + repeats):
        for name, forward in runs.items():
            elapsed = seconds(forward)
            if i >= warmup:
                times[name].append(elapsed)
    return times


def print_times(times: dict[str, list[float]], gflop: float | None = None,
                peaks: dict[torch.dtype, float] | None = None) -> None:
    """One line per run: median, min, every run; with `gflop` and `peaks`, GFLOP/s at the min and % of peak."""
    for name, values in times.items():
        line = f"{name:22s} median {statistics.median(values):6.2f} s   min {min(values):6.2f} s"
        if gflop is not None and peaks is not None:
            achieved = gflop / min(values)
            dtype, label = (torch.float32, "fp32") if "fp32" in name else (torch.bfloat16, "bf16")
            line += f"   {achieved:6.0f} GFLOP/s = {achieved / peaks[dtype]:4.0%} of the {label} peak"
        print(f"{line}   (runs: {', '.join(f'{t:.2f}' for t in values)})")


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 8) -> float:
    """GFLOP/s of the best of `repeats` n x n matmuls in `dtype` (2 n^3 FLOPs each)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    best = min(seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def measured_peaks() -> dict[torch.dtype, float]:
    """This run's fp32 and bf16 matmul peaks, printed (measured again after each race; the best counts)."""
    peaks = {dtype: matmul_peak(dtype) for dtype in (torch.float32, torch.bfloat16)}
    print(f"matmul peak ({THREADS} threads, 2048^2): fp32 {peaks[torch.float32]:.0f} GFLOP/s, "
          f"bf16 {peaks[torch.bfloat16]:.0f} GFLOP/s ({peaks[torch.bfloat16] / peaks[torch.float32]:.1f}x)")
    return peaks


def best_peaks(peaks: dict[torch.dtype, float]) -> dict[torch.dtype, float]:
    """Measure the peaks again (after a race the machine may be quieter) and keep the better of each."""
    again = measured_peaks()
    return {dtype: max(peak, again[dtype]) for dtype, peak in peaks.items()}


def forward_gflop(build: Callable[[], nn.Module], forward: Callable[[nn.Module], object]) -> float:
    """GFLOP of one `forward(build())`, counted on the meta device (no arithmetic runs), attention included."""
    with torch.device("meta"):
        module = build()
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH), torch.device("meta"):
        forward(module)  # the math backend spells attention as matmuls, which the counter sees
    return counter.get_total_flops() / 1e9


def attention_seconds(forward: Callable[[], object]) -> float:
    """Seconds one call of `forward` spends in the scaled-dot-product attention kernels (torch.profiler)."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        forward()
    return sum(event.self_cpu_time_total for event in profiler.key_averages()
               if "scaled_dot_product" in event.key) / 1e6


def print_attention_floor(runs: dict[str, Callable[[], object]], times: dict[str, list[float]],
                          peaks: dict[torch.dtype, float]) -> None:
    """The attention kernels' seconds in fp32 and on the fast path, and Amdahl's estimate of the best fast_ratio."""
    fp32, fast = attention_seconds(runs["diffx fp32"]), attention_seconds(runs["diffx fast (bf16, CL)"])
    reference = min(times["diffusers fp32"])
    speedup = peaks[torch.bfloat16] / peaks[torch.float32]
    amdahl = (fast + (reference - fp32) / speedup) / reference
    print(f"attention kernels: {fp32:.2f} s in fp32 ({fp32 / reference:.0%} of diffusers' time), "
          f"{fast:.2f} s on the fast path; all else {speedup:.1f}x faster would give fast_ratio {amdahl:.3f}")


def relative_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    return ((estimate.float() - reference).norm() / reference.norm()).item()


def measure_size(ours: UNet, theirs: UNet2DConditionModel, fast: UNet, size: int,
                 peaks: dict[torch.dtype, float]) -> dict[str, list[float]]:
    """Race the three U-Nets at one latent size; print the times and the fast path's error; return the times."""
    x, timesteps, context = torch.randn(2, 4, size, size), torch.tensor([999, 999]), torch.randn(2, 77, 768)
    runs = {
        "diffx fp32": lambda: ours(x, timesteps, context),
        "diffusers fp32": lambda: theirs(x, timesteps, encoder_hidden_states=context).sample,
        "diffx fast (bf16, CL)": lambda: fast(x, timesteps, context),
    }
    times = race(runs)
    peaks.update(best_peaks(peaks))
    gflop = forward_gflop(lambda: UNet(ours.config), lambda unet: unet(
        x.to("meta"), timesteps.to("meta"), context.to("meta")))
    print(f"-- {size}x{size} latent, batch 2: {gflop:.0f} GFLOP per forward")
    print_times(times, gflop, peaks)
    print_attention_floor(runs, times, peaks)
    eps_theirs = runs["diffusers fp32"]()
    fp32_diff = (runs["diffx fp32"]() - eps_theirs).abs().max().item()
    error = relative_error(runs["diffx fast (bf16, CL)"](), eps_theirs)
    print(f"fp32 max abs diff diffx vs diffusers: {fp32_diff:.3g}; fast path ε̂ relative error {error:.3%}")
    print(ratio_line(times, statistics.median, f"{size}x{size} median: "))
    print(ratio_line(times, min, f"{size}x{size} min:    "))
    return times


def three_models(build: Callable[[], M], to_diffusers: Callable[[M], nn.Module]) -> tuple[M, nn.Module, M]:
    """Set the threads and seed, print the CPU line; diffx fp32, diffusers on the same tensors, a fast-path copy."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    print(cpu_description())
    ours = build().eval()
    return ours, to_diffusers(ours), to_fast_path(copy.deepcopy(ours))


def ratio_line(times: dict[str, list[float]], statistic: Callable[[list[float]], float], prefix: str = "") -> str:
    """`ratio=<diffx fp32 / diffusers fp32> fast_ratio=<diffx fast / diffusers fp32>` of one statistic."""
    value = {name: statistic(values) for name, values in times.items()}
    return (f"{prefix}ratio={value['diffx fp32'] / value['diffusers fp32']:.3f} "
            f"fast_ratio={value['diffx fast (bf16, CL)'] / value['diffusers fp32']:.3f}")


def main() -> None:
    ours, theirs, fast = three_models(lambda: UNet(sd15().unet), diffusers_unet)
    with torch.inference_mode():
        peaks = measured_peaks()
        results = {size: measure_size(ours, theirs, fast, size, peaks) for size in SIZES}
    print(ratio_line(results[SIZES[0]], min))

if __name__ == "__main__":
    main()
