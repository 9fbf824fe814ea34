"""SDXL's two text encoders and U-Net against transformers' CLIPTextModel / CLIPTextModelWithProjection and
diffusers' UNet2DConditionModel with `added_cond_kwargs`.

Weights are random and travel in SDXL's single-file layout (`conditioner.embedders.0.transformer.*`,
`conditioner.embedders.1.model.*`, `model.diffusion_model.*`) through diffusers' own converters
(`convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint`, `convert_ldm_unet_checkpoint`), so these tests
also prove that diffx's module paths are SDXL's keys. The fast tests run SDXL's real widths (CLIP-L 768,
bigG 1280 with 20 heads and its 1280 projection, U-Net 320/640/1280 with 64-wide heads, context 2048, y 2816)
at reduced depth: 3 blocks per text encoder instead of 12 and 32, and one ResBlock and one transformer block per
level instead of 2 and 2/10 (SDXL's full U-Net is 2.6 G parameters, 10 GB per fp32 copy: it cannot be built
twice on a 2-core CI machine); the depth-per-level logic itself is checked on the tiny model (depths 1 and 2).
"""

from __future__ import annotations

import pytest
import torch
import transformers
from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
from torch import Tensor

from diffx.models.configs import ModelConfig, TextEncoderConfig, sdxl_base
from diffx.models.sdxl import SDXL_PREFIX, SdxlTextEncoders, micro_conditioning
from diffx.models.tokenizer import END_TOKEN, ClipTokenizer
from diffx.models.unet import UNet
from tests.models.ldm_configs import reference_unet
from tests.models.sd2_models import randomise_norms
from tests.models.sdxl_models import sdxl_widths, tiny_sdxl

PROMPTS = ["a photo of a cat", "An astronaut riding a horse on Mars, highly detailed, 8k", ""]
CLIP_PREFIX, BIG_G_PREFIX = SDXL_PREFIX + "embedders.0.transformer.", SDXL_PREFIX + "embedders.1.model."


def clip_config(config: TextEncoderConfig, projection: bool) -> transformers.CLIPTextConfig:
    """transformers' config of one SDXL encoder (eos_token_id 2, as SDXL's: the end token is found by argmax)."""
    return transformers.CLIPTextConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        hidden_act=config.hidden_act, max_position_embeddings=config.max_position_embeddings,
        layer_norm_eps=config.layer_norm_eps, eos_token_id=2, bos_token_id=0, pad_token_id=1,
        **({"projection_dim": config.projection_dim} if projection else {}))


def load_converted(reference: torch.nn.Module, converted: dict[str, Tensor]) -> torch.nn.Module:
    """Load converter output into a transformers model whether or not it names its keys `text_model.*`
    (transformers >= 5.6 saves CLIPTextModel's without it, CLIPTextModelWithProjection's with it)."""
    names = set(reference.state_dict())
    state = {key if key in names else key.removeprefix("text_model."): value for key, value in converted.items()
             if not key.endswith("position_ids")}
    reference.load_state_dict(state, strict=True)
    return reference.eval()


def reference_text_encoders(config: ModelConfig, checkpoint: dict[str, Tensor]) -> tuple:
    """(CLIPTextModel, CLIPTextModelWithProjection) holding the single file's text weights, as diffusers converts
    SDXL's (all blocks kept: SDXL reads hidden_states[-2] of each, and the last block feeds the pooled output)."""
    clip_l = transformers.CLIPTextModel(clip_config(config.text_encoder, projection=False))
    clip_l = load_converted(clip_l, convert_ldm_clip_checkpoint(
        {key: value for key, value in checkpoint.items() if key.startswith(CLIP_PREFIX)}))
    big_g = transformers.CLIPTextModelWithProjection(clip_config(config.text_encoder_2, projection=True))
    big_g = load_converted(big_g, convert_open_clip_checkpoint(big_g, checkpoint, prefix=BIG_G_PREFIX))
    return clip_l, big_g


def sdxl_encoders(config: ModelConfig, seed: int = 0) -> SdxlTextEncoders:
    torch.manual_seed(seed)
    vocab = ClipTokenizer.default().vocab
    encoders = SdxlTextEncoders(config.text_encoder, config.text_encoder_2, vocab[END_TOKEN],
                                vocab[config.text_encoder_2.pad_token]).eval()
    randomise_norms(encoders, seed)
    return encoders


def text_encoder_diffs(config: ModelConfig) -> dict[str, float]:
    """Max |diffx - transformers| of the CLIP-L and bigG halves of the context and of the pooled embedding."""
    ours = sdxl_encoders(config)
    checkpoint = {SDXL_PREFIX + key: value for key, value in ours.state_dict().items()}
    clip_l, big_g = reference_text_encoders(config, checkpoint)
    tokenizer = ClipTokenizer.default()
    ids = tokenizer(PROMPTS)
    ids_2 = tokenizer.padded_with("!")(PROMPTS)  # SDXL's tokenizer_2 pads with "!"
    width = config.text_encoder.hidden_size
    with torch.inference_mode():
        context, pooled = ours.encode(ids)
        theirs_l = clip_l(input_ids=ids, output_hidden_states=True)
        theirs_g = big_g(input_ids=ids_2, output_hidden_states=True)
        assert torch.equal(ours(ids), context)
    assert context.shape == (3, 77, width + config.text_encoder_2.hidden_size)
    assert pooled.shape == (3, config.text_encoder_2.projection_dim) and theirs_g.text_embeds.abs().max() > 0.1
    return {"CLIP-L hidden_states[-2]": (context[..., :width] - theirs_l.hidden_states[-2]).abs().max().item(),
            "bigG hidden_states[-2]": (context[..., width:] - theirs_g.hidden_states[-2]).abs().max().item(),
            "bigG pooled (text_embeds)": (pooled - theirs_g.text_embeds).abs().max().item()}


@pytest.mark.parametrize("make_config", [tiny_sdxl, lambda: sdxl_widths(blocks=3)], ids=["tiny", "sdxl-widths"])
def test_text_encoders_match_transformers(make_config):
    diffs = text_encoder_diffs(make_config())
    print("SDXL text encoders vs transformers:", {name: f"{d:.2e}" for name, d in diffs.items()})
    assert all(d <= 1e-4 for d in diffs.values()), diffs


def test_second_tokenizer_pads_with_bang_after_the_first_end_token():
    encoders = sdxl_encoders(tiny_sdxl())
    tokenizer = ClipTokenizer.default()
    assert torch.equal(encoders.second_ids(tokenizer(PROMPTS)), tokenizer.padded_with("!")(PROMPTS))


def unet_diff(config: ModelConfig, latent_size: int, seed: int = 0) -> float:
    """Both U-Nets with the same random weights, a batch of 2 with y; max |ours - diffusers|."""
    torch.manual_seed(seed)
    ours = UNet(config.unet).eval()
    randomise_norms(ours, seed)
    theirs = reference_unet(config, ours.state_dict())
    cfg = config.unet
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(2, cfg.in_channels, latent_size, latent_size, generator=generator)
    t = torch.tensor([999, 10])
    context = torch.randn(2, 77, cfg.context_dim, generator=generator)
    pooled_dim = cfg.adm_in_channels - 6 * 256
    pooled = torch.randn(2, pooled_dim, generator=generator)
    y = micro_conditioning(pooled, (1024, 768), (16, 32), (1024, 1024))
    time_ids = torch.tensor([[1024, 768, 16, 32, 1024, 1024]] * 2, dtype=torch.float32)
    with torch.inference_mode():
        eps_ours = ours(x, t, context, y)
        eps_theirs = theirs(x, t, encoder_hidden_states=context,
                            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    assert eps_theirs.abs().max() > 1e-2
    return (eps_ours - eps_theirs).abs().max().item()


def test_tiny_sdxl_unet_matches_diffusers():
    diff = unet_diff(tiny_sdxl(), latent_size=8)
    print(f"tiny SDXL U-Net vs diffusers (added_cond_kwargs): max abs diff {diff:.2e}")
    assert diff <= 1e-5


def test_unet_at_sdxl_widths_matches_diffusers():
    diff = unet_diff(sdxl_widths(), latent_size=8)
    print(f"SDXL-width U-Net (depth 1 per level) vs diffusers (added_cond_kwargs): max abs diff {diff:.2e}")
    assert diff <= 1e-4


def test_sdxl_base_layout():
    """The preset's U-Net: no transformer at level 0, 2 blocks at level 1, 10 at level 2 and in the middle,
    heads 10 and 20 (64 wide), label_emb 2816 -> 1280; 2.57 G parameters."""
    with torch.device("meta"):
        unet = UNet(sdxl_base().unet)
    depths = {name.rsplit(".transformer_blocks", 1)[0]: int(name.split(".transformer_blocks.")[1].split(".")[0])
              for name, _ in unet.named_modules() if ".transformer_blocks." in name and name.endswith("attn2")}
    assert not any(name.startswith(("input_blocks.1.", "input_blocks.2.")) for name in depths)
    assert depths["input_blocks.4.1"] + 1 == 2 and depths["input_blocks.7.1"] + 1 == 10
    assert depths["middle_block.1"] + 1 == 10
    assert unet.get_submodule("input_blocks.7.1.transformer_blocks.0.attn2").heads == 20
    assert tuple(unet.label_emb[0][0].weight.shape) == (1280, 2816)
    assert round(sum(p.numel() for p in unet.parameters()) / 1e9, 2) == 2.57
