"""A diffusers Stable Diffusion folder in diffx's terms: its configs as a `ModelConfig`, its tensors renamed to
the original single-file keys that diffx's modules mirror.

- U-Net and VAE: module paths mapped back by prefix rules generated from the config (the inverse of
  diffusers' `convert_ldm_unet_checkpoint` / `convert_ldm_vae_checkpoint`);
- SD1.x text encoder: a transformers `CLIPTextModel`, whose keys are already diffx's (`text_model.*`);
- SD2.x text encoder: a `CLIPTextModel` with GELU and 23 layers (diffusers' conversion of OpenCLIP ViT-H/14,
  the 24th block dropped), renamed to OpenCLIP's layout, with W_q, W_k, W_v stacked back into `in_proj`
  (the inverse of diffusers' `convert_open_clip_checkpoint`);
- SDXL: `text_encoder/` (CLIPTextModel, CLIP-L) to `conditioner.embedders.0.transformer.*`, `text_encoder_2/`
  (CLIPTextModelWithProjection, OpenCLIP bigG with all its blocks) to `conditioner.embedders.1.model.*`, its
  `text_projection.weight` transposed back into OpenCLIP's `text_projection`; the U-Net's `add_embedding` is
  `label_emb.0`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from diffx.errors import CheckpointError
from diffx.models.configs import ModelConfig, SchedulerConfig, TextEncoderConfig, UNetConfig, VAEConfig
from diffx.models.open_clip import OPEN_CLIP_PREFIX
from diffx.models.stable_diffusion import ORIGINAL_PREFIXES
from diffx.models.tokenizer import END_TOKEN
from diffx.weights.architecture import unsupported_family
from diffx.weights.discovery import read_json

# ---------------------------------------------------------------------------------------------------
# diffusers names -> original (LDM) names
#
# A rule maps a diffusers module path to the LDM module path; a key is renamed by its longest module
# prefix that has a rule (the transformer blocks inside attentions keep their names, so one rule per
# attention suffices). The rules follow the block layout of `UNet`/`AutoencoderKL` for a config.

UNET_RESNET_LEAVES = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection",
}
VAE_RESNET_LEAVES = {"conv_shortcut": "nin_shortcut"}
# Newer diffusers names first, then the names of diffusers < 0.14 (query/key/value/proj_attn).
VAE_ATTENTION_LEAVES = {
    "group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
    "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out",
}


def _add_rule(rules: dict[str, str], diffusers: str, original: str, leaves: dict[str, str] | None = None
              ) -> None:
    rules[diffusers] = original
    for diffusers_leaf, original_leaf in (leaves or {}).items():
        rules[f"{diffusers}.{diffusers_leaf}"] = f"{original}.{original_leaf}"


def unet_rename_rules(config: UNetConfig) -> dict[str, str]:
    """diffusers `UNet2DConditionModel` module paths -> LDM `UNetModel` module paths."""
    rules = {
        "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
        "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",  # SDXL's y MLP
    }
    num_levels, per_level = len(config.channel_mult), config.num_res_blocks
    block = 1  # input_blocks.0 is conv_in
    for level in range(num_levels):
        for i in range(per_level):
            _add_rule(rules, f"down_blocks.{level}.resnets.{i}", f"input_blocks.{block}.0",
                      UNET_RESNET_LEAVES)
            if level in config.attention_levels:
                _add_rule(rules, f"down_blocks.{level}.attentions.{i}", f"input_blocks.{block}.1")
            block += 1
        if level != num_levels - 1:
            _add_rule(rules, f"down_blocks.{level}.downsamplers.0.conv", f"input_blocks.{block}.0.op")
            block += 1
    _add_rule(rules, "mid_block.resnets.0", "middle_block.0", UNET_RESNET_LEAVES)
    _add_rule(rules, "mid_block.attentions.0", "middle_block.1")
    _add_rule(rules, "mid_block.resnets.1", "middle_block.2", UNET_RESNET_LEAVES)
    block = 0
    for up, level in enumerate(reversed(range(num_levels))):  # up_blocks.0 is the deepest level
        has_attention = level in config.attention_levels
        for i in range(per_level + 1):
            _add_rule(rules, f"up_blocks.{up}.resnets.{i}", f"output_blocks.{block}.0", UNET_RESNET_LEAVES)
            if has_attention:
                _add_rule(rules, f"up_blocks.{up}.attentions.{i}", f"output_blocks.{block}.1")
            if level != 0 and i == per_level:  # the upsampler follows the last resnet (and attention)
                _add_rule(rules, f"up_blocks.{up}.upsamplers.0.conv",
                          f"output_blocks.{block}.{2 if has_attention else 1}.conv")
            block += 1
    return rules


def vae_rename_rules(config: VAEConfig) -> dict[str, str]:
    """diffusers `AutoencoderKL` module paths -> LDM `AutoencoderKL` module paths."""
    rules = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
    num_levels, per_level = len(config.ch_mult), config.num_res_blocks
    for level in range(num_levels):
        for i in range(per_level):
            _add_rule(rules, f"encoder.down_blocks.{level}.resnets.{i}", f"encoder.down.{level}.block.{i}",
                      VAE_RESNET_LEAVES)
        if level != num_levels - 1:
            _add_rule(rules, f"encoder.down_blocks.{level}.downsamplers.0.conv",
                      f"encoder.down.{level}.downsample.conv")
    for up, level in enumerate(reversed(range(num_levels))):  # decoder.up_blocks.0 is LDM's up.{last}
        for i in range(per_level + 1):
            _add_rule(rules, f"decoder.up_blocks.{up}.resnets.{i}", f"decoder.up.{level}.block.{i}",
                      VAE_RESNET_LEAVES)
        if level != 0:
            _add_rule(rules, f"decoder.up_blocks.{up}.upsamplers.0.conv", f"decoder.up.{level}.upsample.conv")
    for part in ("encoder", "decoder"):
        for i in range(2):
            _add_rule(rules, f"{part}.mid_block.resnets.{i}", f"{part}.mid.block_{i + 1}", VAE_RESNET_LEAVES)
        _add_rule(rules, f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", VAE_ATTENTION_LEAVES)
    return rules


def rename_key(key: str, rules: dict[str, str]) -> str:
    """Rename `key` by the rule of its longest module prefix; keys without a rule keep their name."""
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in rules:
            return ".".join([rules[prefix], *parts[end:]])
    return key


def unet_from_diffusers(state_dict: dict[str, Tensor], config: UNetConfig) -> dict[str, Tensor]:
    """A diffusers U-Net state dict -> original keys (`model.diffusion_model.*`)."""
    rules = unet_rename_rules(config)
    return {ORIGINAL_PREFIXES["unet"] + rename_key(key, rules): tensor for key, tensor in state_dict.items()}


def vae_from_diffusers(state_dict: dict[str, Tensor], config: VAEConfig) -> dict[str, Tensor]:
    """A diffusers VAE state dict -> original keys (`first_stage_model.*`).

    The mid-block attention of the LDM VAE uses 1x1 convolutions where diffusers uses Linear layers:
    same numbers, weight (C, C) -> (C, C, 1, 1).
    """
    rules = vae_rename_rules(config)
    converted = {}
    for key, tensor in state_dict.items():
        original = rename_key(key, rules)
        if ".mid.attn_1." in original and original.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        converted[ORIGINAL_PREFIXES["vae"] + original] = tensor
    return converted


def text_encoder_from_transformers(state_dict: dict[str, Tensor], prefix: str = ORIGINAL_PREFIXES["text_encoder"]
                                   ) -> dict[str, Tensor]:
    """A transformers `CLIPTextModel` state dict -> original keys (`cond_stage_model.transformer.*`, or SDXL's
    `conditioner.embedders.0.transformer.*`).

    transformers < 5 saved the keys under `text_model.` (as all SD folders on the hub have them);
    transformers 5 saves them without it.
    """
    return {
        prefix + ("" if key.startswith("text_model.") else "text_model.") + key: tensor
        for key, tensor in state_dict.items() if not key.endswith("embeddings.position_ids")
    }


# transformers' CLIPTextModel module paths -> OpenCLIP's (one rule per leaf module, as for the U-Net).
OPEN_CLIP_LEAVES = {
    "embeddings.token_embedding": "token_embedding", "final_layer_norm": "ln_final",
    "layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
}


def open_clip_from_transformers(state_dict: dict[str, Tensor], prefix: str = OPEN_CLIP_PREFIX) -> dict[str, Tensor]:
    """SD2's converted text encoder (a transformers `CLIPTextModel`) -> OpenCLIP keys (`cond_stage_model.model.*`);
    SDXL's bigG (a `CLIPTextModelWithProjection`) -> `conditioner.embedders.1.model.*`, its Linear
    `text_projection.weight` (out, in) transposed to OpenCLIP's right-multiplied `text_projection` (in, out).

    `encoder.layers.N.<leaf>` -> `transformer.resblocks.N.<OpenCLIP leaf>`; the position embedding becomes the
    bare `positional_embedding`; per block, q_proj, k_proj, v_proj (each (1024, 1024)) are stacked row-wise
    into `attn.in_proj_weight` (3072, 1024), and their biases into `attn.in_proj_bias`.
    """
    converted: dict[str, Tensor] = {}
    projections: dict[str, dict[str, Tensor]] = {}
    for key, tensor in state_dict.items():
        key = key.removeprefix("text_model.")
        if key.endswith("embeddings.position_ids"):
            continue
        if key in ("embeddings.position_embedding.weight", "text_projection.weight"):
            name = "positional_embedding" if key.startswith("embeddings") else "text_projection"
            converted[prefix + name] = tensor if name == "positional_embedding" else tensor.T.contiguous()
            continue
        key = re.sub(r"^encoder\.layers\.(\d+)\.", r"transformer.resblocks.\1.", key)
        if match := re.fullmatch(r"(.*)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            block, which, kind = match.groups()
            projections.setdefault(f"{block}.attn.in_proj_{kind}", {})[which] = tensor
            continue
        module, leaf = key.rsplit(".", 1)
        for transformers_name, open_clip_name in OPEN_CLIP_LEAVES.items():
            if module == transformers_name or module.endswith("." + transformers_name):
                module = module.removesuffix(transformers_name) + open_clip_name
                break
        converted[f"{prefix}{module}.{leaf}"] = tensor
    for key, parts in projections.items():
        converted[prefix + key] = torch.cat([parts["q"], parts["k"], parts["v"]])  # (3C, C) or (3C,)
    return converted


# ---------------------------------------------------------------------------------------------------
# Configs


def _not_supported(path: Path, family: str) -> CheckpointError:
    return CheckpointError(f"{path}: {unsupported_family(family)}")


def pad_token_of(folder: Path, open_clip: bool, tokenizer: str = "tokenizer") -> str:
    """The tokenizer folder's pad token (SD2's and SDXL's `tokenizer_2` say "!"), else the family's."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        file = folder / tokenizer / name
        pad = read_json(file).get("pad_token") if file.is_file() else None
        if pad is not None:
            return pad["content"] if isinstance(pad, dict) else pad
    return "!" if open_clip else END_TOKEN


def _unet_heads(folder: Path, unet: dict) -> dict:
    """`num_heads` or, for 64-wide heads (SD2), `num_head_channels`, from diffusers' per-level head counts.

    A diffusers quirk: `attention_head_dim` holds the number of heads (SD1.x: 8; SD2.x: [5, 10, 20, 20]).
    """
    heads = unet.get("num_attention_heads") or unet.get("attention_head_dim", 8)
    counts = heads if isinstance(heads, list) else [heads] * len(unet["block_out_channels"])
    if len(set(counts)) == 1:
        return {"num_heads": counts[0]}
    widths = {width // count for width, count in zip(unet["block_out_channels"], counts, strict=True)}
    if len(widths) != 1:
        raise CheckpointError(f"{folder}: a U-Net with head counts {counts} that are neither one number nor one "
                              "head width; diffx does not run it")
    return {"num_head_channels": widths.pop()}


def text_config(text: dict, **fields: object) -> TextEncoderConfig:
    """A transformers CLIPTextConfig's sizes (its `projection_dim` only where `fields` says: SD2's is unused)."""
    sizes = {name: text[name] for name in TextEncoderConfig.__dataclass_fields__ if name in text and name not in fields}
    return TextEncoderConfig(**{**sizes, "projection_dim": 0, **fields})


def _transformer_depth(depth: int | list[int], attention_levels: tuple[int, ...]) -> int | tuple[int, ...]:
    """diffusers' `transformer_layers_per_block` as diffx writes it: one number when every level with attention
    has the same, else one per level with 0 where there is none (SDXL's [1, 2, 10] -> (0, 2, 10))."""
    if isinstance(depth, int):
        return depth
    used = {depth[level] for level in attention_levels}
    return used.pop() if len(used) == 1 else tuple(d if lv in attention_levels else 0 for lv, d in enumerate(depth))


def _sdxl_text(folder: Path, first: dict) -> dict:
    """SDXL's two encoders, both read at the penultimate block without the final norm; bigG projects the pooled
    output (`text_encoder_2`, a CLIPTextModelWithProjection)."""
    second = read_json(folder / "text_encoder_2" / "config.json")
    return {"text_encoder": text_config(first, layout="clip", pad_token=pad_token_of(folder, False),
                                         skipped_layers=1, final_norm=False),
            "text_encoder_2": text_config(second, layout="open_clip", skipped_layers=1, final_norm=False,
                                           pad_token=pad_token_of(folder, True, "tokenizer_2"),
                                           projection_dim=second["projection_dim"])}


def vae_config_from_diffusers(vae: dict, force_upcast: bool = False) -> VAEConfig:
    """A diffusers `vae/config.json`'s AutoencoderKL as diffx's `VAEConfig` (SD3's: 16 channels, a shift, no quant
    convs). `force_upcast`: only diffusers' SDXL pipeline reads the file's, so the caller says."""
    channels = vae["block_out_channels"]
    return VAEConfig(
        in_channels=vae.get("in_channels", 3), out_ch=vae.get("out_channels", 3), ch=channels[0],
        ch_mult=tuple(c // channels[0] for c in channels), num_res_blocks=vae.get("layers_per_block", 2),
        z_channels=vae.get("latent_channels", 4), embed_dim=vae.get("latent_channels", 4),
        norm_num_groups=vae.get("norm_num_groups", 32), scaling_factor=vae.get("scaling_factor", 0.18215),
        shift_factor=vae.get("shift_factor") or 0.0, use_quant_conv=vae.get("use_quant_conv", True),
        force_upcast=force_upcast)


def config_from_diffusers(folder: Path) -> ModelConfig:
    """Our `ModelConfig` from the config.json files of a diffusers Stable Diffusion folder."""
    unet = read_json(folder / "unet" / "config.json")
    vae = read_json(folder / "vae" / "config.json")
    text = read_json(folder / "text_encoder" / "config.json")
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler = read_json(scheduler_file) if scheduler_file.is_file() else {}

    sdxl = unet.get("addition_embed_type") == "text_time"
    if unet.get("addition_embed_type") not in (None, "text_time") or unet.get("class_embed_type") is not None:
        raise _not_supported(folder, f"a U-Net with {unet.get('addition_embed_type') or unet['class_embed_type']} "
                                     "conditioning")
    # OpenAI's CLIP uses quick_gelu; OpenCLIP's towers (SD2.x) exact GELU.
    open_clip = text.get("hidden_act") == "gelu"
    attention_levels = tuple(level for level, kind in enumerate(unet["down_block_types"])
                             if kind.startswith("CrossAttn"))
    index = read_json(folder / "model_index.json") if (folder / "model_index.json").is_file() else {}
    unet_channels = unet["block_out_channels"]
    vae_config = vae_config_from_diffusers(vae, force_upcast=sdxl and vae.get("force_upcast", True))
    defaults = SchedulerConfig()
    return ModelConfig(
        name=folder.name,
        **(_sdxl_text(folder, text) if sdxl else {"text_encoder": text_config(
            text, layout="open_clip" if open_clip else "clip", pad_token=pad_token_of(folder, open_clip))}),
        unet=UNetConfig(
            in_channels=unet.get("in_channels", 4), out_channels=unet.get("out_channels", 4),
            model_channels=unet_channels[0], channel_mult=tuple(c // unet_channels[0] for c in unet_channels),
            num_res_blocks=unet.get("layers_per_block", 2),
            attention_levels=attention_levels,
            transformer_depth=_transformer_depth(unet.get("transformer_layers_per_block", 1), attention_levels),
            adm_in_channels=unet.get("projection_class_embeddings_input_dim") or 0 if sdxl else 0,
            context_dim=unet.get("cross_attention_dim", 768), norm_num_groups=unet.get("norm_num_groups", 32),
            use_linear_in_transformer=bool(unet.get("use_linear_projection")),
            upcast_attention=bool(unet.get("upcast_attention")), **_unet_heads(folder, unet),
        ),
        vae=vae_config,
        scheduler=SchedulerConfig(**{
            name: scheduler.get(name, getattr(defaults, name))
            for name in SchedulerConfig.__dataclass_fields__
        }),
        image_size=unet.get("sample_size", 64) * vae_config.downsample_factor,
        # SDXL: diffusers' defaults (Euler, guidance 5, zeros without a negative prompt unless the folder says)
        **({"default_sampler": "euler", "default_guidance": 5.0,
            "force_zeros_for_empty_prompt": index.get("force_zeros_for_empty_prompt", True)} if sdxl else {}),
    )


