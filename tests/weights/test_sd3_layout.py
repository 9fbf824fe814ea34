"""A diffusers SD3 `transformer/` folder read into diffx's terms: config.json -> MMDiTConfig, checked; tensor names
-> the single files' keys, q/k/v stacked and the 2-vector adaLNs' halves swapped. (Parity of the whole network
through this mapping: tests/models/test_mmdit.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import SD3Transformer2DModel

from diffx.errors import ERROR_LINE_CHARS, CheckpointError
from diffx.models.mmdit import MMDiTConfig, sd35_medium
from diffx.weights.sd3_layout import diffusers_to_diffx, read_sd3_config, sd3_config

# SD3.5-medium's transformer/config.json as the hub holds it.
SD35_MEDIUM = {"_class_name": "SD3Transformer2DModel", "_diffusers_version": "0.31.0.dev0",
               "attention_head_dim": 64, "caption_projection_dim": 1536, "dual_attention_layers": list(range(13)),
               "in_channels": 16, "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 24,
               "out_channels": 16, "patch_size": 2, "pooled_projection_dim": 2048, "pos_embed_max_size": 384,
               "qk_norm": "rms_norm", "sample_size": 128}
# A small one with every kind of block: dual attention in block 0, QK-norm, the pre-only last block.
SMALL = dict(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
             joint_attention_dim=12, caption_projection_dim=16, pooled_projection_dim=10, out_channels=4,
             pos_embed_max_size=8, qk_norm="rms_norm", dual_attention_layers=[0])


def test_a_folder_config_reads_as_its_preset(tmp_path: Path):
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(SD35_MEDIUM))
    assert read_sd3_config(tmp_path) == sd35_medium()
    custom = sd3_config({**SD35_MEDIUM, "num_layers": 12, "dual_attention_layers": [3, 1], "out_channels": None})
    assert custom == MMDiTConfig(name="mmdit", depth=12, heads=24, pos_embed_max_size=384, qk_norm=True,
                                 dual_attention_layers=(1, 3))


@pytest.mark.parametrize("change, message", [
    ({"num_layers": None}, r"num_layers is null; it must be a positive whole number"),
    ({"num_attention_heads": "24"}, r"num_attention_heads is \"24\""),
    ({"caption_projection_dim": 1152}, r"equal to heads × head_dim \(1536\)"),
    ({"qk_norm": "layer_norm"}, r"knows null \(SD3\) and \"rms_norm\""),
    ({"dual_attention_layers": [13, 24]}, r"block numbers from 0 to 23"),
    ({"num_heads": 24}, r"fields diffx's MMDiT does not know: 'num_heads'"),
    ({"_class_name": "UNet2DConditionModel"}, r"configures a \"UNet2DConditionModel\", not an SD3Transformer2DModel"),
])
def test_odd_configs_are_one_clear_error(change: dict, message: str):
    with pytest.raises(CheckpointError, match=message) as caught:
        sd3_config({**SD35_MEDIUM, **change}, "m/transformer/config.json")
    assert "\n" not in str(caught.value) and len(str(caught.value)) <= ERROR_LINE_CHARS


def test_missing_configs_and_fields_are_named(tmp_path: Path):
    with pytest.raises(CheckpointError, match="lacks 'sample_size'"):
        sd3_config({key: value for key, value in SD35_MEDIUM.items() if key != "sample_size"})
    with pytest.raises(CheckpointError, match="is list, not an object"):
        sd3_config([])
    with pytest.raises(CheckpointError, match="config.json is missing"):
        read_sd3_config(tmp_path)


@pytest.fixture(scope="module")
def reference() -> SD3Transformer2DModel:
    torch.manual_seed(0)
    return SD3Transformer2DModel(**SMALL)


def test_tensors_are_renamed_stacked_and_swapped(reference: SD3Transformer2DModel):
    state = reference.state_dict()
    config = sd3_config(SMALL)
    converted = diffusers_to_diffx(state, config)
    # Every tensor is used once: diffx's model has as many numbers as diffusers'.
    assert sum(t.numel() for t in converted.values()) == sum(t.numel() for t in state.values())
    assert torch.equal(converted["x_embedder.proj.weight"], state["pos_embed.proj.weight"])
    assert torch.equal(converted["pos_embed"], state["pos_embed.pos_embed"])
    # q, k, v stacked row-wise, per stream and for MMDiT-X's attn2.
    for diffx, diffusers in (("x_block.attn", "attn.to_{}"), ("context_block.attn", "attn.add_{}_proj"),
                             ("x_block.attn2", "attn2.to_{}")):
        stacked = converted[f"joint_blocks.0.{diffx}.qkv.weight"]
        parts = [state[f"transformer_blocks.0.{diffusers.format(p)}.weight"] for p in "qkv"]
        assert torch.equal(stacked, torch.cat(parts))
    assert torch.equal(converted["joint_blocks.1.context_block.attn.ln_k.weight"],
                       state["transformer_blocks.1.attn.norm_added_k.weight"])
    # diffusers' AdaLayerNormContinuous holds (scale, shift); SAI's final layer and pre-only block (shift, scale).
    width = config.width
    for diffx, diffusers in (("final_layer.adaLN_modulation.1", "norm_out.linear"),
                             ("joint_blocks.1.context_block.adaLN_modulation.1",
                              "transformer_blocks.1.norm1_context.linear")):
        ours, theirs = converted[f"{diffx}.bias"], state[f"{diffusers}.bias"]
        assert torch.equal(ours[:width], theirs[width:]) and torch.equal(ours[width:], theirs[:width])
    # The 6-vector adaLNs keep their order (shift, scale, gate, ... in both).
    assert torch.equal(converted["joint_blocks.0.context_block.adaLN_modulation.1.weight"],
                       state["transformer_blocks.0.norm1_context.linear.weight"])


def test_missing_unknown_and_misshapen_tensors_are_named(reference: SD3Transformer2DModel):
    state = reference.state_dict()
    config = sd3_config(SMALL)
    lacking = {key: value for key, value in state.items() if key != "transformer_blocks.0.attn.add_k_proj.bias"}
    with pytest.raises(CheckpointError, match=r"lacks transformer_blocks.0.attn.add_k_proj.bias \(diffx's "
                                              r"joint_blocks.0.context_block.attn.qkv.bias\)"):
        diffusers_to_diffx(lacking, config)
    with pytest.raises(CheckpointError, match="does not know: 'transformer_blocks.2.norm1.linear.weight'"):
        diffusers_to_diffx({**state, "transformer_blocks.2.norm1.linear.weight": torch.zeros(1)}, config)
    wider = {**state, "proj_out.bias": torch.zeros(17)}
    with pytest.raises(CheckpointError, match=r"proj_out.bias is \(17,\), but mmdit's final_layer.linear.bias is "
                                              r"\(16,\)"):
        diffusers_to_diffx(wider, config)
