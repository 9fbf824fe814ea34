"""LoRA applied by diffx vs diffusers' peft backend, on random weights at SD1.5's real widths (reduced depth: one
ResBlock per level and 2 CLIP blocks, to build two models on a 2-core CI machine): a kohya file (alpha ≠ rank,
attention, feed-forward and LoCon 3x3 convolutions, text encoder) and a diffusers/PEFT one, at scales 1 and 0.5,
compared on the U-Net's ε̂ and the text encoder's output."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import transformers
from diffusers import StableDiffusionPipeline

from diffx.models.configs import sd15
from diffx.models.stable_diffusion import StableDiffusion, build
from tests.models.ldm_configs import reference_unet
from tests.models.sd2_models import randomise_norms
from tests.models.test_clip import reference_config
from tests.weights.lora_files import (
    ATTENTION_LEAVES,
    CONV_LEAVES,
    TOLERANCE,
    adapted_layers,
    kohya_tensors,
    lora_parity,
    peft_tensors,
    write_lora,
)


@pytest.fixture(scope="module")
def sd15_pair() -> tuple[StableDiffusion, dict[str, torch.nn.Module]]:
    """diffx's model and diffusers' U-Net + transformers' CLIP holding the same random weights."""
    config = sd15()
    config.unet = replace(config.unet, num_res_blocks=1)
    config.text_encoder = replace(config.text_encoder, num_hidden_layers=2)
    torch.manual_seed(0)
    model = build(config)
    randomise_norms(model.unet)
    randomise_norms(model.text_encoder, seed=1)
    model.eval()
    text = transformers.CLIPTextModel(reference_config(config.text_encoder))
    text.load_state_dict({key.removeprefix("text_model."): t for key, t in model.text_encoder.state_dict().items()})
    return model, {"unet": reference_unet(config, model.unet.state_dict()), "text_encoder": text.eval()}


def outputs(model: StableDiffusion, theirs: dict[str, torch.nn.Module]) -> dict[str, tuple[torch.Tensor, ...]]:
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
    diffs = lora_parity(model, theirs, file, outputs, StableDiffusionPipeline)
    print("SD1.5 kohya LoRA + LoCon vs diffusers:", {name: f"{d:.2e}" for name, d in diffs.items()})
    assert all(d <= TOLERANCE for d in diffs.values()), diffs


def test_peft_lora_matches_diffusers(sd15_pair, tmp_path):
    model, theirs = sd15_pair
    file = write_lora(tmp_path / "peft.safetensors", {
        **peft_tensors(adapted_layers(theirs["unet"], ATTENTION_LEAVES), "unet.", rank=4, seed=3),
        **peft_tensors(adapted_layers(theirs["text_encoder"], ATTENTION_LEAVES), "text_encoder.text_model.", rank=4,
                       seed=4)})
    diffs = lora_parity(model, theirs, file, outputs, StableDiffusionPipeline)
    print("SD1.5 diffusers/PEFT LoRA vs diffusers:", {name: f"{d:.2e}" for name, d in diffs.items()})
    assert all(d <= TOLERANCE for d in diffs.values()), diffs
