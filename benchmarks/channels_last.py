"""fp32 on the CPU: a U-Net forward with its convolution weights channels-last (what `StableDiffusion.to` does on
the CPU in every dtype) against the same weights in PyTorch's default NCHW layout, in one process.

The embedded model's U-Net (shapes-world-2, 16x16 latents, the CFG pair as a batch of 2) and, with `--sd15`,
SD1.5's at 64x64 latents (random weights; ~10 s a forward on 2 cores). Each layout's median of `--repeats` timed
forwards after two untimed ones; the outputs must agree to fp32 rounding (printed).

Run from the repository root:  python -m benchmarks.channels_last [--sd15] [--repeats 20]
The last line is `ratio=<channels-last / NCHW time> nchw_ms=<…> channels_last_ms=<…>` (the embedded U-Net's;
with --sd15, `sd15_ratio=…` too).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffx.devices import cpu_description
from diffx.models.configs import ModelConfig, sd15
from diffx.models.fast_cpu import use_channels_last
from diffx.models.unet import UNet
from diffx.paths import EMBEDDED_MODEL_DIR
from diffx.weights.load import load_model


def forward_ms(unet: UNet, config: ModelConfig, latent: int, repeats: int) -> tuple[float, torch.Tensor]:
    """Median milliseconds of a no-grad forward at batch 2 (fixed inputs), and its output."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, config.unet.in_channels, latent, latent, generator=generator)
    context = torch.randn(2, 77, config.unet.context_dim, generator=generator)
    t = torch.tensor([500, 500])
    times = []
    with torch.no_grad():
        for i in range(repeats + 2):
            start = time.perf_counter()
            out = unet(x, t, context)
            if i >= 2:
                times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times), out


def race(unet: UNet, config: ModelConfig, latent: int, repeats: int) -> tuple[float, float]:
    """(NCHW ms, channels-last ms) of the same U-Net; prints both and how far the outputs differ."""
    use_channels_last([unet], enabled=False)
    nchw, reference = forward_ms(unet, config, latent, repeats)
    use_channels_last([unet])
    channels_last, out = forward_ms(unet, config, latent, repeats)
    difference = ((out - reference).norm() / reference.norm()).item()
    print(f"{config.name}: NCHW {nchw:.1f} ms, channels-last {channels_last:.1f} ms "
          f"({channels_last / nchw:.2f}x), relative difference of the outputs {difference:.1e}")
    return nchw, channels_last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sd15", action="store_true", help="also SD1.5's U-Net at 64x64 latents (random weights)")
    args = parser.parse_args()
    print(f"{cpu_description()}, {torch.get_num_threads()} threads, fp32")
    model = load_model(EMBEDDED_MODEL_DIR, dtype=torch.float32)
    latent = model.config.image_size // model.config.vae.downsample_factor
    nchw, channels_last = race(model.unet, model.config, latent, args.repeats)
    line = f"ratio={channels_last / nchw:.3f} nchw_ms={nchw:.1f} channels_last_ms={channels_last:.1f}"
    if args.sd15:
        torch.manual_seed(0)
        config = sd15()
        big_nchw, big_channels_last = race(UNet(config.unet).eval(), config, 64, max(2, args.repeats // 10))
        line += f" sd15_ratio={big_channels_last / big_nchw:.3f}"
    print(line)


if __name__ == "__main__":
    main()
