"""VAE decode speed at 512 px: diffx's CPU fast path vs diffusers fp32 with the same weights, SD1.5 VAE.

One 64x64x4 latent decoded to a 512x512 picture (the last stage of every `diffx generate` on SD1.5). diffx
fp32, diffusers fp32 and diffx's fast path (`diffx.models.fast_cpu`: bf16, channels-last) run alternately in
one process; minimum and median times, achieved GFLOP/s against the matmul peaks of the same run, and the
fast path's error in grey levels (0-255) against diffusers' picture.

Run from the repository root:  python -m benchmarks.vae_speed
The last line printed is `ratio=<diffx fp32 / diffusers fp32> fast_ratio=<diffx fast / diffusers fp32>`
(minimum times).
"""

from __future__ import annotations

import statistics

import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL

from benchmarks.unet_speed import best_peaks, forward_gflop, measured_peaks, print_times, race, ratio_line, three_models
from diffx.models.configs import sd15
from diffx.models.fast_cpu import FAST_DTYPE
from diffx.models.vae import AutoencoderKL
from diffx.weights.diffusers_layout import rename_key, vae_rename_rules

LATENT_SIZE = 64  # 512 px
WARMUP = 1
REPEATS = 3


def diffusers_vae(ours: AutoencoderKL) -> DiffusersAutoencoderKL:
    """diffusers' SD VAE holding the tensors of `ours`; its attention's Linear weights are our 1x1 convs' views."""
    config = ours.config
    levels = len(config.ch_mult)
    with torch.device("meta"):
        theirs = DiffusersAutoencoderKL(
            in_channels=config.in_channels, out_channels=config.out_ch, latent_channels=config.z_channels,
            down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=tuple(config.ch * mult for mult in config.ch_mult),
            layers_per_block=config.num_res_blocks, norm_num_groups=config.norm_num_groups, sample_size=512)
    rules, weights = vae_rename_rules(config), ours.state_dict()
    expected = theirs.state_dict()
    state = {}
    for key, meta in expected.items():
        tensor = weights[rename_key(key, rules)]
        state[key] = tensor.view(meta.shape) if tensor.shape != meta.shape else tensor  # (C, C, 1, 1) -> (C, C)
    theirs.load_state_dict(state, strict=True, assign=True)
    return theirs.eval()


def main() -> None:
    ours, theirs, fast = three_models(lambda: AutoencoderKL(sd15().vae), diffusers_vae)
    z = torch.randn(1, ours.config.embed_dim, LATENT_SIZE, LATENT_SIZE)
    runs = {
        "diffx fp32": lambda: ours.decode(z),
        "diffusers fp32": lambda: theirs.decode(z).sample,
        "diffx fast (bf16, CL)": lambda: fast.decode(z.to(FAST_DTYPE)),
    }
    with torch.inference_mode():
        peaks = measured_peaks()
        times = race(runs, WARMUP, REPEATS)
        peaks = best_peaks(peaks)
        gflop = forward_gflop(lambda: AutoencoderKL(ours.config), lambda vae: vae.decode(z.to("meta")))
        print(f"-- decode {LATENT_SIZE * 8} px: {gflop:.0f} GFLOP")
        print_times(times, gflop, peaks)
        reference = runs["diffusers fp32"]().clamp(-1, 1)
        errors = {name: ((runs[name]().float().clamp(-1, 1) - reference).abs() * 127.5)
                  for name in ("diffx fp32", "diffx fast (bf16, CL)")}
    for name, error in errors.items():
        print(f"{name} vs diffusers fp32: mean {error.mean():.3f}, max {error.max():.2f} grey levels")
    print(ratio_line(times, statistics.median, "median: "))
    print(ratio_line(times, min))


if __name__ == "__main__":
    main()
