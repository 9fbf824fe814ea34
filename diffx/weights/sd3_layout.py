"""A diffusers SD3 / SD3.5 `transformer/` folder in diffx's terms: its config.json as an `MMDiTConfig`, its
tensors (`SD3Transformer2DModel`'s names) renamed to the keys of Stability's single files, which diffx's
`MMDiT` mirrors. The inverse of diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`:

- renames: `pos_embed.proj` -> `x_embedder.proj`, `time_text_embed.timestep_embedder.linear_1/2` ->
  `t_embedder.mlp.0/2`, `...text_embedder...` -> `y_embedder.mlp.0/2`, `transformer_blocks.N.norm1.linear` ->
  `joint_blocks.N.x_block.adaLN_modulation.1`, `attn.to_out.0` -> `x_block.attn.proj`, `attn.to_add_out` ->
  `context_block.attn.proj`, `attn.norm_q` -> `x_block.attn.ln_q`, `ff.net.0.proj` -> `x_block.mlp.fc1`,
  `proj_out` -> `final_layer.linear`...;
- q, k, v stacked back into one `qkv` (rows W_q; W_k; W_v), per stream and for MMDiT-X's `attn2`;
- the halves of every 2-vector adaLN swapped: diffusers' `AdaLayerNormContinuous` (`norm_out`, and the last
  block's pre-only `norm1_context`) stores (scale, shift), SAI's code reads (shift, scale).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffx.errors import CheckpointError, elide
from diffx.models.mmdit import MMDiT, MMDiTConfig, sd3_medium, sd35_large, sd35_medium
from diffx.weights.discovery import read_json

# diffx (SAI) module path <- diffusers module path, outside the blocks.
TOP_LEVEL = {
    "x_embedder.proj": "pos_embed.proj",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "context_embedder": "context_embedder",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
    "final_layer.linear": "proj_out",
}
# Inside `joint_blocks.N` <- inside `transformer_blocks.N`; three sources are stacked (q; k; v).
BLOCK = {
    "x_block.adaLN_modulation.1": ("norm1.linear",),
    "context_block.adaLN_modulation.1": ("norm1_context.linear",),
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn.proj": ("attn.to_out.0",),
    "context_block.attn.proj": ("attn.to_add_out",),
    "x_block.attn.ln_q": ("attn.norm_q",),
    "x_block.attn.ln_k": ("attn.norm_k",),
    "context_block.attn.ln_q": ("attn.norm_added_q",),
    "context_block.attn.ln_k": ("attn.norm_added_k",),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
    "x_block.attn2.proj": ("attn2.to_out.0",),
    "x_block.attn2.ln_q": ("attn2.norm_q",),
    "x_block.attn2.ln_k": ("attn2.norm_k",),
    "x_block.mlp.fc1": ("ff.net.0.proj",),
    "x_block.mlp.fc2": ("ff.net.2",),
    "context_block.mlp.fc1": ("ff_context.net.0.proj",),
    "context_block.mlp.fc2": ("ff_context.net.2",),
}


def module_sources(config: MMDiTConfig) -> dict[str, tuple[str, ...]]:
    """Every diffx module path that can hold tensors -> the diffusers module path(s) they come from."""
    sources = {diffx: (diffusers,) for diffx, diffusers in TOP_LEVEL.items()}
    for index in range(config.depth):
        for diffx, diffusers in BLOCK.items():
            sources[f"joint_blocks.{index}.{diffx}"] = tuple(f"transformer_blocks.{index}.{name}" for name in diffusers)
    return sources


def swapped_modules(config: MMDiTConfig) -> set[str]:
    """The 2-vector adaLN Linears, whose output halves diffusers stores as (scale, shift), SAI as (shift, scale)."""
    return {"final_layer.adaLN_modulation.1", f"joint_blocks.{config.depth - 1}.context_block.adaLN_modulation.1"}


def expected_shapes(config: MMDiTConfig) -> dict[str, torch.Size]:
    """diffx's keys and shapes for `config`, from a model built on the meta device (no memory, no time)."""
    with torch.device("meta"):
        return {key: tensor.shape for key, tensor in MMDiT(config).state_dict().items()}


def diffusers_to_diffx(state: Mapping[str, Tensor], config: MMDiTConfig, where: str = "the transformer"
                       ) -> dict[str, Tensor]:
    """An `SD3Transformer2DModel` state dict -> diffx's `MMDiT` state dict (SAI's keys). A missing, unknown or
    misshapen tensor is a CheckpointError naming it and `where` the tensors came from."""
    sources, swapped = module_sources(config), swapped_modules(config)
    used = {"pos_embed.pos_embed"}
    converted = {}
    for key, shape in expected_shapes(config).items():
        if key == "pos_embed":  # a buffer, not a module's leaf
            names, swap = ("pos_embed.pos_embed",), False
        else:
            module, leaf = key.rsplit(".", 1)
            names, swap = tuple(f"{name}.{leaf}" for name in sources[module]), module in swapped
        missing = [name for name in names if name not in state]
        if missing:
            raise CheckpointError(f"{where} lacks {missing[0]} (diffx's {key}); is it the transformer of an "
                                  f"{config.name} model, with its config.json?")
        used.update(names)
        tensor = torch.cat([state[name] for name in names]) if len(names) > 1 else state[names[0]]
        if swap:
            scale, shift = tensor.chunk(2)
            tensor = torch.cat([shift, scale])
        if tensor.shape != shape:
            raise CheckpointError(f"{where}: {' + '.join(names)} is {tuple(tensor.shape)}, but {config.name}'s "
                                  f"{key} is {tuple(shape)}; the tensors do not match the config.json")
        converted[key] = tensor
    unknown = sorted(set(state) - used)
    if unknown:
        raise CheckpointError(f"{where} has tensors diffx's MMDiT does not know: {elide(', '.join(unknown), 40)}; "
                              f"is it an SD3 transformer, with its own config.json?")
    return converted


# diffusers' `SD3Transformer2DModel` settings, and what diffx's `MMDiTConfig` calls them.
REQUIRED = {"num_layers": "depth", "num_attention_heads": "heads", "attention_head_dim": "head_dim",
            "patch_size": "patch_size", "in_channels": "in_channels", "joint_attention_dim": "context_dim",
            "pooled_projection_dim": "pooled_dim", "pos_embed_max_size": "pos_embed_max_size",
            "sample_size": "sample_size", "caption_projection_dim": ""}
OPTIONAL = ("out_channels", "qk_norm", "dual_attention_layers")
QK_NORMS = (None, "rms_norm")


def _shown(value: Any) -> str:
    """A JSON value as the file spells it, cut at 40 characters."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:40] + " …"


def _positive(where: str, name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CheckpointError(f"{where}.{name} is {_shown(value)}; it must be a positive whole number")
    return value


def sd3_config(data: Any, where: str = "transformer/config.json") -> MMDiTConfig:
    """A diffusers `transformer/config.json`'s contents -> `MMDiTConfig`, named after the preset it equals
    ("mmdit" if none). Anything diffx's MMDiT cannot build is one CheckpointError naming the field."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where} is {type(data).__name__}, not an object of SD3Transformer2DModel settings")
    kind = data.get("_class_name", "SD3Transformer2DModel")
    if kind != "SD3Transformer2DModel":
        raise CheckpointError(f"{where} configures a {_shown(kind)}, not an SD3Transformer2DModel; "
                              f"give the transformer/ folder of an SD3 or SD3.5 model")
    unknown = sorted(name for name in data if not name.startswith("_") and name not in (*REQUIRED, *OPTIONAL))
    if unknown:
        raise CheckpointError(f"{where} has fields diffx's MMDiT does not know: {elide(', '.join(unknown), 40)}")
    lacking = [name for name in REQUIRED if name not in data]
    if lacking:
        raise CheckpointError(f"{where} lacks {lacking[0]!r}; the transformer's config.json is incomplete")
    fields = {field: _positive(where, name, data[name]) for name, field in REQUIRED.items() if field}
    width = fields["heads"] * fields["head_dim"]
    if data["caption_projection_dim"] != width or width % 4:
        raise CheckpointError(f"{where}.caption_projection_dim is {_shown(data['caption_projection_dim'])}; "
                              f"diffx's MMDiT needs it equal to heads × head_dim ({width}), a multiple of 4")
    out_channels = data.get("out_channels")  # null: as many as in (diffusers' rule)
    fields["out_channels"] = fields["in_channels"] if out_channels is None else _positive(
        where, "out_channels", out_channels)
    if data.get("qk_norm") not in QK_NORMS:
        raise CheckpointError(f"{where}.qk_norm is {_shown(data['qk_norm'])}; diffx's MMDiT knows "
                              f"null (SD3) and \"rms_norm\" (SD3.5)")
    layers = data.get("dual_attention_layers", [])
    if not isinstance(layers, list | tuple) or not all(isinstance(index, int) and not isinstance(index, bool)
                                               and 0 <= index < fields["depth"] for index in layers):
        raise CheckpointError(f"{where}.dual_attention_layers is {_shown(layers)}; it must be a list "
                              f"of block numbers from 0 to {fields['depth'] - 1}")
    config = MMDiTConfig(name="mmdit", qk_norm=data.get("qk_norm") == "rms_norm",
                         dual_attention_layers=tuple(sorted(set(layers))), **fields)
    for preset in (sd3_medium(), sd35_medium(), sd35_large()):
        if dataclasses.replace(preset, name=config.name) == config:
            return preset
    return config


def read_sd3_config(folder: Path) -> MMDiTConfig:
    """The `MMDiTConfig` of a diffusers SD3 model folder's `transformer/config.json`, validated."""
    path = folder / "transformer" / "config.json"
    return sd3_config(read_json(path), str(path))
