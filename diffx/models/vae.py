"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, `autoencoder.AutoencoderKL`).

The encoder maps an image x in [-1, 1] to a diagonal Gaussian q(z|x) over latents f = 2**(levels-1)
times smaller; the decoder maps a latent back to pixels. Diffusion runs on the (scaled) latents.
Attribute paths mirror the original checkpoint keys (`first_stage_model.<path>`).

The latents here are raw: the pipeline multiplies by `config.scaling_factor` (0.18215 for SD1.x) after
encoding and divides before decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffx.models.attention import AttentionLayer, name_attention_layers
from diffx.models.configs import VAEConfig
from diffx.models.unet import Upsample  # the same nearest-x2 + 3x3 conv as the U-Net's (LDM shares it too)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


def norm_silu(norm: nn.GroupNorm, x: Tensor) -> Tensor:
    """SiLU(GroupNorm(x)); in place on GroupNorm's fresh output when no gradient needs the pre-activation.

    At 512 px a decoder map is up to 128 x 512 x 512 values. A new buffer that large comes from the OS and
    is page-faulted in as it is written: SiLU into a new bf16 buffer took 22 ms here, in place 5 ms.
    """
    return F.silu(norm(x), inplace=not torch.is_grad_enabled())


class ResnetBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))), with a 1x1 conv on the shortcut when the channels change."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(norm_silu(self.norm1, x))
        h = self.conv2(norm_silu(self.norm2, h))
        if torch.is_grad_enabled():
            return self.nin_shortcut(x) + h
        return h.add_(self.nin_shortcut(x))  # into conv2's fresh output, for the reason of `norm_silu`


class AttnBlock(AttentionLayer):
    """Single-head self-attention over all pixels, residually, with 1x1 convs as the projections."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)

        def tokens(t: Tensor) -> Tensor:  # (B, C, H, W) -> (B, H*W, C)
            return t.flatten(2).transpose(1, 2)

        out = self.attend(tokens(self.q(h)), tokens(self.k(h)), tokens(self.v(h)), heads=1)
        out = out.transpose(1, 2).reshape(batch, channels, height, width)  # (B, H*W, C) -> (B, C, H, W)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding only right and bottom (the original's asymmetric padding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class MidBlock(nn.Module):
    """ResnetBlock, self-attention, ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


def resolution_level(blocks: list[ResnetBlock], resample_name: str, resample: nn.Module | None) -> nn.Module:
    """One resolution level as the original lays it out: `block.{j}`, plus `downsample`/`upsample` if any."""
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    if resample is not None:
        level.add_module(resample_name, resample)
    return level


class Encoder(nn.Module):
    """Image (B, 3, H, W) -> Gaussian moments (B, 2*z_channels, H/f, W/f): mean and log-variance."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        ch, groups = config.ch, config.norm_num_groups
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = ch
        for level, mult in enumerate(config.ch_mult):
            block_out = ch * mult
            blocks = []
            for _ in range(config.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, groups))
                block_in = block_out
            last = level == len(config.ch_mult) - 1
            self.down.append(resolution_level(blocks, "downsample", None if last else Downsample(block_in)))
        self.mid = MidBlock(block_in, groups)
        self.norm_out = group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, 2 * config.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # Shapes below are SD1.5's (ch 128, ch_mult 1, 2, 4, 4, z_channels 4: f = 8).
        h = self.conv_in(x)  # (B, 3, H, W) -> (B, 128, H, W)
        for level in self.down:
            for block in level.block:  # ResnetBlocks: (B, C_in, s, s) -> (B, 128·mult, s, s), mult 1, 2, 4, 4
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)  # (B, C, s, s) -> (B, C, s/2, s/2), at all levels but the last
        h = self.mid(h)  # (B, 512, H/8, W/8) -> (B, 512, H/8, W/8): ResnetBlock, self-attention, ResnetBlock
        # (B, 512, H/8, W/8) -> GroupNorm, SiLU, conv -> (B, 8, H/8, W/8): 4 means and 4 log-variances
        return self.conv_out(norm_silu(self.norm_out, h))


class Decoder(nn.Module):
    """Latent (B, z_channels, h, w) -> image (B, 3, h*f, w*f)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        ch, groups = config.ch, config.norm_num_groups
        block_in = ch * config.ch_mult[-1]
        self.conv_in = nn.Conv2d(config.z_channels, block_in, 3, padding=1)
        self.mid = MidBlock(block_in, groups)
        # `up.{i}` is indexed by resolution level like the encoder's `down.{i}`, but runs deepest first.
        levels = []
        for level in reversed(range(len(config.ch_mult))):
            block_out = ch * config.ch_mult[level]
            blocks = []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, groups))
                block_in = block_out
            levels.append(resolution_level(blocks, "upsample", Upsample(block_in) if level != 0 else None))
        self.up = nn.ModuleList(reversed(levels))
        self.norm_out = group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, config.out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        # Shapes below are SD1.5's (ch 128, ch_mult 1, 2, 4, 4, z_channels 4: f = 8).
        # (B, 4, h, w) -> conv_in (B, 512, h, w) -> mid (B, 512, h, w): ResnetBlock, self-attention, ResnetBlock
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):  # deepest level first
            for block in level.block:  # ResnetBlocks: (B, C_in, s, s) -> (B, 128·mult, s, s), mult 4, 4, 2, 1
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)  # (B, C, s, s) -> (B, C, 2s, 2s), at all levels but the first
        # (B, 128, 8h, 8w) -> GroupNorm, SiLU, conv -> (B, 3, 8h, 8w)
        return self.conv_out(norm_silu(self.norm_out, h))


@dataclass
class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(logvar))) (Kingma & Welling 2014), as the encoder's posterior."""

    mean: Tensor
    logvar: Tensor

    def __post_init__(self) -> None:
        self.logvar = self.logvar.clamp(-30.0, 20.0)  # as LDM: keeps exp() finite

    @classmethod
    def from_moments(cls, moments: Tensor) -> DiagonalGaussian:
        mean, logvar = moments.chunk(2, dim=1)  # (B, 2C, h, w) -> 2 x (B, C, h, w)
        return cls(mean, logvar)

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """z = mean + std * noise (the reparameterisation trick); noise drawn exactly as diffusers does."""
        device = generator.device if generator is not None else self.mean.device
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) = 0.5 * sum(mean^2 + var - 1 - logvar) over C, H, W -> (B,)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class AutoencoderKL(nn.Module):
    """Encoder + decoder with 1x1 convs into and out of the latent space (`quant_conv`, `post_quant_conv`; SD3's
    VAE has none)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        # SD3's VAE has neither (its encoder's output is the posterior's moments): identities, no checkpoint keys.
        quant = config.use_quant_conv
        self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.embed_dim, 1) if quant else nn.Identity()
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1) if quant else nn.Identity()
        name_attention_layers(self)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """Image (B, 3, H, W) in [-1, 1] -> posterior over raw latents (B, embed_dim, H/f, W/f)."""
        return DiagonalGaussian.from_moments(self.quant_conv(self.encoder(x)))

    def decode(self, z: Tensor) -> Tensor:
        """Raw latent (B, embed_dim, h, w) -> image (B, 3, h*f, w*f), roughly in [-1, 1]."""
        return self.decoder(self.post_quant_conv(z))
