"""LoRA applied on the fly (diffx.weights.lora_apply): against diffusers' peft backend, on random weights at
SD1.5's real widths (reduced depth: one ResBlock per level and 2 CLIP blocks, to build two models on a 2-core CI
machine): a kohya file (alpha ≠ rank, attention, feed-forward and LoCon 3x3 convolutions, text encoder) and a
diffusers/PEFT one, at scales 1 and 0.5, compared on the U-Net's ε̂ and the text encoder's output; the same at SDXL
base's real widths (CLIP-L 768, bigG 1280 with its projection, U-Net 320/640/1280, context 2048) at reduced depth
(2 blocks per text encoder, one ResBlock and one transformer block per level), with a kohya file named by SGM's
blocks (`lora_unet_input_blocks_…`, `lora_te1_`, `lora_te2_`: bigG's q/k/v land in thirds of OpenCLIP's stacked
in_proj), on ε̂, the context and the pooled embedding; against the weights with ΔW merged (LoCon, diffusers' older
processor keys, two LoRAs stacked); and every file checked before the model's weights are read."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
import transformers
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from diffx.errors import CheckpointError, InvalidArgumentError
from diffx.models.configs import sd15, tiny
from diffx.models.fast_cpu import FAST_DTYPE, PackedConv2d
from diffx.models.sdxl import micro_conditioning
from diffx.models.stable_diffusion import StableDiffusion
from diffx.weights.lora import LoraSpec
from diffx.weights.lora_apply import apply_lora, load_model_with_loras
from tests.models.ldm_configs import reference_unet
from tests.models.sdxl_models import sdxl_widths
from tests.models.test_clip import reference_config
from tests.models.test_sdxl_models import reference_text_encoders
from tests.weights.lora_files import (
    ATTENTION_LEAVES,
    CONV_LEAVES,
    TOLERANCE,
    adapted_layers,
    kohya_tensors,
    lora_parity,
    peft_tensors,
    random_model,
    write_lora,
)


@pytest.fixture(scope="module")
def sd15_pair() -> tuple[StableDiffusion, dict[str, torch.nn.Module]]:
    """diffx's model and diffusers' U-Net + transformers' CLIP holding the same random weights."""
    config = sd15()
    config.unet = replace(config.unet, num_res_blocks=1)
    config.text_encoder = replace(config.text_encoder, num_hidden_layers=2)
    model = random_model(config)
    text = transformers.CLIPTextModel(reference_config(config.text_encoder))
    text.load_state_dict({key.removeprefix("text_model."): t for key, t in model.text_encoder.state_dict().items()})
    return model, {"unet": reference_unet(config, model.unet.state_dict()), "text_encoder": text.eval()}


def sd15_outputs(model: StableDiffusion, theirs: dict[str, torch.nn.Module]) -> dict[str, tuple[torch.Tensor, ...]]:
    """(diffx, diffusers) outputs of the U-Net (ε̂ for a fixed x_t, t, context) and of the text encoder."""
    generator = torch.Generator().manual_seed(3)
    x, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([999, 10])
    context = torch.randn(2, 77, 768, generator=generator)
    ids = model.tokenizer(["a photo of a cat", ""])
    with torch.inference_mode():
        return {"U-Net": (model.unet(x, t, context), theirs["unet"](x, t, encoder_hidden_states=context).sample),
                "text encoder": (model.text_encoder(ids), theirs["text_encoder"](input_ids=ids).last_hidden_state)}


def test_kohya_lora_with_locon_matches_diffusers(sd15_pair, tmp_path):
    model, theirs = sd15_pair
    unet_layers = adapted_layers(theirs["unet"], ATTENTION_LEAVES + CONV_LEAVES)
    text_layers = adapted_layers(theirs["text_encoder"], ATTENTION_LEAVES)
    assert any(isinstance(layer, torch.nn.Conv2d) and layer.kernel_size == (3, 3) for layer in unet_layers.values())
    file = write_lora(tmp_path / "kohya.safetensors", {
        **kohya_tensors(unet_layers, "lora_unet_", rank=4, alpha=2.0, seed=1),
        **kohya_tensors(text_layers, "lora_te_text_model_", rank=8, alpha=4.0, seed=2)})
    diffs = lora_parity(model, theirs, file, sd15_outputs, StableDiffusionPipeline)
    print("SD1.5 kohya LoRA + LoCon vs diffusers:", {name: f"{d:.2e}" for name, d in diffs.items()})
    assert all(d <= TOLERANCE for d in diffs.values()), diffs


# The PEFT config diffusers' `save_lora_weights` writes into the header: alpha ≠ rank, per component.
PEFT_CONFIG = {"lora_adapter_metadata": json.dumps({
    "unet.r": 4, "unet.lora_alpha": 8, "unet.target_modules": list(ATTENTION_LEAVES[:8]),
    "text_encoder.r": 4, "text_encoder.lora_alpha": 2, "text_encoder.target_modules": list(ATTENTION_LEAVES[8:])})}


@pytest.mark.parametrize("metadata", [None, PEFT_CONFIG], ids=["alpha=rank", "alpha-in-header"])
def test_peft_lora_matches_diffusers(sd15_pair, tmp_path, metadata):
    model, theirs = sd15_pair
    file = write_lora(tmp_path / "peft.safetensors", {
        **peft_tensors(adapted_layers(theirs["unet"], ATTENTION_LEAVES), "unet.", rank=4, seed=3),
        **peft_tensors(adapted_layers(theirs["text_encoder"], ATTENTION_LEAVES), "text_encoder.text_model.", rank=4,
                       seed=4)}, metadata)
    diffs = lora_parity(model, theirs, file, sd15_outputs, StableDiffusionPipeline)
    print("SD1.5 diffusers/PEFT LoRA vs diffusers:", {name: f"{d:.2e}" for name, d in diffs.items()})
    assert all(d <= TOLERANCE for d in diffs.values()), diffs


# SDXL


@pytest.fixture(scope="module")
def sdxl_pair() -> tuple[StableDiffusion, dict[str, torch.nn.Module]]:
    """diffx's model and diffusers' U-Net + transformers' two encoders holding the same random weights."""
    config = sdxl_widths(blocks=2)
    model = random_model(config)
    clip_l, big_g = reference_text_encoders(config, model.original_state_dict())
    return model, {"unet": reference_unet(config, model.unet.state_dict()), "text_encoder": clip_l,
                   "text_encoder_2": big_g}


def sdxl_outputs(model: StableDiffusion, theirs: dict[str, torch.nn.Module]) -> dict[str, tuple[torch.Tensor, ...]]:
    """(diffx, diffusers) ε̂ for a fixed x_t, t, context and y, and both encoders' context and pooled embedding."""
    generator = torch.Generator().manual_seed(3)
    x, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([999, 10])
    context, pooled = torch.randn(2, 77, 2048, generator=generator), torch.randn(2, 1280, generator=generator)
    y = micro_conditioning(pooled, (64, 64), (0, 0), (64, 64))
    time_ids = torch.tensor([[64, 64, 0, 0, 64, 64]] * 2, dtype=torch.float32)
    ids = model.tokenizer(["a photo of a cat", ""])
    ids_2 = model.tokenizer.padded_with("!")(["a photo of a cat", ""])
    with torch.inference_mode():
        ours_context, ours_pooled = model.text_encoder.encode(ids)
        clip_l = theirs["text_encoder"](input_ids=ids, output_hidden_states=True).hidden_states[-2]
        big_g = theirs["text_encoder_2"](input_ids=ids_2, output_hidden_states=True)
        return {"U-Net": (model.unet(x, t, context, y), theirs["unet"](
                    x, t, encoder_hidden_states=context,
                    added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample),
                "context": (ours_context, torch.cat([clip_l, big_g.hidden_states[-2]], dim=-1)),
                "pooled": (ours_pooled, big_g.text_embeds)}


def transformers_paths(layers: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
    """Layers by transformers' full path (`text_model.encoder…`; transformers >= 5.6 drops `text_model.` from
    CLIPTextModel's module paths), as LoRA trainers name them."""
    return {"text_model." + path.removeprefix("text_model."): layer for path, layer in layers.items()}


def test_sdxl_kohya_lora_with_sgm_names_matches_diffusers(sdxl_pair, tmp_path):
    model, theirs = sdxl_pair
    # The U-Net's layers by their SGM paths: diffx's module paths are SDXL's single-file keys.
    unet_layers = adapted_layers(model.unet, ATTENTION_LEAVES)
    assert any(path.startswith("input_blocks.3.1.transformer_blocks") for path in unet_layers)
    file = write_lora(tmp_path / "kohya-sdxl.safetensors", {
        **kohya_tensors(unet_layers, "lora_unet_", rank=4, alpha=1.0, seed=1),
        **kohya_tensors(transformers_paths(adapted_layers(theirs["text_encoder"], ATTENTION_LEAVES)), "lora_te1_",
                        rank=4, alpha=2.0, seed=2),
        **kohya_tensors(transformers_paths(adapted_layers(theirs["text_encoder_2"], ATTENTION_LEAVES)), "lora_te2_",
                        rank=8, alpha=4.0, seed=3)})
    diffs = lora_parity(model, theirs, file, sdxl_outputs, StableDiffusionXLPipeline)
    print("SDXL kohya (SGM names) LoRA vs diffusers:", {name: f"{d:.2e}" for name, d in diffs.items()})
    assert all(d <= TOLERANCE for d in diffs.values()), diffs


def test_sdxl_peft_lora_matches_diffusers(sdxl_pair, tmp_path):
    model, theirs = sdxl_pair
    file = write_lora(tmp_path / "peft-sdxl.safetensors", {
        **peft_tensors(adapted_layers(theirs["unet"], ATTENTION_LEAVES), "unet.", rank=4, seed=4),
        **peft_tensors(transformers_paths(adapted_layers(theirs["text_encoder"], ATTENTION_LEAVES)),
                       "text_encoder.", rank=4, seed=5),
        **peft_tensors(transformers_paths(adapted_layers(theirs["text_encoder_2"], ATTENTION_LEAVES)),
                       "text_encoder_2.", rank=4, seed=6)})
    diffs = lora_parity(model, theirs, file, sdxl_outputs, StableDiffusionXLPipeline)
    print("SDXL diffusers/PEFT LoRA vs diffusers:", {name: f"{d:.2e}" for name, d in diffs.items()})
    assert all(d <= TOLERANCE for d in diffs.values()), diffs


def merged_copy(model: StableDiffusion, layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]]) -> StableDiffusion:
    """A copy of `model` whose U-Net layers hold W + factor · B A (the update merged into the weight, as diffusers'
    `fuse_lora` and kohya's merge write it: ΔW = (B.flatten(1) @ A.flatten(1)) reshaped to W's shape)."""
    merged = copy.deepcopy(model)
    with torch.no_grad():
        for path, (down, up, factor) in layers.items():
            weight = merged.unet.get_submodule(path).weight
            weight += factor * (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
    return merged


def test_locon_and_processor_names_equal_the_merged_weight_and_loras_stack(tiny_model, tmp_path):
    """A 3x3 convolution's LoCon (A: the layer's kernel, B: 1x1) and diffusers' older `processor.to_out_lora` keys,
    hooked on the fly, give what the weights with ΔW merged give; two files stack; scale changes take effect
    without a reload; `remove()` restores the model."""
    conv, out = "input_blocks.1.0.in_layers.2", "input_blocks.1.1.transformer_blocks.0.attn1.to_out.0"
    conv_layer, out_layer = tiny_model.unet.get_submodule(conv), tiny_model.unet.get_submodule(out)
    generator = torch.Generator().manual_seed(0)
    conv_down = torch.randn(4, conv_layer.in_channels, 3, 3, generator=generator) * 0.1
    conv_up = torch.randn(conv_layer.out_channels, 4, 1, 1, generator=generator) * 0.1
    out_down = torch.randn(2, out_layer.in_features, generator=generator) * 0.1
    out_up = torch.randn(out_layer.out_features, 2, generator=generator) * 0.1
    locon = write_lora(tmp_path / "locon.safetensors", {
        "lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight": conv_down,
        "lora_unet_input_blocks_1_0_in_layers_2.lora_up.weight": conv_up,
        "lora_unet_input_blocks_1_0_in_layers_2.alpha": torch.tensor(2.0)})
    processor = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora"
    old = write_lora(tmp_path / "old.safetensors", {f"{processor}.down.weight": out_down,
                                                      f"{processor}.up.weight": out_up})
    generator = torch.Generator().manual_seed(1)
    x, t = torch.randn(1, 4, 8, 8, generator=generator), torch.tensor([500])
    context = torch.randn(1, 77, tiny_model.config.unet.context_dim, generator=generator)
    with torch.inference_mode():
        before = tiny_model.unet(x, t, context)
    clean = copy.deepcopy(tiny_model)  # before the hooks: a deep copy would take them along
    first, second = apply_lora(tiny_model, locon, scale=0.5), apply_lora(tiny_model, old, scale=-1.5)
    for scale in (0.5, 2.0):
        first.scale = scale
        expected = merged_copy(clean, {conv: (conv_down, conv_up, scale * 2.0 / 4),
                                            out: (out_down, out_up, -1.5 * 2 / 2)})
        with torch.inference_mode():
            ours, theirs = tiny_model.unet(x, t, context), expected.unet(x, t, context)
        assert (ours - before).abs().max() > 1e-2
        assert (ours - theirs).abs().max() <= 1e-5, float((ours - theirs).abs().max())
    first.remove()
    second.remove()
    with torch.inference_mode():
        assert torch.equal(tiny_model.unet(x, t, context), before)


def test_load_model_with_loras_checks_every_file_before_any_weight(tiny_model_dir, tmp_path, monkeypatch):
    model = load_model_with_loras(tiny_model_dir, ())
    layer = model.unet.get_submodule("input_blocks.1.1.transformer_blocks.0.attn2.to_k")
    name = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"
    good = write_lora(tmp_path / "good.safetensors", {
        f"{name}.lora_down.weight": torch.randn(2, layer.in_features),
        f"{name}.lora_up.weight": torch.randn(layer.out_features, 2)})
    bad = write_lora(tmp_path / "bad.safetensors", {f"{name}.lora_down.weight": torch.randn(2, layer.in_features)})
    notes = []
    loaded = load_model_with_loras(tiny_model_dir, [LoraSpec(good, 0.5)], note=notes.append)
    assert loaded.source.endswith("+ LoRA good.safetensors:0.5")
    assert notes == ["LoRA good.safetensors: 1 layers of the unet, rank 2, scale 0.5"]
    monkeypatch.setattr("diffx.weights.lora_apply.load_model", lambda *args, **kwargs: pytest.fail("weights read"))
    with pytest.raises(CheckpointError, match="has no up"):
        load_model_with_loras(tiny_model_dir, [LoraSpec(good), LoraSpec(bad)])
    with pytest.raises(InvalidArgumentError, match="within ±4"):
        load_model_with_loras(tiny_model_dir, [LoraSpec(good, 5.0)])


def test_loras_follow_the_model_onto_the_cpu_fast_path(tmp_path):
    """Attached in fp32, a LoRA (LoCon on 3x3 convolutions too) still adds its update once the model moves to bf16
    with prepacked convolutions (`fast_cpu.PackedConv2d` keeps the hooks): the bf16 output is within a tenth of the
    LoRA's effect of the fp32 one (bf16 rounds the whole network; a LoRA left off would miss by all of it)."""
    model = random_model(tiny())
    layers = adapted_layers(model.unet, ATTENTION_LEAVES + ("in_layers.2", "out_layers.3"))
    file = write_lora(tmp_path / "lora.safetensors", kohya_tensors(layers, "lora_unet_", rank=4, alpha=2.0, seed=0))
    generator = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 4, 8, 8, generator=generator), torch.tensor([500])
    context = torch.randn(1, 77, model.config.unet.context_dim, generator=generator)
    with torch.inference_mode():
        before = model.unet(x, t, context)
        apply_lora(model, file)
        fp32 = model.unet(x, t, context)
        model.to(dtype=FAST_DTYPE)
        assert isinstance(model.unet.get_submodule("input_blocks.1.0.in_layers.2"), PackedConv2d)
        fast = model.unet(x.to(FAST_DTYPE), t, context.to(FAST_DTYPE)).float()
    effect, error = (fp32 - before).abs().max(), (fast - fp32).abs().max()
    assert error <= 0.1 * effect, (float(error), float(effect))  # without the hooks it would be the whole effect
