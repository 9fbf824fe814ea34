"""LoRA on SDXL applied by diffx vs diffusers' peft backend, on random weights at SDXL base's real widths (CLIP-L
768, bigG 1280 with its projection, U-Net 320/640/1280, context 2048) at reduced depth (2 blocks per text encoder,
one ResBlock and one transformer block per level: the full model cannot be built twice on a CI machine): a kohya
file named by SGM's blocks (`lora_unet_input_blocks_4_1_…`, `lora_te1_`, `lora_te2_`: bigG's q/k/v land in thirds
of OpenCLIP's stacked in_proj) and a diffusers/PEFT one, at scales 1 and 0.5, on ε̂, the context and the pooled
embedding."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from diffx.models.sdxl import micro_conditioning
from diffx.models.stable_diffusion import StableDiffusion, build
from tests.models.ldm_configs import reference_unet
from tests.models.sd2_models import randomise_norms
from tests.models.sdxl_models import sdxl_widths
from tests.models.test_sdxl_models import reference_text_encoders
from tests.weights.lora_files import (
    ATTENTION_LEAVES,
    TOLERANCE,
    adapted_layers,
    kohya_tensors,
    lora_parity,
    peft_tensors,
    write_lora,
)


@pytest.fixture(scope="module")
def sdxl_pair() -> tuple[StableDiffusion, dict[str, torch.nn.Module]]:
    """diffx's model and diffusers' U-Net + transformers' two encoders holding the same random weights."""
    config = sdxl_widths(blocks=2)
    torch.manual_seed(0)
    model = build(config)
    randomise_norms(model.unet)
    randomise_norms(model.text_encoder, seed=1)
    model.eval()
    clip_l, big_g = reference_text_encoders(config, model.original_state_dict())
    return model, {"unet": reference_unet(config, model.unet.state_dict()), "text_encoder": clip_l,
                   "text_encoder_2": big_g}


def outputs(model: StableDiffusion, theirs: dict[str, torch.nn.Module]) -> dict[str, tuple[torch.Tensor, ...]]:
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


def test_kohya_lora_with_sgm_names_matches_diffusers(sdxl_pair, tmp_path):
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
    diffs = lora_parity(model, theirs, file, outputs, StableDiffusionXLPipeline)
    print("SDXL kohya (SGM names) LoRA vs diffusers:", {name: f"{d:.2e}" for name, d in diffs.items()})
    assert all(d <= TOLERANCE for d in diffs.values()), diffs


def test_peft_lora_matches_diffusers(sdxl_pair, tmp_path):
    model, theirs = sdxl_pair
    file = write_lora(tmp_path / "peft-sdxl.safetensors", {
        **peft_tensors(adapted_layers(theirs["unet"], ATTENTION_LEAVES), "unet.", rank=4, seed=4),
        **peft_tensors(transformers_paths(adapted_layers(theirs["text_encoder"], ATTENTION_LEAVES)),
                       "text_encoder.", rank=4, seed=5),
        **peft_tensors(transformers_paths(adapted_layers(theirs["text_encoder_2"], ATTENTION_LEAVES)),
                       "text_encoder_2.", rank=4, seed=6)})
    diffs = lora_parity(model, theirs, file, outputs, StableDiffusionXLPipeline)
    print("SDXL diffusers/PEFT LoRA vs diffusers:", {name: f"{d:.2e}" for name, d in diffs.items()})
    assert all(d <= TOLERANCE for d in diffs.values()), diffs
