"""A tiny preview decoder: scaled latents → pictures at a fraction of the VAE decoder's cost, for live previews.

Watching x̂0 at every step means decoding every step. The VAE's decoder is the exact map back to pixels, but
on a CPU it costs as much as the denoising step itself (the embedded model: ~60 ms a decode beside ~40 ms a
U-Net step), which halves how fast a live page can show the steps. The field's answer is a small distilled
decoder used for previews only — TAESD ("tiny autoencoder for Stable Diffusion", Ollin Boer Bohan), which
ComfyUI and A1111 use for their live previews. This is its decoder's shape, scaled to a small model: no
normalisation, no attention, ReLU residual blocks, nearest-neighbour upsampling; and, unlike TAESD, the last
×2 is a pixel shuffle, so no convolution runs at the full resolution (where a ×8 decoder spends most of its
time). It is trained to imitate the model's own VAE decoder on the latents a sampler produces
(`diffx.embedded.tiny_decoder`), so it draws what the VAE would draw, approximately (the embedded model's:
22 dB PSNR to the VAE; shapes and colours right, dots, stripes and flat backgrounds blurred) and 10× cheaper.

Module paths are the keys of its `.safetensors` file; its channel widths are stored in that file's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class TinyDecoderConfig:
    """`channels[i]`: the width at the i-th resolution, from the latent's (h, w) up to (H/2, W/2); the last ×2 is
    a pixel shuffle. len(channels) = log2(downsample_factor): 3 for an f8 VAE."""

    latent_channels: int = 4
    channels: tuple[int, ...] = (64, 48, 32)

    @property
    def downsample_factor(self) -> int:
        return 2 ** len(self.channels)

    def as_metadata(self) -> dict[str, str]:
        """The config as `.safetensors` metadata (strings only)."""
        return {"latent_channels": str(self.latent_channels), "channels": ",".join(map(str, self.channels))}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> TinyDecoderConfig:
        """Inverse of `as_metadata`; ValueError/KeyError when a value is missing or not a positive whole number."""
        channels = tuple(int(part) for part in metadata["channels"].split(","))
        config = cls(latent_channels=int(metadata["latent_channels"]), channels=channels)
        if config.latent_channels < 1 or not channels or min(channels) < 1 or len(channels) > 6:
            raise ValueError(f"bad tiny decoder config {metadata}")
        return config


class Block(nn.Module):
    """ReLU(x + conv(ReLU(conv(ReLU(conv(x)))))): TAESD's residual block, three 3×3 convolutions wide."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv(x) + x)


class TinyDecoder(nn.Module):
    """Scaled latent (B, C, h, w) → picture (B, 3, f·h, f·w) in about [-1, 1] (clamp it to draw it)."""

    def __init__(self, config: TinyDecoderConfig = TinyDecoderConfig()):
        super().__init__()
        self.config = config
        first, *rest = config.channels
        self.conv_in = nn.Conv2d(config.latent_channels, first, 3, padding=1)
        self.blocks = nn.ModuleList([Block(first)])
        self.upsamples = nn.ModuleList()
        for before, after in zip(config.channels, rest, strict=False):
            self.upsamples.append(nn.Conv2d(before, after, 3, padding=1, bias=False))
            self.blocks.append(Block(after))
        self.conv_out = nn.Conv2d(config.channels[-1], 3 * 4, 3, padding=1)  # 4 = the pixel shuffle's 2 × 2

    def forward(self, z: Tensor) -> Tensor:
        # A sampler's early x̂0 can be far outside the latents the decoder learned from: a soft clamp to ±3 keeps
        # it in range (TAESD's `Clamp`), nearly the identity for ordinary latents.
        h = torch.tanh(z / 3) * 3
        h = self.blocks[0](torch.relu(self.conv_in(h)))  # (B, C, h, w) -> (B, c0, h, w)
        for upsample, block in zip(self.upsamples, self.blocks[1:], strict=True):
            h = nn.functional.interpolate(h, scale_factor=2.0, mode="nearest")  # (B, c_i, s, s) -> (…, 2s, 2s)
            h = block(upsample(h))  # (B, c_i, 2s, 2s) -> (B, c_{i+1}, 2s, 2s)
        return nn.functional.pixel_shuffle(self.conv_out(h), 2)  # (B, 12, H/2, W/2) -> (B, 3, H, W)


def check_tiny_decoder(config: TinyDecoderConfig, latent_channels: int, downsample_factor: int) -> None:
    """ValueError unless a decoder of `config` fits a VAE of `latent_channels` and `downsample_factor`."""
    if config.latent_channels != latent_channels or config.downsample_factor != downsample_factor:
        raise ValueError(f"it decodes {config.latent_channels}-channel latents ×{config.downsample_factor}; the "
                         f"model's VAE has {latent_channels} channels, ×{downsample_factor}")
