"""LoRA on SD3 / SD3.5 (diffx.weights.lora_names' MMDiT names, lora_blocks, lora_inspect): a diffusers/PEFT file
(`transformer.transformer_blocks.N.attn.to_q.lora_A.weight`… — diffusers' q, k, v as thirds of Stability's stacked
`qkv` — and both CLIPs) loaded by diffusers' `StableDiffusion3Pipeline.load_lora_weights` and by diffx gives the
same picture, at scales 1 and 0.5, on a random SD3 pipeline at NARROW sizes (SD3's 64-wide heads and real VAE at
two heads, 2 blocks: the names do not depend on width; tests/pipeline/sd3_models.py); sd-scripts' names
(`lora_unet_joint_blocks_…`, `lora_te1_`, `lora_te2_`), diffusers' thirds and the adaLN diffusers stores swapped equal
the weights with ΔW merged on the tiny SD3; the inspector reads an SD3 file by joint block and recognises SD3-medium's
shapes without a model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from diffx.errors import CheckpointError
from diffx.pipeline.generation import generate
from diffx.pipeline.settings import GenerationSettings
from diffx.weights.load import load_model
from diffx.weights.lora import read_lora
from diffx.weights.lora_apply import apply_lora
from diffx.weights.lora_inspect import inspect_lora
from tests.models.sd3_tiny import tiny_sd3
from tests.pipeline.sd3_models import NARROW, sd3_pipeline
from tests.pipeline.test_sd3_pipeline import TOLERANCE, run_both
from tests.weights.lora_files import ATTENTION_LEAVES, adapted_layers, peft_tensors, write_lora
from tests.weights.test_lora_apply import transformers_paths

# What diffusers' SD3 LoRA trainers adapt: both streams' attention and feed-forward.
MMDIT_LEAVES = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                "ff_context.net.2")


@pytest.fixture(scope="module")
def sd3(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("sd3-lora") / "sd3-random"
    pipeline = sd3_pipeline(folder, t5=False, sizes=NARROW)  # diffusers' SD3 LoRA loader reads no T5 layers
    return folder, pipeline, load_model(folder)


def test_peft_lora_matches_diffusers_sd3(sd3, tmp_path) -> None:
    _, pipeline, model = sd3
    mmdit_layers = adapted_layers(pipeline.transformer, MMDIT_LEAVES)
    assert "transformer_blocks.1.attn.to_add_out" not in mmdit_layers  # the pre-only last context block has none
    file = write_lora(tmp_path / "sd3-peft.safetensors", {
        **peft_tensors(mmdit_layers, "transformer.", rank=4, seed=1),
        **peft_tensors(transformers_paths(adapted_layers(pipeline.text_encoder, ATTENTION_LEAVES)), "text_encoder.",
                       rank=4, seed=2),
        **peft_tensors(transformers_paths(adapted_layers(pipeline.text_encoder_2, ATTENTION_LEAVES)),
                       "text_encoder_2.", rank=4, seed=3)})
    pipeline.load_lora_weights(str(file), adapter_name="test")
    applied = apply_lora(model, file)
    try:
        ours, theirs = run_both(model, pipeline)
        assert np.abs(ours - theirs).max() <= TOLERANCE
        applied.scale = 0.5
        pipeline.set_adapters(["test"], [0.5])
        half, theirs_half = run_both(model, pipeline)
        assert np.abs(half - theirs_half).max() <= TOLERANCE
        assert np.abs(ours - half).max() > 0.05  # the LoRA acts: its scale changes the picture
        print("SD3 PEFT LoRA vs diffusers: max abs", float(np.abs(ours - theirs).max()), "at 0.5:",
              float(np.abs(half - theirs_half).max()))
    finally:
        applied.remove()
        pipeline.unload_lora_weights()


def write_kohya_sd3(model, path, generator: torch.Generator) -> dict[str, tuple[slice | None, torch.Tensor]]:
    """An sd-scripts-named file on the tiny SD3 (a whole stacked qkv, a context MLP, the swapped final adaLN, a
    CLIP-L and a bigG layer) plus diffusers' `to_k` third of block 1's qkv; returns {module: (rows, factor · ΔW)}."""
    layers = {"lora_unet_joint_blocks_0_x_block_attn_qkv": "transformer.joint_blocks.0.x_block.attn.qkv",
              "lora_unet_joint_blocks_0_context_block_mlp_fc1": "transformer.joint_blocks.0.context_block.mlp.fc1",
              "lora_unet_final_layer_adaLN_modulation_1": "transformer.final_layer.adaLN_modulation.1",
              "lora_te1_text_model_encoder_layers_0_self_attn_v_proj":
                  "text_encoder.clip_l.transformer.text_model.encoder.layers.0.self_attn.v_proj",
              "lora_te2_text_model_encoder_layers_1_mlp_fc2":
                  "text_encoder.clip_g.transformer.text_model.encoder.layers.1.mlp.fc2"}
    tensors, deltas = {}, {}
    for name, path_in_model in layers.items():
        component, inner = path_in_model.split(".", 1)
        module = getattr(model, component).get_submodule(inner)
        down = torch.randn(2, module.in_features, generator=generator) * 0.3
        up = torch.randn(module.out_features, 2, generator=generator) * 0.3
        tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(1.0)}
        deltas[path_in_model] = (None, 0.5 * up @ down)
    qkv = model.transformer.get_submodule("joint_blocks.1.x_block.attn.qkv")
    width = qkv.out_features // 3
    down, up = torch.randn(2, qkv.in_features, generator=generator), torch.randn(width, 2, generator=generator)
    tensors |= {"transformer.transformer_blocks.1.attn.to_k.lora_A.weight": down * 0.3,
                "transformer.transformer_blocks.1.attn.to_k.lora_B.weight": up * 0.3}
    deltas["transformer.joint_blocks.1.x_block.attn.qkv"] = (slice(width, 2 * width), 0.09 * up @ down)
    write_lora(path, tensors)
    return deltas


def test_sd_scripts_names_and_diffusers_thirds_equal_the_merged_weights(tmp_path) -> None:
    model = tiny_sd3()
    deltas = write_kohya_sd3(model, tmp_path / "sd3-kohya.safetensors", torch.Generator().manual_seed(0))
    merged = copy.deepcopy(model)
    with torch.no_grad():
        for path, (rows, delta) in deltas.items():
            component, inner = path.split(".", 1)
            weight = getattr(merged, component).get_submodule(inner).weight
            weight[rows if rows is not None else slice(None)] += 0.8 * delta
    settings = GenerationSettings(prompt="a red circle", steps=3, seed=0)
    before = generate(model, settings).latents
    expected = generate(merged, settings).latents
    applied = apply_lora(model, tmp_path / "sd3-kohya.safetensors", scale=0.8)
    ours = generate(model, settings).latents
    applied.remove()
    assert (expected - before).abs().max() > 1e-2
    assert (ours - expected).abs().max() <= 1e-5, float((ours - expected).abs().max())
    assert torch.equal(generate(model, settings).latents, before)


def test_inspector_reads_an_sd3_lora_by_joint_block(tmp_path) -> None:
    model = tiny_sd3()
    write_kohya_sd3(model, tmp_path / "sd3-kohya.safetensors", torch.Generator().manual_seed(0))
    report = inspect_lora(tmp_path / "sd3-kohya.safetensors", model)
    assert (report.family, report.network) == ("SD3", "MMDiT")
    assert [block.label for block in report.network_blocks] == ["joint block 0", "joint block 1", "final layer"]
    assert [block.layers for block in report.network_blocks] == [2, 1, 1]
    assert report.parts == {"MMDiT MLP (text)": 1, "MMDiT adaLN modulation": 1, "MMDiT attention (image)": 2,
                            "text encoder 1 attention": 1, "text encoder 2 MLP": 1}
    assert {block.label for block in report.text_layers if block.layers} == {"TE1 layer 0", "TE2 layer 1"}


def test_an_sd3_medium_lora_is_recognised_without_a_model(tmp_path) -> None:
    name = "lora_unet_joint_blocks_23_x_block_attn_qkv"  # SD3-medium: 24 blocks of 1536
    file = write_lora(tmp_path / "medium.safetensors", {f"{name}.lora_down.weight": torch.randn(4, 1536),
                                                         f"{name}.lora_up.weight": torch.randn(4608, 4) * 0.01})
    report = inspect_lora(file)
    assert (report.model, report.family, report.recognised) == ("sd3-medium", "SD3", True)
    assert len(report.network_blocks) == 24 and report.network_blocks[-1].layers == 1


def test_a_lora_for_another_model_is_refused_in_one_line(tmp_path) -> None:
    file = write_lora(tmp_path / "sd15.safetensors", {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.randn(4, 320),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.randn(320, 4)})
    with pytest.raises(CheckpointError, match="2 of 2 keys name no LoRA layer of this sd3-tiny model") as error:
        read_lora(file, tiny_sd3())
    assert "\n" not in str(error.value)
