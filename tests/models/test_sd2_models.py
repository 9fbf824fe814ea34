"""SD2.x's text encoder and U-Net against transformers' CLIPTextModel and diffusers' UNet2DConditionModel.

Weights are random, and travel in the SD2 single-file layout (`cond_stage_model.model.*`,
`model.diffusion_model.*`) through diffusers' own converters (`convert_open_clip_checkpoint`,
`convert_ldm_unet_checkpoint`), so these tests also prove that diffx's module paths are SD2's keys.
The fast tests keep SD2.1's text width (1024, 16 heads, the real vocabulary) at 3 blocks instead of 24,
and a tiny U-Net with every SD2 feature; the full-size ones are marked slow (SD2.1's U-Net is 866 M
parameters: about 20 s to build twice and run on 2 cores).
"""

import dataclasses

import pytest
import torch
import transformers
from diffusers.loaders.single_file_utils import SD_2_TEXT_ENCODER_KEYS_TO_IGNORE, convert_open_clip_checkpoint

from diffx.models.configs import TextEncoderConfig, sd21_v
from diffx.models.open_clip import OPEN_CLIP_PREFIX, OpenClipTextEncoder
from diffx.models.tokenizer import ClipTokenizer
from diffx.models.unet import CrossAttention, UNet
from tests.models.sd2_models import randomise_norms, tiny_sd2
from tests.models.test_unet import max_abs_diff_to_diffusers

PROMPTS = ["a photo of a cat", "An astronaut riding a horse on Mars, highly detailed, 8k"]


def sd2_checkpoint(encoder: OpenClipTextEncoder, seed: int = 0) -> dict[str, torch.Tensor]:
    """The encoder as an SD2 single file holds it, with the contrastive head diffx does not use."""
    width = encoder.config.hidden_size
    generator = torch.Generator().manual_seed(seed)
    return {**{OPEN_CLIP_PREFIX + key: value for key, value in encoder.state_dict().items()},
            OPEN_CLIP_PREFIX + "text_projection": torch.randn(width, width, generator=generator),
            OPEN_CLIP_PREFIX + "logit_scale": torch.tensor(4.6052)}


def reference_text_encoder(config: TextEncoderConfig, checkpoint: dict[str, torch.Tensor]):
    """transformers' CLIPTextModel as diffusers builds SD2's: GELU, the used blocks only, weights converted."""
    used = config.num_hidden_layers - config.skipped_layers
    reference = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=used, num_attention_heads=config.num_attention_heads, hidden_act="gelu",
        max_position_embeddings=config.max_position_embeddings, layer_norm_eps=config.layer_norm_eps))
    # diffusers' converter leaves out block 23 by name (SD2's 24th); at reduced depth leave out the last ourselves.
    skipped = f"{OPEN_CLIP_PREFIX}transformer.resblocks.{used}."
    assert f"{OPEN_CLIP_PREFIX}transformer.resblocks.23.ln_1.weight" in SD_2_TEXT_ENCODER_KEYS_TO_IGNORE
    kept = {key: value for key, value in checkpoint.items() if not key.startswith(skipped)}
    converted = convert_open_clip_checkpoint(reference, kept)
    converted.pop("text_projection.weight", None)  # CLIPTextModel has no projection (WithProjection has)
    bare = "embeddings.position_embedding.weight" in reference.state_dict()  # transformers >= 5.6: no text_model.
    reference.load_state_dict({key.removeprefix("text_model.") if bare else key: value
                               for key, value in converted.items()}, strict=True)
    return reference.eval()


def text_encoder_diff(config: TextEncoderConfig) -> float:
    torch.manual_seed(0)
    ours = OpenClipTextEncoder(config).eval()
    randomise_norms(ours)
    theirs = reference_text_encoder(config, sd2_checkpoint(ours))
    tokenizer = ClipTokenizer.default().padded_with("!")
    ids = torch.cat([tokenizer(PROMPTS), torch.randint(0, config.vocab_size, (1, 77))])
    with torch.inference_mode():
        hidden_ours, hidden_theirs = ours(ids), theirs(input_ids=ids).last_hidden_state
    assert hidden_ours.shape == (3, 77, config.hidden_size) and hidden_theirs.abs().max() > 0.1
    return (hidden_ours - hidden_theirs).abs().max().item()


def test_open_clip_at_sd21_width_matches_transformers():
    """SD2.1's width, heads, MLP and vocabulary; 3 blocks of which the last is skipped (24 at full size)."""
    config = TextEncoderConfig(**{**sd21_v().text_encoder.__dict__, "num_hidden_layers": 3})
    diff = text_encoder_diff(config)
    print(f"OpenCLIP text encoder (1024 wide, 2 of 3 blocks): max |ours - transformers| = {diff:.2e}")
    assert diff <= 1e-4


@pytest.mark.slow
def test_open_clip_at_sd21_size_matches_transformers():
    diff = text_encoder_diff(sd21_v().text_encoder)
    print(f"OpenCLIP ViT-H/14 text encoder (23 of 24 blocks): max |ours - transformers| = {diff:.2e}")
    assert diff <= 1e-4


def test_pad_token_is_bang_and_the_last_block_is_not_run():
    config = tiny_sd2().text_encoder
    ids = ClipTokenizer.default().padded_with("!")(["a cat"])
    assert ids[0, :4].tolist() == [49406, 320, 2368, 49407] and ids[0, 4:].eq(0).all()  # "!" is id 0
    torch.manual_seed(0)
    model = OpenClipTextEncoder(config).eval()
    with torch.inference_mode():
        before = model(ids)
        model.transformer.resblocks[-1].mlp.c_proj.bias.add_(1.0)
        assert torch.equal(model(ids), before)  # the penultimate block's output is what SD2 reads
        model.transformer.resblocks[0].mlp.c_proj.bias.add_(1.0)
        assert not torch.equal(model(ids), before)


@pytest.mark.parametrize("in_channels", [4, 9])
def test_tiny_sd2_unet_matches_diffusers(in_channels):
    config = tiny_sd2()
    config.unet.in_channels = in_channels
    assert max_abs_diff_to_diffusers(config, latent_size=8) <= 1e-5


def test_sd2_heads_are_64_wide():
    with torch.device("meta"):
        unet = UNet(dataclasses.replace(sd21_v().unet, channel_mult=(1, 2, 4)))
    heads = {name: m.heads for name, m in unet.named_modules() if name.endswith("transformer_blocks.0.attn2")}
    assert [heads[f"{block}.transformer_blocks.0.attn2"] for block in
            ("input_blocks.1.1", "input_blocks.4.1", "input_blocks.7.1", "middle_block.1")] == [5, 10, 20, 20]


def test_upcast_attention_computes_in_fp32():
    """An upcast layer given bf16 inputs returns bf16, computed from fp32 attention (SD2-768's fp16 overflow fix)."""
    layer = CrossAttention(64, 4, upcast=True)
    q, k, v = (torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(i)).bfloat16() for i in range(3))
    out = layer.attend(q, k, v, heads=4)
    layer.upcast = False
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, layer.attend(q.float(), k.float(), v.float(), heads=4).bfloat16())
