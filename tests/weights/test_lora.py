"""Reading LoRA files: `FILE[:scale]`, every naming scheme to the same layer, and every malformed file refused in
one line before anything is applied (diffx.weights.lora, diffx.weights.lora_names)."""

from __future__ import annotations

import json

import pytest
import torch

from diffx.errors import CheckpointError, InvalidArgumentError
from diffx.models.configs import sd15, sd21_base, sdxl_base
from diffx.models.stable_diffusion import build_without_weights
from diffx.weights.lora import LoraSpec, read_lora
from diffx.weights.lora_names import LoraTarget, lora_targets, split_lora_key
from tests.weights.lora_files import write_lora

RANK = 2


def pair(down_shape: tuple[int, ...], up_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(down_shape), torch.randn(up_shape)


def kohya_q(tiny_model) -> dict[str, torch.Tensor]:
    """A kohya LoRA of the first cross-attention's W_q, by its SGM name."""
    layer = tiny_model.unet.get_submodule("input_blocks.1.1.transformer_blocks.0.attn2.to_q")
    down, up = pair((RANK, layer.in_features), (layer.out_features, RANK))
    name = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_q"
    return {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(1.0)}


@pytest.mark.parametrize(("text", "scale"), [("a.safetensors", 1.0), ("a.safetensors:0.5", 0.5),
                                             ("a.safetensors:-4", -4.0)])
def test_file_and_scale_are_parsed(text, scale, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.safetensors").write_bytes(b"")
    assert LoraSpec.parse(text).scale == scale


@pytest.mark.parametrize(("text", "problem"), [
    ("a.safetensors:nan", "finite"), ("a.safetensors:inf", "finite"), ("a.safetensors:4.5", "within ±4"),
    ("missing.safetensors", "no such file"), ("a.txt", "expected a .safetensors"), ("", "expected a .safetensors"),
    ("a.safetensors:abc", "expected a .safetensors")])
def test_bad_file_or_scale_is_refused_in_one_line(text, problem, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.safetensors").write_bytes(b"")
    (tmp_path / "a.txt").write_bytes(b"")
    with pytest.raises(InvalidArgumentError, match=problem) as error:
        LoraSpec.parse(text)
    assert "\n" not in str(error.value) and len(str(error.value)) <= 300


def test_every_scheme_names_the_same_layer():
    with torch.device("meta"):
        sd = lora_targets(build_without_weights(sd15()))
        xl = lora_targets(build_without_weights(sdxl_base()))
        sd2 = lora_targets(build_without_weights(sd21_base()))
    q = LoraTarget("unet", "input_blocks.1.1.transformer_blocks.0.attn1.to_q")
    assert sd["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"] == q
    assert sd["lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"] == q
    assert sd["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"] == q
    assert sd["lora_unet_up_blocks_1_resnets_2_conv1"] == LoraTarget("unet", "output_blocks.5.0.in_layers.2")
    assert sd["unet.mid_block.attentions.0.proj_in"] == LoraTarget("unet", "middle_block.1.proj_in")
    clip_q = LoraTarget("text_encoder", "text_model.encoder.layers.3.self_attn.q_proj")
    assert sd["lora_te_text_model_encoder_layers_3_self_attn_q_proj"] == clip_q
    assert sd["text_encoder.text_model.encoder.layers.3.self_attn.q_proj"] == clip_q
    assert sd["text_encoder.encoder.layers.3.self_attn.q_proj"] == clip_q  # transformers >= 5.6's names
    # SDXL: bigG's W_k is the middle third of OpenCLIP's stacked in_proj; its MLP is c_fc / c_proj.
    k = LoraTarget("text_encoder", "embedders.1.model.transformer.resblocks.7.attn.in_proj", (1280, 2560))
    assert xl["lora_te2_text_model_encoder_layers_7_self_attn_k_proj"] == k
    assert xl["text_encoder_2.text_model.encoder.layers.7.self_attn.k_proj"] == k
    assert xl["lora_te2_text_model_encoder_layers_7_mlp_fc1"] == LoraTarget(
        "text_encoder", "embedders.1.model.transformer.resblocks.7.mlp.c_fc")
    assert xl["lora_te1_text_model_encoder_layers_0_mlp_fc2"] == LoraTarget(
        "text_encoder", "embedders.0.transformer.text_model.encoder.layers.0.mlp.fc2")
    assert xl["lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k"] == xl[
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k"]
    assert xl["lora_unet_label_emb_0_0"] == LoraTarget("unet", "label_emb.0.0")
    # SD2: OpenCLIP ViT-H under the plain `lora_te_` / `text_encoder.` names.
    assert sd2["lora_te_text_model_encoder_layers_0_self_attn_q_proj"] == LoraTarget(
        "text_encoder", "transformer.resblocks.0.attn.in_proj", (0, 1024))
    assert sd2["text_encoder.text_model.encoder.layers.22.self_attn.out_proj"] == LoraTarget(
        "text_encoder", "transformer.resblocks.22.attn.out_proj")


@pytest.mark.parametrize(("key", "split"), [
    ("lora_unet_x_to_q.lora_down.weight", ("lora_unet_x_to_q", "down")),
    ("unet.a.to_q.lora_B.weight", ("unet.a.to_q", "up")),
    ("lora_te_x.alpha", ("lora_te_x", "alpha")),
    ("unet.a.attn1.processor.to_out_lora.up.weight", ("unet.a.attn1.to_out.0", "up")),
    ("text_encoder.t.self_attn.to_k_lora.down.weight", ("text_encoder.t.self_attn.k_proj", "down")),
    ("text_encoder.t.q_proj.lora_linear_layer.down.weight", ("text_encoder.t.q_proj", "down")),
    ("lora_unet_x.hada_w1_a", ("lora_unet_x", "hada_w1_a")), ("lora_te_y.lokr_w2_b", ("lora_te_y", "lokr_w2_b")),
    ("lora_unet_x.lokr_t2", ("lora_unet_x", "lokr_t2")), ("lora_unet_x.dora_scale", None)])
def test_keys_split_into_layer_and_part(key, split):
    assert split_lora_key(key) == split


def test_a_good_file_reads_and_pt_reads_as_safetensors(tiny_model, tmp_path):
    tensors = kohya_q(tiny_model)
    from_safetensors = read_lora(write_lora(tmp_path / "q.safetensors", tensors), tiny_model)
    torch.save(tensors, tmp_path / "q.pt")  # read by the code-free unpickler
    from_pt = read_lora(tmp_path / "q.pt", tiny_model)
    (layer,), (same,) = from_safetensors.layers, from_pt.layers
    assert layer.target == same.target and layer.factor == same.factor == 1.0 / RANK
    assert torch.equal(layer.down, same.down) and torch.equal(layer.up, same.up)
    # kohya's alpha without --network_alpha: the rank, stored as an integer
    tensors["lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_q.alpha"] = torch.tensor(RANK)
    assert read_lora(write_lora(tmp_path / "int.safetensors", tensors), tiny_model).layers[0].factor == 1.0


def broken(tensors: dict[str, torch.Tensor], how: str) -> dict[str, torch.Tensor]:
    name = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_q"
    down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
    changes = {
        "unknown": {"lora_unet_no_such_layer.lora_down.weight": down, "something_else": down},
        "half": {f"{name}.lora_up.weight": None},
        "rank": {f"{name}.lora_up.weight": torch.randn(up.shape[0], RANK + 1)},
        "width": {f"{name}.lora_down.weight": torch.randn(RANK, down.shape[1] + 1)},
        "nan": {f"{name}.lora_up.weight": up.clone().index_fill_(0, torch.tensor([0]), float("nan"))},
        "integer": {f"{name}.lora_down.weight": down.to(torch.int32)},
        "alpha": {f"{name}.alpha": torch.ones(2)},
    }[how]
    return {key: t for key, t in {**tensors, **changes}.items() if t is not None}


@pytest.mark.parametrize(("how", "problem"), [
    ("unknown", "2 of 5 keys name no LoRA layer of this tiny model .*lora_unet_no_such_layer"),
    ("half", "has no up"), ("rank", "do not fit a layer"), ("width", "do not fit a layer"),
    ("nan", "NaN or infinite"), ("integer", "is int32, not floating point"), ("alpha", "expected one number")])
def test_a_malformed_file_is_refused_in_one_line(how, problem, tiny_model, tmp_path):
    file = write_lora(tmp_path / f"{how}.safetensors", broken(kohya_q(tiny_model), how))
    with pytest.raises(CheckpointError, match=problem) as error:
        read_lora(file, tiny_model)
    assert "\n" not in str(error.value) and len(str(error.value)) <= 300, str(error.value)


def test_a_lora_for_another_family_is_refused(tmp_path):
    with torch.device("meta"):
        sdxl = build_without_weights(sdxl_base())
    file = write_lora(tmp_path / "sd15.safetensors", {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.randn(RANK, 768),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.randn(768, RANK)})
    with pytest.raises(CheckpointError, match="2 of 2 keys name no LoRA layer of this sdxl-base model"):
        read_lora(file, sdxl)


@pytest.mark.parametrize(("config", "problem"), [
    ({"unet.lora_alpha": 8}, None), ({"unet.use_dora": True}, "sets unet.use_dora; diffx reads plain LoRA only"),
    ({"unet.rank_pattern": {"to_q": 8}}, "sets unet.rank_pattern"), ({"unet.lora_alpha": "x"}, "not a finite number")])
def test_the_peft_config_in_the_header_gives_alpha_or_is_refused(config, problem, tiny_model, tmp_path):
    layer = tiny_model.unet.get_submodule("input_blocks.1.1.transformer_blocks.0.attn2.to_q")
    name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q"
    file = write_lora(tmp_path / "peft.safetensors", {f"{name}.lora_A.weight": torch.randn(RANK, layer.in_features),
                                                      f"{name}.lora_B.weight": torch.randn(layer.out_features, RANK)},
                      {"lora_adapter_metadata": json.dumps(config)})
    if problem is None:
        assert read_lora(file, tiny_model).layers[0].factor == 8 / RANK
    else:
        with pytest.raises(CheckpointError, match=problem):
            read_lora(file, tiny_model)
