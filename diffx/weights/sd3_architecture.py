"""Which SD3 / SD3.5 model a Stability single file holds, read from its tensors' names and shapes alone.

Stability ships SD3 as one `.safetensors` in the layout of its own code (sgm / `sd3_impls.py`), the keys diffx's
`StableDiffusion3` mirrors: the MMDiT under `model.diffusion_model.`, the 16-channel VAE under
`first_stage_model.`, and — in the `_incl_clips` and `_incl_clips_t5xxl*` files — the text encoders under
`text_encoders.{clip_l,clip_g,t5xxl}.transformer.` in transformers' layouts. What the shapes say:

- the MMDiT: depth from the `joint_blocks.N` there are; width, patch size and input channels from
  `x_embedder.proj.weight` (width, in, p, p); the context and pooled widths from `context_embedder` and
  `y_embedder.mlp.0`; output channels from `final_layer.linear` (p² · out rows); the position table's side from
  `pos_embed`'s length (192² for SD3, 384² for SD3.5-medium); QK-norm (SD3.5) from `attn.ln_q`; MMDiT-X's
  dual-attention blocks (SD3.5-medium) from the blocks with an `x_block.attn2`;
- each CLIP: vocabulary and width from its token table, layers by count, MLP width from `fc1`, pooled width from
  `text_projection`; T5: vocabulary and width from `shared`, layers by count, heads from its relative position
  bias (buckets × heads), feed-forward width from `wi_0`.

Not in any weight, so taken from SD3's conventions and named in the summary: 64-wide heads (MMDiT and CLIP),
CLIP-L's quick-GELU and bigG's exact GELU, the latent size 128 (1024 px) the positions are spaced for, and the
VAE's scaling 1.5305 and shift 0.0609 and the scheduler's shift 3 (the same for every SD3 and SD3.5 model).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from diffx.errors import CheckpointError
from diffx.models.configs import TextEncoderConfig
from diffx.models.mmdit import MMDiTConfig, sd3_medium, sd35_large, sd35_medium
from diffx.models.sd3 import SD3_PREFIXES, SD3Config, clip_g, clip_l
from diffx.models.t5 import T5Config

Shapes = Mapping[str, tuple[int, ...]]

MMDIT = SD3_PREFIXES["transformer"]
TEXT = SD3_PREFIXES["text_encoder"]
CLIP_PREFIXES = {"clip_l": TEXT + "clip_l.transformer.", "clip_g": TEXT + "clip_g.transformer."}
T5_PREFIX = TEXT + "t5xxl.transformer."
HEAD_WIDTH = 64  # SD3's MMDiT and both CLIPs: width = heads x 64
# Tensors single files hold that are not weights of diffx's modules: the CLIPs' constant position ids.
UNUSED_SUFFIXES = ("embeddings.position_ids",)


def is_sd3_layout(keys: object) -> bool:
    """Whether a single file's keys are SD3's (an MMDiT's `joint_blocks` under `model.diffusion_model.`)."""
    return any(key.startswith(MMDIT + "joint_blocks.") for key in keys)


@dataclass(frozen=True)
class RecognisedSD3:
    """An SD3 single file: its config, what it holds beside the MMDiT and VAE, and what was assumed.

    `has_clips` / `has_t5`: the file holds those encoders' weights (when not, `config` has the SD3 presets'
    CLIPs and no T5: the loader finds them elsewhere or runs without)."""

    config: SD3Config
    has_clips: bool
    has_t5: bool
    assumed: tuple[str, ...]

    def summary(self) -> str:
        """One line: the model, what the file holds, what was assumed."""
        mmdit = self.config.mmdit
        if mmdit.name != "mmdit":
            what = f"the {mmdit.name} MMDiT"
        else:
            extras = [name for name, on in (("QK-norm", mmdit.qk_norm),
                                            (f"attn2 in blocks {list(mmdit.dual_attention_layers)}",
                                             bool(mmdit.dual_attention_layers))) if on]
            what = f"a non-standard MMDiT: {mmdit.depth} blocks × {mmdit.width} wide{''.join(', ' + e for e in extras)}"
        holds = "MMDiT + VAE" + (" + CLIP-L + bigG" if self.has_clips else "") + (" + T5" if self.has_t5 else "")
        t5 = f", T5 {self.config.t5.num_layers} layers × {self.config.t5.d_model}" if self.has_t5 else ""
        return f"SD3 / SD3.5 ({what}; the file holds {holds}{t5}); assumed (not stored in the weights): " \
               f"{', '.join(self.assumed)}"


def _shape(shapes: Shapes, key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise CheckpointError(f"looks like SD3 but lacks {key} ({what}); is the file complete?")
    return shapes[key]


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    """The sorted numbers N of keys matching `pattern` (one group: the N)."""
    regex = re.compile(pattern)
    return sorted({int(match.group(1)) for key in shapes if (match := regex.fullmatch(key))})


def _mmdit(shapes: Shapes) -> MMDiTConfig:
    blocks = _indices(shapes, rf"{re.escape(MMDIT)}joint_blocks\.(\d+)\..*")
    if blocks != list(range(len(blocks))):
        raise CheckpointError(f"looks like SD3 but its joint_blocks are numbered {blocks[:3]}...{blocks[-1]}, "
                              "not 0, 1, 2...; is the file damaged?")
    width, in_channels, patch, _ = _shape(shapes, MMDIT + "x_embedder.proj.weight", "the patch embedding")
    table = _shape(shapes, MMDIT + "pos_embed", "the position table")[-2]
    side = math.isqrt(table)
    if side * side != table or width % HEAD_WIDTH:
        raise CheckpointError(f"looks like SD3 but its position table has {table} rows (not a square) or its "
                              f"width {width} is not heads x {HEAD_WIDTH}; diffx cannot build it")
    dual = _indices(shapes, rf"{re.escape(MMDIT)}joint_blocks\.(\d+)\.x_block\.attn2\.qkv\.weight")
    config = MMDiTConfig(
        name="mmdit", depth=len(blocks), heads=width // HEAD_WIDTH, head_dim=HEAD_WIDTH, patch_size=patch,
        in_channels=in_channels,
        out_channels=_shape(shapes, MMDIT + "final_layer.linear.weight", "the output projection")[0] // patch**2,
        context_dim=_shape(shapes, MMDIT + "context_embedder.weight", "the context projection")[1],
        pooled_dim=_shape(shapes, MMDIT + "y_embedder.mlp.0.weight", "the pooled-text embedding")[1],
        pos_embed_max_size=side, qk_norm=MMDIT + "joint_blocks.0.x_block.attn.ln_q.weight" in shapes,
        dual_attention_layers=tuple(dual))
    for preset in (sd3_medium(), sd35_medium(), sd35_large()):
        if dataclasses.replace(preset, name=config.name) == config:
            return preset
    return config


def clip_from_shapes(shapes: Shapes, prefix: str, role: TextEncoderConfig) -> TextEncoderConfig:
    """A CLIPTextModelWithProjection's sizes under `prefix`; how SD3 reads it (activation, penultimate block, no
    final norm, pad token) from `role`, its preset."""
    model = prefix + "text_model."
    vocab, width = _shape(shapes, model + "embeddings.token_embedding.weight", "a CLIP's token table")
    return dataclasses.replace(
        role, vocab_size=vocab, hidden_size=width, num_attention_heads=max(1, width // HEAD_WIDTH),
        max_position_embeddings=_shape(shapes, model + "embeddings.position_embedding.weight", "positions")[0],
        intermediate_size=_shape(shapes, model + "encoder.layers.0.mlp.fc1.weight", "a CLIP's MLP")[0],
        num_hidden_layers=len(_indices(shapes, rf"{re.escape(model)}encoder\.layers\.(\d+)\.mlp\.fc1\.weight")),
        projection_dim=_shape(shapes, prefix + "text_projection.weight", "a CLIP's text_projection")[0])


def t5_from_shapes(shapes: Shapes, prefix: str = T5_PREFIX) -> T5Config:
    """A T5EncoderModel's sizes under `prefix` (transformers' names)."""
    table = shapes.get(prefix + "shared.weight") or _shape(shapes, prefix + "encoder.embed_tokens.weight",
                                                           "T5's token table")
    attention = prefix + "encoder.block.0.layer.0.SelfAttention."
    buckets, heads = _shape(shapes, attention + "relative_attention_bias.weight", "T5's position bias")
    inner = _shape(shapes, attention + "q.weight", "T5's attention")[0]
    return T5Config(vocab_size=table[0], d_model=table[1], d_kv=inner // heads, num_heads=heads,
                    d_ff=_shape(shapes, prefix + "encoder.block.0.layer.1.DenseReluDense.wi_0.weight", "T5's MLP")[0],
                    num_layers=len(_indices(shapes, rf"{re.escape(prefix)}encoder\.block\.(\d+)\.layer\.0\..*")),
                    relative_attention_num_buckets=buckets)


def recognise_sd3(shapes: Shapes, name: str = "sd3-single-file") -> RecognisedSD3:
    """The `SD3Config` of a Stability single file's tensors (see the module's docstring); CheckpointError when a
    tensor the recognition needs is missing or the file holds one CLIP without the other."""
    mmdit = _mmdit(shapes)
    present = {role: any(key.startswith(prefix) for key in shapes) for role, prefix in CLIP_PREFIXES.items()}
    if present["clip_l"] != present["clip_g"]:
        held, lacking = ("clip_l", "clip_g") if present["clip_l"] else ("clip_g", "clip_l")
        raise CheckpointError(f"looks like SD3 but holds text_encoders.{held} without text_encoders.{lacking}; "
                              "the file is incomplete (SD3 needs both CLIPs)")
    has_clips, has_t5 = present["clip_l"], any(key.startswith(T5_PREFIX) for key in shapes)
    assumed = [f"{HEAD_WIDTH}-wide heads", f"latent size {mmdit.sample_size}", "VAE scale 1.5305, shift 0.0609",
               "flow shift 3"]
    if has_clips:
        assumed.append("CLIP-L quick-GELU, bigG GELU")
    config = SD3Config(
        name=name, mmdit=mmdit,
        clip_l=clip_from_shapes(shapes, CLIP_PREFIXES["clip_l"], clip_l()) if has_clips else clip_l(),
        clip_g=clip_from_shapes(shapes, CLIP_PREFIXES["clip_g"], clip_g()) if has_clips else clip_g(),
        t5=t5_from_shapes(shapes) if has_t5 else None, image_size=8 * mmdit.sample_size)
    return RecognisedSD3(config, has_clips, has_t5, tuple(assumed))
