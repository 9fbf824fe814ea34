"""Inspecting a LoRA file (diffx.weights.lora_inspect, lora_metadata): each layer's ‖ΔW‖_F equal to the norm of
s·(alpha/r)·B A built explicitly from the file's tensors (kohya with LoCon convolutions, PEFT with alpha in its
header), blocks in the order they run, the header's training metadata and trigger words, and a file for another
family refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from diffx.errors import CheckpointError
from diffx.models.configs import sd15, tiny
from diffx.models.stable_diffusion import build_without_weights
from diffx.weights.lora_inspect import inspect_lora
from diffx.weights.lora_metadata import key_format, training_facts, trigger_words
from diffx.weights.lora_names import lora_targets
from tests.weights.lora_files import ATTENTION_LEAVES, adapted_layers, kohya_tensors, peft_tensors, write_lora

SCALE = 0.7


@pytest.fixture(scope="module")
def skeleton():
    """The tiny model's layout, built without weights: all the inspector reads."""
    return build_without_weights(tiny())


def explicit_norm(down: torch.Tensor, up: torch.Tensor, factor: float) -> float:
    """‖s · factor · B A‖_F with ΔW built in float64: a convolution's A flattened to (r, in·kh·kw)."""
    delta = up.double().flatten(1) @ down.double().flatten(1)
    return float(torch.linalg.matrix_norm(SCALE * factor * delta))


def test_kohya_norms_equal_the_explicit_update(skeleton, tmp_path):
    unet = adapted_layers(skeleton.unet, (*ATTENTION_LEAVES, "in_layers.2", "out_layers.3"))  # LoCon: 3x3 convs
    text = adapted_layers(skeleton.text_encoder, ATTENTION_LEAVES)
    assert any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in unet.values())
    tensors = {**kohya_tensors(unet, "lora_unet_", rank=4, alpha=1.5, seed=1),
               **kohya_tensors(text, "lora_te_", rank=8, alpha=16.0, seed=2)}
    file = write_lora(tmp_path / "kohya.safetensors", tensors)
    report = inspect_lora(file, skeleton, SCALE)
    norms = {layer.name: layer.norm for layer in report.layers}
    expected = {}
    for component, layers, prefix, rank, alpha in (("unet", unet, "lora_unet_", 4, 1.5),
                                                   ("text_encoder", text, "lora_te_", 8, 16.0)):
        for path in layers:
            key = prefix + path.replace(".", "_")
            expected[f"{component}.{path}"] = explicit_norm(tensors[f"{key}.lora_down.weight"],
                                                            tensors[f"{key}.lora_up.weight"], alpha / rank)
    assert norms.keys() == expected.keys()
    worst = max(abs(norms[name] - value) / value for name, value in expected.items())
    print(f"kohya: {len(expected)} layers, largest relative difference {worst:.1e}")
    assert worst < 1e-12
    assert report.format.startswith("kohya") and report.ranks == (4, 8) and report.alphas == (1.5, 16.0)
    assert report.parts["U-Net convolution"] == sum(path.endswith(("in_layers.2", "out_layers.3")) for path in unet)
    assert sum(report.parts.values()) == len(unet) + len(text)
    assert report.total_norm == pytest.approx(sum(v ** 2 for v in expected.values()) ** 0.5)


def test_peft_norms_use_the_alpha_in_the_header(skeleton, tmp_path):
    names = {target.module_path: name.removeprefix("unet.") for name, target in lora_targets(skeleton).items()
             if name.startswith("unet.")}  # diffusers' names of the tiny U-Net's layers
    unet = {names[path]: module for path, module in adapted_layers(skeleton.unet, ATTENTION_LEAVES[:4]).items()}
    header = {"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 8})}
    tensors = peft_tensors(unet, "unet.", rank=4, seed=3)
    report = inspect_lora(write_lora(tmp_path / "peft.safetensors", tensors, header), skeleton, SCALE)
    by_diffusers = {name: path for path, name in names.items()}
    norms = {layer.name.removeprefix("unet."): layer.norm for layer in report.layers}
    worst = max(abs(norms[by_diffusers[name]] - explicit_norm(tensors[f"unet.{name}.lora_A.weight"],
                                                              tensors[f"unet.{name}.lora_B.weight"], 8 / 4))
                for name in unet)
    print(f"PEFT: {len(unet)} layers, largest absolute difference {worst:.1e}")
    assert len(norms) == len(unet) and worst < 1e-12
    assert report.format.startswith("diffusers / PEFT") and report.alphas == (8.0,)
    assert report.network_module == "PEFT LoRA"


def test_blocks_come_in_the_order_they_run(skeleton, tmp_path):
    layers = adapted_layers(skeleton.unet, ("attn2.to_k",))
    file = write_lora(tmp_path / "k.safetensors", kohya_tensors(layers, "lora_unet_", rank=2, alpha=2, seed=0))
    report = inspect_lora(file, skeleton)
    inputs, outputs = len(skeleton.unet.input_blocks), len(skeleton.unet.output_blocks)
    assert [block.label for block in report.network_blocks] == [
        *(f"input block {i}" for i in range(inputs)), "middle block", *(f"output block {i}" for i in range(outputs))]
    heads = [path.split(".")[:2] for path in layers]  # e.g. ["input_blocks", "1"], ["middle_block", "1"]
    assert {block.label for block in report.network_blocks if block.layers} == {
        "middle block" if name == "middle_block" else f"{name.split('_')[0]} block {index}" for name, index in heads}
    assert all(block.norm == 0 for block in report.network_blocks if not block.layers)
    assert report.text_layers == ()  # no text-encoder layer adapted: no panel
    inside = [layer.norm for layer in report.layers if ".middle_block." in layer.name]
    middle = next(block for block in report.network_blocks if block.label == "middle block")
    assert middle.norm == pytest.approx(sum(n ** 2 for n in inside) ** 0.5)


def test_metadata_and_trigger_words_are_read_from_the_header(skeleton, tmp_path):
    tags = {"10_red": {"red": 12, "circle": 7, "masterpiece": 12}, "5_blue": {"red": 3, "blue square": 4}}
    header = {"ss_network_module": "networks.lora", "ss_network_dim": "2", "ss_network_alpha": "1",
              "ss_base_model_version": "sd_v1", "ss_output_name": "red", "ss_training_comment": "x" * 500,
              "ss_max_train_steps": "1000", "ss_num_epochs": "5", "ss_resolution": "(512, 512)",
              "modelspec.title": "Red", "modelspec.thumbnail": "data:image/png;base64,AAAA",
              "ss_tag_frequency": json.dumps(tags)}
    layers = adapted_layers(skeleton.text_encoder, ("q_proj",))
    file = write_lora(tmp_path / "m.safetensors", kohya_tensors(layers, "lora_te_", 2, 1, 0), header)
    report = inspect_lora(file, skeleton)
    assert report.trigger_words == (("red", 15), ("masterpiece", 12), ("circle", 7), ("blue square", 4))
    assert report.network_module == "networks.lora"
    assert report.training["base model version"] == "sd_v1" and report.training["epochs"] == "5"
    assert report.training["modelspec.title"] == "Red" and "modelspec.thumbnail" not in report.training
    assert report.training["training comment"].endswith("… (500 characters)")
    assert [block.label for block in report.text_layers] == ["TE layer 0", "TE layer 1"]
    assert trigger_words({"ss_tag_frequency": "not json"}) == [] and trigger_words({}) == []
    assert training_facts({}) == {} and key_format(["a.lora_A.weight"]).startswith("diffusers / PEFT")


def test_a_file_for_another_family_is_refused_in_one_line(skeleton, tmp_path):
    with torch.device("meta"):
        sd = build_without_weights(sd15())
    layers = adapted_layers(sd.unet, ("attn2.to_k",))
    file = write_lora(tmp_path / "sd15.safetensors", kohya_tensors(layers, "lora_unet_", rank=2, alpha=2, seed=0))
    with pytest.raises(CheckpointError, match="name no LoRA layer of this tiny model") as refused:
        inspect_lora(file, skeleton)
    assert "\n" not in str(refused.value)
    assert inspect_lora(file).model == "sd15"  # no model: the family is recognised from the layers
    with pytest.raises(CheckpointError, match="fit none of tiny") as refused:
        inspect_lora(file, [tiny()])
    assert "\n" not in str(refused.value)
