"""Which model a single-file checkpoint holds, read from its tensors' names and shapes alone.

An original checkpoint (`v1-5-pruned-emaonly.safetensors`, a fine-tune, a tiny test model) carries no
config file: the architecture is in the weights. Like diffusers' single-file loader, but for every size,
`recognise` reads it back:

- the *family* from the key layout: SD1.x has `cond_stage_model.transformer.*` (CLIP ViT-L's text tower,
  transformers' layout); SD2.x `cond_stage_model.model.*` (OpenCLIP ViT-H); SDXL `conditioner.embedders.*`
  with two text encoders (base) or OpenCLIP bigG alone (refiner), and a `label_emb` for its size and crop
  conditioning;
- the *configuration* of an SD1.x-, SD2.x- or SDXL-base-family model from the shapes: U-Net width
  `model_channels` and input channels (4, or 9 for inpainting) from `conv_in`, the levels and their widths
  from where the `Downsample`s sit, residual blocks per level, which levels carry transformers and how deep, the context
  width from `attn2.to_k`; CLIP's vocabulary, width, layers and MLP width; the VAE's widths, blocks and
  latent channels (SD2.x: OpenCLIP's, and Linear proj_in/out in the U-Net's transformers; SDXL: both text
  encoders, bigG's projection, transformer depths per level and `label_emb`'s input width). The result is
  checked against the full shape list of the model it implies.

Two numbers are not in any weight: the attention head counts (a layer's width splits into heads only
inside the computation) and GroupNorm's group count (its affine parameters are per channel). A file
whose every shape is a diffx preset's takes the preset's; any other gets its family's conventions, named
in the summary so a learner knows what was assumed: 8 U-Net heads for SD1.x (`v1-inference.yaml`), 64-wide
ones for SD2.x and SDXL (`num_head_channels: 64`), CLIP's 64-wide heads, 32 groups. Nor is SDXL's VAE scaling
factor (0.13025) stored: an SDXL file gets it, and SDXL's 1024 px (128 x 128 latents).

Nor do the weights say what the model predicts: SD2's 512-base (ε) and 768-v (v) have the very same
tensors. diffx takes the hint of an LDM .yaml beside the file (`parameterization: "v"` or not), as
A1111 does; without one it assumes 768-v — diffusers' `from_single_file` makes the same default (it
takes ε only for a .ckpt whose `global_step` is 2.0-base's 875000) — and says so in the summary; passing
a config (`sd21-base`) decides instead.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from diffx.errors import CheckpointError
from diffx.models.configs import PRESETS, ModelConfig, SchedulerConfig, TextEncoderConfig, UNetConfig, VAEConfig
from diffx.models.open_clip import OPEN_CLIP_PREFIX
from diffx.models.sdxl import SDXL_PREFIX
from diffx.models.stable_diffusion import ALL_PREFIXES, ORIGINAL_PREFIXES, build_without_weights
from diffx.weights.sd3_architecture import is_sd3_layout

Shapes = Mapping[str, tuple[int, ...]]

UNET, VAE, TEXT = ORIGINAL_PREFIXES["unet"], ORIGINAL_PREFIXES["vae"], ORIGINAL_PREFIXES["text_encoder"]
CLIP = TEXT + "text_model."
SD1_HEADS, SD2_HEAD_WIDTH, CLIP_HEAD_WIDTH, GROUPS = 8, 64, 64, 32  # conventions for what the weights do not store
# SD2.x variants by the U-Net's input channels: x_t (4), + depth (5), + low-res image (7), + mask and image (9).
SD2_VARIANTS = {4: "SD2.x (512-base or 768-v; the file does not say which)", 5: "SD2.x depth-to-image",
                7: "SD2.x x4 upscaler", 9: "SD2.x inpainting"}


@dataclass(frozen=True)
class Recognised:
    """What a checkpoint is: its family, and for a family diffx runs, the config that fits every tensor.

    `preset`: the diffx preset whose shapes the file has exactly, if any; `assumed`: settings the
    weights do not store, taken from the family's conventions (empty for a preset).
    """

    family: str
    config: ModelConfig | None = None
    preset: str | None = None
    assumed: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        """One line: "SD1.x (the sd15 preset)" or the inferred sizes and what was assumed."""
        if self.config is None:
            return self.family
        assumed = f"; assumed (not stored in the weights): {', '.join(self.assumed)}" if self.assumed else ""
        if self.preset is not None:
            return f"{self.family} (the {self.preset} preset{assumed})"
        unet, vae, text = self.config.unet, self.config.vae, self.config.text_encoder
        levels = ", ".join(str(m) for m in unet.channel_mult)
        parts = [f"U-Net {unet.model_channels} ch × ({levels}), {unet.num_res_blocks} blocks/level, "
                 f"{unet.in_channels} in, attention at levels {list(unet.attention_levels)}, depth "
                 f"{unet.transformer_depth}, context {unet.context_dim}",
                 " + ".join(f"{'OpenCLIP' if t.layout == 'open_clip' else 'CLIP'} {t.hidden_size} wide × "
                            f"{t.num_hidden_layers} layers" for t in (text, self.config.text_encoder_2) if t),
                 f"VAE f{vae.downsample_factor}, {vae.ch} ch, {vae.z_channels} latent channels"]
        return f"{self.family}, non-standard size: {'; '.join(parts)}{assumed}"


def unsupported_family(family: str) -> str:
    """The one line for a family diffx recognises but does not run."""
    return (f"recognised {family}; diffx cannot run this family yet (it runs SD1.x, SD2.x and SDXL base models: "
            "their inpainting models, fine-tunes and other sizes)")


def family_of(shapes: Shapes) -> str:
    """The family a key layout belongs to ("SD1.x", "SD2.x …", "SDXL base"…); CheckpointError for files
    that are not a whole text-to-image model (a VAE alone, a LoRA, something else)."""
    keys = shapes.keys()
    if any(key.startswith("conditioner.embedders.1.model.") for key in keys):
        return "SDXL base"
    if any(key.startswith("conditioner.embedders.0.model.") for key in keys):
        return "SDXL refiner"
    if any(key.startswith("conditioner.") for key in keys):
        return "SDXL (an unknown variant)"
    if is_sd3_layout(keys):  # its config is an `SD3Config`: `diffx.weights.sd3_architecture.recognise_sd3`
        raise CheckpointError("this file is an SD3 / SD3.5 model (an MMDiT); it loads as a model, but this needs an "
                              "SD1.x, SD2.x or SDXL one")
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
    if any(key.startswith("cond_stage_model.model.") for key in keys):
        in_channels = conv_in[1] if conv_in else 4
        return SD2_VARIANTS.get(in_channels, f"SD2.x with a {in_channels}-channel U-Net input")
    if any(key.startswith(UNET + "label_emb.") for key in keys):
        return "an unCLIP / class-conditioned SD model"
    if conv_in is None:
        if any(key.startswith(("encoder.", "decoder.", VAE)) for key in keys):
            raise CheckpointError("this file is a standalone VAE, not a whole model; load a full SD1.x checkpoint")
        if any("lora" in key for key in keys):
            raise CheckpointError("this file is a LoRA adapter, not a whole model; load a full SD1.x checkpoint")
        raise CheckpointError("this file is not a Stable Diffusion checkpoint (it has no model.diffusion_model.* "
                              "keys)")
    if any(key.startswith(CLIP) for key in keys):
        return "SD1.x"
    return "SD1.x-like U-Net without a CLIP text encoder"


# The SD2.x families diffx runs, by their `family_of` name -> the name diffx gives them.
SD2_RUNS = {SD2_VARIANTS[4]: "SD2.x", SD2_VARIANTS[9]: "SD2.x inpainting"}
V_GUESS = ('768-v (v-prediction, 768 px): 512-base has the same tensors; an LDM .yaml beside the file without '
           'parameterization: "v" makes it 512-base')


def recognise(shapes: Shapes, v_prediction: bool | None = None) -> Recognised:
    """The family and, for SD1.x and SD2.x, the `ModelConfig` of a checkpoint in the original layout.

    `v_prediction`: what is known beside the tensors (an LDM .yaml's `parameterization`); None assumes
    SD2's 768-v for a 4-channel SD2 U-Net (see the module's docstring).
    Raises CheckpointError: "recognised SDXL base; diffx cannot run this family yet" for families diffx
    does not run, or for an SD1.x/SD2.x-like file that fits no configuration, naming what did not fit.
    """
    family = family_of(shapes)
    if family not in ("SD1.x", "SDXL base") and family not in SD2_RUNS:
        raise CheckpointError(unsupported_family(family))
    family = SD2_RUNS.get(family, family)
    try:
        if family == "SDXL base":
            config, assumed = _infer_sdxl(shapes)
        else:
            config, assumed = _infer_sd2(shapes, v_prediction) if family in SD2_RUNS.values() else _infer_sd1(shapes)
    except CheckpointError as error:  # the inference steps are shared by the families: name the one recognised
        raise CheckpointError(re.sub(r"^looks like \S+", f"looks like {family}", str(error))) from None
    _check_fits(config, shapes, family)
    matches = [name for name, make in PRESETS.items() if _shape_fields(make()) == _shape_fields(config)]
    if matches:  # sd21-v and sd21-base have the same shapes: the one predicting what was inferred
        prediction = config.scheduler.prediction_type
        name = min(matches, key=lambda name: PRESETS[name]().scheduler.prediction_type != prediction)
        return Recognised(family, PRESETS[name](), preset=name, assumed=tuple(a for a in assumed if a == V_GUESS))
    return Recognised(family, config, assumed=assumed)


# ---------------------------------------------------------------------------------------------------
# The SD1.x family from its shapes


# Tensors of single files under the component prefixes that are not weights of diffx's modules: the text
# encoders' position ids (constants 0..76), OpenCLIP's contrastive head (SD2 uses neither part; SDXL keeps bigG's
# `text_projection` for its pooled output, but not `logit_scale`).
UNUSED_KEYS = frozenset({CLIP + "embeddings.position_ids", OPEN_CLIP_PREFIX + "text_projection",
                         OPEN_CLIP_PREFIX + "logit_scale", SDXL_PREFIX + "embedders.1.model.logit_scale",
                         SDXL_PREFIX + "embedders.0.transformer.text_model.embeddings.position_ids"})


def _prefixed(shapes: Shapes) -> dict[str, tuple[int, ...]]:
    """The entries under the component prefixes that are weights: the ones a diffx model has."""
    return {key: tuple(shape) for key, shape in shapes.items() if key.startswith(ALL_PREFIXES) and
            key not in UNUSED_KEYS}


def _expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor shape of the model `config` builds (on the meta device: no memory)."""
    return dict(_shapes_of_config(json.dumps(config.to_dict(), sort_keys=True)))


@functools.lru_cache(maxsize=8)
def _shapes_of_config(config_json: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    model = build_without_weights(ModelConfig.from_dict(json.loads(config_json)))
    return tuple((name, tuple(t.shape)) for name, t in model.original_state_dict().items())


def _shape_fields(config: ModelConfig) -> tuple:
    """The parts of a config that decide tensor shapes (heads and groups do not)."""
    second = config.text_encoder_2
    return (replace(config.unet, num_heads=0, norm_num_groups=0), replace(config.vae, norm_num_groups=0),
            replace(config.text_encoder, num_attention_heads=0),
            second and replace(second, num_attention_heads=0))


def _count(shapes: Shapes, pattern: str) -> int:
    """How many distinct values the one group of `pattern` takes over the keys (layers, blocks...)."""
    found = {match.group(1) for key in shapes if (match := re.fullmatch(pattern, key))}
    return len(found)


def _shape(shapes: Shapes, key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        family = "SD2.x" if key.startswith(OPEN_CLIP_PREFIX) else "SDXL" if key.startswith(SDXL_PREFIX) else "SD1.x"
        raise CheckpointError(f"looks like {family} but did not fit: {what} ({key}) is missing")
    return tuple(shapes[key])


def _divisor(widths: list[int], preferred: int) -> int:
    """`preferred` if it divides every width, else the largest number below it that does."""
    common = math.gcd(*widths)
    return max(d for d in range(1, preferred + 1) if common % d == 0)


def _infer_unet(shapes: Shapes, head_width: int | None = None) -> tuple[UNetConfig, list[str]]:
    """The U-Net from its input blocks: ResBlocks (`in_layers`) and Downsamples (`op`) in order.

    `head_width`: SD2's convention, heads of that width (where the widths allow) instead of 8 heads."""
    model_channels, in_channels = _shape(shapes, UNET + "input_blocks.0.0.weight", "the U-Net's conv_in")[:2]
    out_channels = _shape(shapes, UNET + "out.2.weight", "the U-Net's output conv")[0]
    levels: list[list[int]] = [[]]  # per level, the blocks' output widths
    attention: list[set[int]] = [set()]
    depths: dict[int, set[int]] = {}  # level -> the depths of its transformers
    block = 1
    while (res := shapes.get(f"{UNET}input_blocks.{block}.0.in_layers.2.weight")) or \
            f"{UNET}input_blocks.{block}.0.op.weight" in shapes:
        if res is None:  # a Downsample closes the level
            levels.append([])
            attention.append(set())
        else:
            levels[-1].append(res[0])
            if f"{UNET}input_blocks.{block}.1.proj_in.weight" in shapes:
                attention[-1].add(block)
                pattern = rf"{re.escape(UNET)}input_blocks\.{block}\.1\.transformer_blocks\.(\d+)\.attn1\.to_q\.weight"
                depths.setdefault(len(levels) - 1, set()).add(_count(shapes, pattern))
        block += 1
    blocks_per_level = {len(widths) for widths in levels}
    if len(blocks_per_level) != 1 or not all(len(set(w)) == 1 for w in levels):
        raise CheckpointError(f"looks like SD1.x but did not fit: the U-Net's levels have {[len(w) for w in levels]} "
                              "residual blocks (diffx's U-Net has the same number at every level)")
    partial = [lv for lv, blocks in enumerate(attention) if blocks and len(blocks) != len(levels[lv])]
    if partial or any(len(found) > 1 for found in depths.values()):
        raise CheckpointError("looks like SD1.x but did not fit: transformers sit on some blocks of a level, or "
                              f"are of different depths within a level {depths}")
    level_depths = {level: found.pop() for level, found in depths.items()}
    # One depth for all (SD1.x, SD2.x), or one per level, 0 where there is none (SDXL: 0, 2, 10).
    depth: int | tuple[int, ...] = tuple(level_depths.get(level, 0) for level in range(len(levels)))
    if len(set(level_depths.values())) <= 1:
        depth = level_depths.popitem()[1] if level_depths else 1
    widths = [w[0] for w in levels]
    if any(w % model_channels for w in widths):
        raise CheckpointError(f"looks like SD1.x but did not fit: level widths {widths} are not multiples of "
                              f"conv_in's {model_channels}")
    context = [shape[1] for key, shape in shapes.items() if key.startswith(UNET) and key.endswith("attn2.to_k.weight")]
    if not context:
        raise CheckpointError("looks like SD1.x but did not fit: the U-Net has no cross-attention (attn2)")
    all_widths = [model_channels, *widths]
    proj_in = [shape for key, shape in shapes.items() if key.startswith(UNET) and key.endswith("proj_in.weight")]
    if head_width is None:
        heads, head_channels = _divisor(widths, SD1_HEADS), -1
        said = f"{heads} U-Net heads"
    else:
        heads, head_channels = SD1_HEADS, _divisor(widths, head_width)
        said = f"{head_channels}-wide U-Net heads"
    config = UNetConfig(
        in_channels=in_channels, out_channels=out_channels, model_channels=model_channels,
        channel_mult=tuple(w // model_channels for w in widths), num_res_blocks=blocks_per_level.pop(),
        attention_levels=tuple(lv for lv, blocks in enumerate(attention) if blocks), num_heads=heads,
        transformer_depth=depth, context_dim=context[0],
        adm_in_channels=shapes.get(UNET + "label_emb.0.0.weight", (0, 0))[1],
        norm_num_groups=_divisor(all_widths, GROUPS), num_head_channels=head_channels,
        use_linear_in_transformer=bool(proj_in) and len(proj_in[0]) == 2)
    return config, [said, f"{config.norm_num_groups} U-Net groups"]


def _infer_text(shapes: Shapes, prefix: str = CLIP) -> tuple[TextEncoderConfig, list[str]]:
    """transformers-layout CLIP under `prefix` (SD1.x's, or SDXL's first encoder's)."""
    vocab, width = _shape(shapes, prefix + "embeddings.token_embedding.weight", "CLIP's token embedding")
    positions = _shape(shapes, prefix + "embeddings.position_embedding.weight", "CLIP's position embedding")[0]
    layers = _count(shapes, rf"{re.escape(prefix)}encoder\.layers\.(\d+)\.self_attn\.q_proj\.weight")
    intermediate = _shape(shapes, prefix + "encoder.layers.0.mlp.fc1.weight", "CLIP's first MLP")[0]
    heads = max(1, width // CLIP_HEAD_WIDTH) if width % CLIP_HEAD_WIDTH == 0 else _divisor([width], 8)
    config = TextEncoderConfig(vocab_size=vocab, max_position_embeddings=positions, hidden_size=width,
                               intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads)
    return config, [f"{heads} CLIP heads"]


def _infer_open_clip(shapes: Shapes, prefix: str = OPEN_CLIP_PREFIX) -> tuple[TextEncoderConfig, list[str]]:
    """OpenCLIP's text tower (SD2's `cond_stage_model.model.*` or SDXL's bigG), penultimate-layer output, "!"
    padding."""
    vocab, width = _shape(shapes, prefix + "token_embedding.weight", "OpenCLIP's token embedding")
    positions = _shape(shapes, prefix + "positional_embedding", "OpenCLIP's position embedding")[0]
    layers = _count(shapes, rf"{re.escape(prefix)}transformer\.resblocks\.(\d+)\.attn\.in_proj_weight")
    block = prefix + "transformer.resblocks.0.mlp.c_fc.weight"
    intermediate = _shape(shapes, block, "OpenCLIP's first MLP")[0]
    heads = max(1, width // CLIP_HEAD_WIDTH) if width % CLIP_HEAD_WIDTH == 0 else _divisor([width], 8)
    config = TextEncoderConfig(vocab_size=vocab, max_position_embeddings=positions, hidden_size=width,
                               intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
                               hidden_act="gelu", layout="open_clip", skipped_layers=1, pad_token="!")
    return config, [f"{heads} OpenCLIP heads"]


def _infer_vae(shapes: Shapes) -> tuple[VAEConfig, list[str]]:
    ch, in_channels = _shape(shapes, VAE + "encoder.conv_in.weight", "the VAE encoder's conv_in")[:2]
    num_levels = _count(shapes, rf"{re.escape(VAE)}encoder\.down\.(\d+)\.block\.0\.conv1\.weight")
    widths = [_shape(shapes, f"{VAE}encoder.down.{lv}.block.0.conv2.weight", "a VAE encoder block")[0]
              for lv in range(num_levels)]
    blocks = _count(shapes, rf"{re.escape(VAE)}encoder\.down\.0\.block\.(\d+)\.conv1\.weight")
    z_channels = _shape(shapes, VAE + "encoder.conv_out.weight", "the VAE encoder's conv_out")[0] // 2
    embed_dim = _shape(shapes, VAE + "quant_conv.weight", "the VAE's quant_conv")[0] // 2
    out_ch = _shape(shapes, VAE + "decoder.conv_out.weight", "the VAE decoder's conv_out")[0]
    if any(w % ch for w in widths):
        raise CheckpointError(f"looks like SD1.x but did not fit: VAE widths {widths} are not multiples of {ch}")
    config = VAEConfig(in_channels=in_channels, out_ch=out_ch, ch=ch, ch_mult=tuple(w // ch for w in widths),
                       num_res_blocks=blocks, z_channels=z_channels, embed_dim=embed_dim,
                       norm_num_groups=_divisor([ch, *widths], GROUPS))
    return config, [f"{config.norm_num_groups} VAE groups"]


def _infer_sd1(shapes: Shapes) -> tuple[ModelConfig, tuple[str, ...]]:
    unet, unet_assumed = _infer_unet(shapes)
    text, text_assumed = _infer_text(shapes)
    vae, vae_assumed = _infer_vae(shapes)
    # SD1.x works on 64 x 64 latents (512 px at f8); smaller U-Nets keep that latent size.
    config = ModelConfig(name="sd1-inferred", text_encoder=text, unet=unet, vae=vae,
                         image_size=64 * vae.downsample_factor)
    if unet.in_channels == 9:
        config = replace(config, name="sd1-inpainting-inferred")
    return config, tuple(unet_assumed + text_assumed + vae_assumed)


def _infer_sd2(shapes: Shapes, v_prediction: bool | None) -> tuple[ModelConfig, tuple[str, ...]]:
    """SD2.x: 64-wide U-Net heads, OpenCLIP; 768-v (v, 96 x 96 latents, fp32 attention) unless known to be ε.
    The inpainting model (9 input channels) is ε at 512 px."""
    unet, unet_assumed = _infer_unet(shapes, head_width=SD2_HEAD_WIDTH)
    text, text_assumed = _infer_open_clip(shapes)
    vae, vae_assumed = _infer_vae(shapes)
    is_v = unet.in_channels == 4 and v_prediction is not False
    config = ModelConfig(name="sd2-inferred", text_encoder=text, unet=replace(unet, upcast_attention=is_v), vae=vae,
                         scheduler=SchedulerConfig(prediction_type="v_prediction" if is_v else "epsilon"),
                         image_size=(96 if is_v else 64) * vae.downsample_factor)
    if unet.in_channels == 9:
        config = replace(config, name="sd2-inpainting-inferred")
    guess = [V_GUESS] if v_prediction is None and unet.in_channels == 4 else []
    return config, tuple(unet_assumed + text_assumed + vae_assumed + guess)


def _infer_sdxl(shapes: Shapes) -> tuple[ModelConfig, tuple[str, ...]]:
    """SDXL base: CLIP (`embedders.0`) and OpenCLIP with its projection (`embedders.1`), both read at the penultimate
    block without the final norm; 64-wide U-Net heads; SDXL's VAE scaling factor, 128 x 128 latents, guidance 5."""
    unet, unet_assumed = _infer_unet(shapes, head_width=SD2_HEAD_WIDTH)
    first, first_assumed = _infer_text(shapes, SDXL_PREFIX + "embedders.0.transformer.text_model.")
    second, second_assumed = _infer_open_clip(shapes, SDXL_PREFIX + "embedders.1.model.")
    vae, vae_assumed = _infer_vae(shapes)
    config = ModelConfig(name="sdxl-inferred", text_encoder=replace(first, skipped_layers=1, final_norm=False),
                         text_encoder_2=replace(second, final_norm=False, projection_dim=_shape(
                             shapes, SDXL_PREFIX + "embedders.1.model.text_projection", "bigG's text_projection")[1]),
                         unet=unet,
                         vae=replace(vae, scaling_factor=0.13025, force_upcast=True),
                         image_size=128 * vae.downsample_factor,
                         default_sampler="euler", default_guidance=5.0, force_zeros_for_empty_prompt=True)
    return config, (*unet_assumed, *first_assumed, *second_assumed, *vae_assumed, "VAE scaling factor 0.13025")


def _check_fits(config: ModelConfig, shapes: Shapes, family: str = "SD1.x") -> None:
    """Every tensor the inferred model has, with its shape, and nothing else: else what did not fit."""
    expected, found = _expected_shapes(config), _prefixed(shapes)
    missing = [key for key in expected if key not in found]
    extra = [key for key in found if key not in expected]
    misshaped = [f"{key} {found[key]} != {shape}" for key, shape in expected.items()
                 if key in found and found[key] != shape]
    problems = [f"{len(keys)} {kind} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                for kind, keys in (("missing", missing), ("unexpected", extra), ("mis-shaped", misshaped)) if keys]
    if problems:
        raise CheckpointError(f"looks like {family} (closest: {Recognised(family, config).summary()}) but did not "
                              f"fit: {'; '.join(problems)}")
