"""The noise-prediction U-Net of latent diffusion (Rombach et al. 2022, `openaimodel.UNetModel`).

eps_pred = UNet(x_t, t, context): a convolutional U-Net (Ronneberger et al. 2015) whose residual blocks
are told the timestep t (Ho et al. 2020, appendix B) and whose attention levels carry *spatial
transformers*: self-attention over the latent pixels, then cross-attention from the pixels (queries) to
the text tokens (keys and values) — the only place where the prompt enters the image.

Every attribute path mirrors the original checkpoint keys (`model.diffusion_model.<path>`), so an SD1.5
checkpoint loads with no renaming: `input_blocks.1.0.in_layers.2.weight`, `middle_block.1.proj_in.bias`...

SD2.x's U-Net is the same network with three changes (`v2-inference.yaml`): its heads are 64 wide
(`num_head_channels: 64`, so 5, 10, 20, 20 heads at 320, 640, 1280, 1280 channels, where SD1.x has 8 at
every level), its transformers project in and out with Linear layers over the tokens instead of 1x1
convolutions (`use_linear_in_transformer`: the same map, stored (C, C) instead of (C, C, 1, 1), applied
after the flattening), and the 768-v model computes attention in fp32 (`upcast_attention`).

SDXL's (`sd_xl_base.yaml`) has three levels (320, 640, 1280), no transformer at the top one, 2 and 10
transformer blocks per transformer below it and 10 in the middle (`transformer_depth` per level), SD2's
64-wide heads and Linear projections, and one more input: a vector y (B, 2816) of pooled text and image-size
embeddings (`diffx.models.sdxl.micro_conditioning`), mapped by `label_emb` (an MLP) and added to the timestep
embedding, so every ResBlock hears it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffx.errors import InvalidArgumentError
from diffx.models.attention import AttentionLayer, name_attention_layers
from diffx.models.configs import UNetConfig


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of the timestep (Vaswani et al. 2017, sec. 3.5), LDM layout: cos half, then sin.

    emb[i] = cos(t * w_i), emb[half + i] = sin(t * w_i), w_i = max_period ** (-i / half).
    (B,) -> (B, dim), in fp32.
    """
    half = dim // 2
    frequencies = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    angles = timesteps.float()[:, None] * frequencies[None]  # (B, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class ResBlock(nn.Module):
    """Residual block told the timestep: x + conv(SiLU(GN(conv(SiLU(GN(x)))) + Linear(SiLU(emb))))."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(
            nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        # Index 2 was a Dropout in the original; an Identity keeps `out_layers.3` where checkpoints expect it.
        self.out_layers = nn.Sequential(
            nn.GroupNorm(groups, out_channels), nn.SiLU(), nn.Identity(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None]  # the timestep shifts every channel
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(AttentionLayer):
    """Multi-head attention from `x` (queries) to `context` (keys, values); self-attention without context."""

    def __init__(self, query_dim: int, heads: int, context_dim: int | None = None, upcast: bool = False):
        super().__init__()
        self.kind = "self" if context_dim is None else "cross"
        self.heads, self.upcast = heads, upcast
        key_dim = query_dim if context_dim is None else context_dim
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(key_dim, query_dim, bias=False)
        self.to_v = nn.Linear(key_dim, query_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(query_dim, query_dim))  # Sequential: the key is `to_out.0`

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        out = self.attend(self.to_q(x), self.to_k(context), self.to_v(context), self.heads)
        return self.to_out(out)


class GEGLU(nn.Module):
    """GELU-gated linear unit (Shazeer 2020, eq. 6): value * GELU(gate), both from one projection."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward with a 4x wider hidden layer; `net.1` was a Dropout in the original."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention, cross-attention to the text, feed-forward."""

    def __init__(self, dim: int, heads: int, context_dim: int, upcast: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = CrossAttention(dim, heads, upcast=upcast)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(dim, heads, context_dim=context_dim, upcast=upcast)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Runs transformer blocks over the pixels of a feature map as a sequence of H*W tokens, residually.

    proj_in/proj_out are 1x1 convolutions on the map (SD1.x) or, with `use_linear_in_transformer`, Linear
    layers on the tokens (SD2.x): one per-pixel linear map either way, applied before/after flattening.
    """

    def __init__(self, channels: int, config: UNetConfig, depth: int = 1):
        super().__init__()
        self.linear = config.use_linear_in_transformer
        self.norm = nn.GroupNorm(config.norm_num_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels) if self.linear else nn.Conv2d(channels, channels, 1)
        heads = config.heads_at(channels)  # SD1.5: 8 everywhere; SD2.x: 320 / 64 = 5 ... 1280 / 64 = 20
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, heads, config.context_dim, config.upcast_attention)
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(channels, channels) if self.linear else nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)
        h = h if self.linear else self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(batch, height * width, channels)  # (B, C, H, W) -> (B, H*W, C)
        h = self.proj_in(h) if self.linear else h
        for block in self.transformer_blocks:
            h = block(h, context)
        h = self.proj_out(h) if self.linear else h
        h = h.reshape(batch, height, width, channels).permute(0, 3, 1, 2)  # (B, H*W, C) -> (B, C, H, W)
        return x + (h if self.linear else self.proj_out(h))


class Downsample(nn.Module):
    """Halves the resolution with a stride-2 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Doubles the resolution: nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """A Sequential that hands the timestep embedding to ResBlocks and the context to transformers."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """The LDM U-Net: predicts the noise eps in x_t (DDPM eq. 14's eps_theta) given t and the text context."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        channels = config.model_channels
        emb_dim = config.time_embed_dim
        groups = config.norm_num_groups

        def res_block(in_ch: int, out_ch: int) -> ResBlock:
            return ResBlock(in_ch, emb_dim, out_ch, groups)

        def transformer(ch: int, level: int) -> SpatialTransformer:
            return SpatialTransformer(ch, config, config.depth_at(level))

        self.time_embed = nn.Sequential(
            nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        if config.adm_in_channels:  # SDXL: y (B, 2816) -> (B, 1280); nested, as its keys read `label_emb.0.0`
            self.label_emb = nn.Sequential(nn.Sequential(
                nn.Linear(config.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)))

        # Encoder: per level, num_res_blocks blocks, then a Downsample (except at the last level).
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(config.in_channels, channels, 3, padding=1))]
        )
        skip_channels = [channels]  # the channels of every encoder output, consumed by the decoder
        ch = channels
        num_levels = len(config.channel_mult)
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res_block(ch, mult * channels)]
                ch = mult * channels
                if level in config.attention_levels:
                    layers.append(transformer(ch, level))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != num_levels - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)

        self.middle_block = TimestepEmbedSequential(res_block(ch, ch), transformer(ch, num_levels - 1),
                                                    res_block(ch, ch))

        # Decoder: per level (deepest first), num_res_blocks + 1 blocks, each fed one skip connection.
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [res_block(ch + skip_channels.pop(), mult * channels)]
                ch = mult * channels
                if level in config.attention_levels:
                    layers.append(transformer(ch, level))
                if level != 0 and i == config.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, config.out_channels, 3, padding=1)
        )
        name_attention_layers(self)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.channel_mult) - 1)

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor, y: Tensor | None = None) -> Tensor:
        """x (B, in_ch, h, w), t (B,) or scalar, context (B, N_tokens, context_dim), SDXL's y (B, adm_in_channels)
        -> (B, out_ch, h, w)."""
        factor = self.downsample_factor
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise InvalidArgumentError(
                f"latent size {tuple(x.shape[-2:])} is not divisible by {factor}; "
                f"use an image size that is a multiple of {factor} times the VAE factor"
            )
        # Shapes below are SD1.5's (model_channels 320, channel_mult 1, 2, 4, 4; a 64x64 latent has h = w = 64).
        timesteps = timesteps.expand(x.shape[0]) if timesteps.ndim == 0 else timesteps  # () -> (B,)
        dtype = self.time_embed[0].weight.dtype
        # The sinusoid is computed in fp32 (t up to 1000 needs the precision), then cast to the model's dtype.
        # (B,) -> sinusoid (B, 320) -> MLP (B, 1280)
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        if self.config.adm_in_channels:  # SDXL: + label_emb(y), (B, 2816) -> (B, 1280)
            if y is None:
                raise InvalidArgumentError("this U-Net (SDXL) needs y, the pooled-text and size conditioning")
            emb = emb + self.label_emb(y.to(dtype))

        # x (B, 4, h, w); context (B, 77, 768), read by every cross-attention
        h, context = x.to(dtype), context.to(dtype)
        skips = []
        # Encoder: conv_in (B, 4, h, w) -> (B, 320, h, w), then per level ResBlocks (+ transformers) widen to
        # 320, 640, 1280, 1280 channels and a Downsample halves the size: (B, 320, h, w) -> (B, 320, h/2, w/2)
        # ... -> (B, 1280, h/8, w/8). Every block's output is kept for a skip connection (12 for SD1.5).
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        # (B, 1280, h/8, w/8) -> (B, 1280, h/8, w/8): ResBlock, transformer, ResBlock
        h = self.middle_block(h, emb, context)
        # Decoder, deepest level first: each block concatenates the latest skip,
        # (B, C, s, s) + (B, C_skip, s, s) -> (B, C + C_skip, s, s), and its ResBlock narrows that to the
        # level's width (1280, 1280, 640, 320); a level's last block upsamples, (B, C, s, s) -> (B, C, 2s, 2s),
        # so (B, 1280, h/8, w/8) ... -> (B, 320, h, w).
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
        # (B, 320, h, w) -> GroupNorm, SiLU, conv -> (B, 4, h, w): the predicted noise
        return self.out(h)
