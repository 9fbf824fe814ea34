"""The multimodal diffusion transformer (MMDiT) of Stable Diffusion 3 and 3.5 (Esser et al. 2024, "Scaling
Rectified Flow Transformers for High-Resolution Image Synthesis", sec. 4, fig. 2).

v_pred = MMDiT(x_t, t, context, pooled): a transformer that predicts the rectified-flow velocity v = ε − x_0
(Esser et al. 2024, sec. 2) of a latent x_t (B, 16, h, w), told

- the time t = σ · 1000 (σ ∈ [0, 1] the noise level) and the pooled text vector (B, 2048: CLIP-L's and bigG's
  pooled outputs, concatenated) as one conditioning vector c, which modulates every block (adaLN-Zero,
  Peebles & Xie 2023);
- the text tokens (B, L, 4096: CLIP-L's and bigG's 77 hidden states side by side, 2048 channels zero-padded to
  4096, followed by T5-XXL's tokens) as a second stream of tokens, which meets the image patches in every
  block's joint attention (`diffx.models.mmdit_blocks`).

    tokens  = PatchEmbed(x_t) + pos_embed[centre crop]                   (B, h/2 · w/2, D)
    c       = MLP(sinusoid(t)) + MLP(pooled)                               (B, D)
    context = Linear(context)                                              (B, L, D)
    tokens, context = JointBlock_i(tokens, context, c)   for i < depth   (the last block drops the context)
    v_pred  = unpatchify(Linear(adaLN(tokens, c)))                         (B, 16, h, w)

The position table is DiT's fixed 2-D sin-cos embedding (Peebles & Xie 2023; MAE's layout: the first half of
the channels encodes a patch's column, the second half its row), built for pos_embed_max_size² patches — larger
than any training size — and cropped to the centre for the input's size (SD3's `cropped_pos_embed`), so one
table serves every aspect ratio.

Module paths are the keys of Stability's single files under `model.diffusion_model.`: `x_embedder.proj`,
`pos_embed` (a buffer the files hold), `t_embedder.mlp.0/2`, `y_embedder.mlp.0/2`, `context_embedder`,
`joint_blocks.N.{x_block,context_block}.*`, `final_layer.*`. A diffusers `transformer/` folder is renamed to
them by `diffx.weights.sd3_layout`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffx.errors import InvalidArgumentError
from diffx.models.attention import name_attention_layers
from diffx.models.mmdit_blocks import FinalLayer, JointBlock
from diffx.models.unet import timestep_embedding

# The timestep's sinusoid is 256 wide before its MLP (DiT's `frequency_embedding_size`).
TIMESTEP_CHANNELS = 256


@dataclass(frozen=True)
class MMDiTConfig:
    """An MMDiT's shape. Width = heads × head_dim (64-wide heads: a model of depth d is 64·d wide with d heads,
    Esser et al. 2024, sec. 4, as SD3-medium and SD3.5-large are).

    `sample_size`: the latent size (128 = a 1024-pixel image) the positions are spaced for: patch i of the
    pos_embed_max_size-wide grid sits at i · (sample_size / patch_size) / pos_embed_max_size.
    `qk_norm`: RMS-normalise q and k per head (SD3.5). `dual_attention_layers`: the blocks whose image stream
    also has MMDiT-X's own self-attention (SD3.5-medium: 0–12).
    """

    name: str
    depth: int
    heads: int
    head_dim: int = 64
    patch_size: int = 2
    in_channels: int = 16
    out_channels: int = 16
    context_dim: int = 4096
    pooled_dim: int = 2048
    pos_embed_max_size: int = 192
    sample_size: int = 128
    qk_norm: bool = False
    dual_attention_layers: tuple[int, ...] = ()

    @property
    def width(self) -> int:
        return self.heads * self.head_dim


def sd3_medium() -> MMDiTConfig:
    """SD3-medium (2 B parameters): 24 blocks of 1536 channels (24 heads × 64), no QK-norm."""
    return MMDiTConfig(name="sd3-medium", depth=24, heads=24)


def sd35_medium() -> MMDiTConfig:
    """SD3.5-medium (2.5 B): MMDiT-X — SD3-medium's shape with QK-norm, a self-attention of the image tokens in
    blocks 0–12, and a 384² position table (its card: 256 to 1440 pixels)."""
    return MMDiTConfig(name="sd3.5-medium", depth=24, heads=24, pos_embed_max_size=384, qk_norm=True,
                       dual_attention_layers=tuple(range(13)))


def sd35_large() -> MMDiTConfig:
    """SD3.5-large (8 B): 38 blocks of 2432 channels (38 heads × 64), QK-norm."""
    return MMDiTConfig(name="sd3.5-large", depth=38, heads=38, qk_norm=True)


def small() -> MMDiTConfig:
    """A tiny MMDiT (85 k parameters) for tests: every variant (QK-norm, a dual-attention block, the pre-only
    last block) in 2 blocks of 32 channels."""
    return MMDiTConfig(name="mmdit-small", depth=2, heads=2, head_dim=16, in_channels=4, out_channels=4,
                       context_dim=24, pooled_dim=20, pos_embed_max_size=16, sample_size=8, qk_norm=True,
                       dual_attention_layers=(0,))


def sincos_position_table(width: int, grid: int, base_size: int) -> Tensor:
    """DiT's fixed 2-D sin-cos table for a grid × grid patch grid -> (grid², width), row-major (row, column).

    A 1-D position p is [sin(p ω_i), cos(p ω_i)] with ω_i = 10000^(−i / (width/4)) (Vaswani et al. 2017, sec. 3.5,
    sin first); a patch is its column's 1-D embedding followed by its row's. Positions are spaced so that
    `base_size` patches span the grid: p = index · base_size / grid.
    """
    quarter = width // 4
    # float32 positions, float64 angles: the same rounding as the tables the checkpoints hold.
    positions = torch.arange(grid, dtype=torch.float32) / (grid / base_size)  # (grid,)
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (width/4,)
    angles = positions.double()[:, None] * omega[None]  # (grid, width/4)
    line = torch.cat([angles.sin(), angles.cos()], dim=1)  # (grid, width/2): one axis's embedding
    # (grid rows, grid columns, width): [column's embedding, row's embedding]
    table = torch.cat([line[None, :, :].expand(grid, grid, -1), line[:, None, :].expand(grid, grid, -1)], dim=-1)
    return table.reshape(grid * grid, width).float()


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: a p×p convolution with stride p, (B, C, h, w) -> (B, h/p · w/p, D)."""

    def __init__(self, config: MMDiTConfig):
        super().__init__()
        patch = config.patch_size
        self.proj = nn.Conv2d(config.in_channels, config.width, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        # (B, 16, h, w) -> (B, D, h/p, w/p) -> (B, h/p · w/p, D), row-major
        return self.proj(x).flatten(2).transpose(1, 2)


class MLPEmbedder(nn.Module):
    """Linear, SiLU, Linear: the timestep's sinusoid (`t_embedder`) or the pooled text (`y_embedder`) -> (B, D)."""

    def __init__(self, in_dim: int, width: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class MMDiT(nn.Module):
    """SD3's network: (x_t (B, 16, h, w), t (B,) = σ·1000, context (B, L, 4096), pooled (B, 2048)) -> the
    rectified-flow velocity (B, 16, h, w)."""

    def __init__(self, config: MMDiTConfig):
        super().__init__()
        self.config = config
        width, grid = config.width, config.pos_embed_max_size
        self.x_embedder = PatchEmbed(config)
        # Fixed, not learned, but stored in the checkpoints: a persistent buffer, loaded with the weights. A model
        # built to receive a checkpoint's tensors (parameters on `meta`) gets a shape-only table: the file's replaces
        # it, and computing it would cost SD3-medium's loader 226 MB, twice that in float64 meanwhile.
        if self.x_embedder.proj.weight.is_meta:
            table = torch.empty(grid * grid, width, device="meta")
        else:
            table = sincos_position_table(width, grid, config.sample_size // config.patch_size)
        self.register_buffer("pos_embed", table[None])  # (1, grid², D)
        self.t_embedder = MLPEmbedder(TIMESTEP_CHANNELS, width)
        self.y_embedder = MLPEmbedder(config.pooled_dim, width)
        self.context_embedder = nn.Linear(config.context_dim, width)
        self.joint_blocks = nn.ModuleList(
            JointBlock(width, config.heads, config.qk_norm, pre_only=index == config.depth - 1,
                       dual_attention=index in config.dual_attention_layers)
            for index in range(config.depth)
        )
        self.final_layer = FinalLayer(width, config.patch_size, config.out_channels)
        name_attention_layers(self)

    def cropped_pos_embed(self, height: int, width: int) -> Tensor:
        """The centre height × width patches of the position table -> (1, height · width, D)."""
        grid = self.config.pos_embed_max_size
        top, left = (grid - height) // 2, (grid - width) // 2
        # (1, grid², D) -> (1, grid, grid, D) -> (1, height, width, D) -> (1, height · width, D)
        table = self.pos_embed.reshape(1, grid, grid, -1)[:, top:top + height, left:left + width]
        return table.reshape(1, height * width, -1)

    def forward(self, x: Tensor, t: Tensor, context: Tensor, pooled: Tensor) -> Tensor:
        config = self.config
        patch = config.patch_size
        height, width = x.shape[-2] // patch, x.shape[-1] // patch  # in patches
        most = config.pos_embed_max_size
        if x.shape[-2] % patch or x.shape[-1] % patch or height > most or width > most:
            raise InvalidArgumentError(
                f"a {x.shape[-2]}×{x.shape[-1]} latent does not fit {config.name}: each side must be a multiple of "
                f"{patch} and at most {most * patch}; choose another image size")
        # (B, 16, h, w) -> (B, N_img, D), N_img = h/p · w/p
        tokens = self.x_embedder(x) + self.cropped_pos_embed(height, width).to(x.dtype)
        # (B,) -> (B, 256) -> (B, D); (B, 2048) -> (B, D): one conditioning vector
        c = self.t_embedder(timestep_embedding(t, TIMESTEP_CHANNELS).to(x.dtype)) + self.y_embedder(pooled)
        context = self.context_embedder(context)  # (B, L, 4096) -> (B, L, D)
        for block in self.joint_blocks:
            tokens, context = block(tokens, context, c)
        tokens = self.final_layer(tokens, c)  # (B, N_img, D) -> (B, N_img, p·p·C)
        return self.unpatchify(tokens, height, width)

    def unpatchify(self, tokens: Tensor, height: int, width: int) -> Tensor:
        """(B, height · width, p·p·C) -> (B, C, height·p, width·p): each token back to its p×p patch."""
        patch, channels = self.config.patch_size, self.config.out_channels
        batch = tokens.shape[0]
        # (B, h, w, p, p, C) -> (B, C, h, p, w, p) -> (B, C, h·p, w·p)
        patches = tokens.reshape(batch, height, width, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)
        return patches.reshape(batch, channels, height * patch, width * patch)
