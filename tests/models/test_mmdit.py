"""diffx's MMDiT against diffusers' `SD3Transformer2DModel`, and what observers see of its joint attention.

Parity runs each family's REAL width — SD3-medium (1536 wide, 24 heads), SD3.5-medium (MMDiT-X: 1536, QK-norm,
384² position table), SD3.5-large (2432 wide, 38 heads, QK-norm) — at REDUCED depth, 2 or 3 blocks instead of
24 and 38 (SD3.5-large's 8 B parameters are 32 GB per fp32 copy: they cannot be built twice on a 2-core CI
machine). The reduced depths keep every kind of block: plain ones, MMDiT-X's dual-attention ones (SD3.5-medium:
blocks 0 and 1, then a plain last one) and the pre-only last block. Random weights, the RMS norms' gains
randomised too, go through `diffx.weights.sd3_layout`, so the tests also prove the key mapping; diffusers' own
converter of Stability's single files checks that diffx's module paths are those files' keys. The full-depth
presets are built on the meta device and counted against diffusers' own meta-built models.
"""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import SD3Transformer2DModel
from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers
from diffusers.models.embeddings import PatchEmbed
from torch import Tensor, nn

from diffx.errors import InvalidArgumentError
from diffx.models.attention import AttentionLayer, observe_attention
from diffx.models.mmdit import MMDiT, MMDiTConfig, sd3_medium, sd35_large, sd35_medium, small
from diffx.weights.sd3_layout import diffusers_to_diffx, sd3_config

# The diffusers configs of the released models (their `transformer/config.json`), less the `_` fields.
HUB_CONFIGS = {
    "sd3-medium": dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                       num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                       pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192),
    "sd3.5-medium": dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                         num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                         pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384, qk_norm="rms_norm",
                         dual_attention_layers=list(range(13))),
    "sd3.5-large": dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                        num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                        pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm"),
}
PRESETS = {"sd3-medium": sd3_medium, "sd3.5-medium": sd35_medium, "sd3.5-large": sd35_large}
# Reduced depths: (num_layers, dual_attention_layers)
REDUCED = {"sd3-medium": (3, []), "sd3.5-medium": (3, [0, 1]), "sd3.5-large": (2, [])}


def inputs(config: MMDiTConfig, height: int, width: int, text_tokens: int, batch: int = 2
           ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x, t, context, pooled) for `config`: a latent, t = σ·1000 per sample, text tokens, pooled text."""
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(batch, config.in_channels, height, width, generator=generator),
            torch.tensor([999.0, 312.5, 20.0][:batch]),
            torch.randn(batch, text_tokens, config.context_dim, generator=generator),
            torch.randn(batch, config.pooled_dim, generator=generator))


def randomise_norms(model: nn.Module) -> None:
    """Give every QK-norm gain a random value (they start at 1), so a swapped ln_q / ln_k would show."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if re.search(r"\.(norm_(added_)?[qk]|ln_[qk])\.weight$", name):
                parameter.copy_(1 + 0.5 * torch.randn(parameter.shape, generator=generator))


def loaded(reference: SD3Transformer2DModel) -> MMDiT:
    """diffx's MMDiT holding `reference`'s tensors (built on the meta device, the tensors assigned, not copied)."""
    config = sd3_config(dict(reference.config))
    with torch.device("meta"):
        model = MMDiT(config)
    model.load_state_dict(diffusers_to_diffx(reference.state_dict(), config), assign=True)
    return model.eval()


@pytest.mark.parametrize("name", list(HUB_CONFIGS))
def test_real_width_matches_diffusers(name: str):
    depth, dual = REDUCED[name]
    torch.manual_seed(0)
    reference = SD3Transformer2DModel(**{**HUB_CONFIGS[name], "num_layers": depth, "dual_attention_layers": dual})
    randomise_norms(reference)
    model = loaded(reference.eval())
    assert [block.x_block.attn2 is not None for block in model.joint_blocks] == [i in dual for i in range(depth)]
    x, t, context, pooled = inputs(model.config, 16, 24, 24)  # 8×12 patches: a non-square crop of the table
    with torch.no_grad():
        expected = reference(x, context, pooled, t).sample
        velocity = model(x, t, context, pooled)
    assert velocity.shape == x.shape
    # The same operations in the same order: fp32 agrees to rounding (measured: 0 for all three).
    assert (velocity - expected).abs().max().item() <= 1e-5
    assert expected.abs().max().item() > 0.1  # a real signal, not two zeros


def test_module_paths_are_the_single_files_keys():
    """diffusers' own converter of Stability's single files takes every tensor of diffx's state dict (prefixed
    `model.diffusion_model.`, as the files hold them) and leaves none; the model it fills computes diffx's numbers."""
    torch.manual_seed(0)
    model = MMDiT(small()).eval()
    randomise_norms(model)
    single_file = {f"model.diffusion_model.{key}": value for key, value in model.state_dict().items()}
    converted = convert_sd3_transformer_checkpoint_to_diffusers(single_file)
    assert single_file == {}  # the converter pops what it reads: nothing of diffx's is left over
    config = model.config
    reference = SD3Transformer2DModel(
        sample_size=config.sample_size, patch_size=config.patch_size, in_channels=config.in_channels,
        num_layers=config.depth, attention_head_dim=config.head_dim, num_attention_heads=config.heads,
        joint_attention_dim=config.context_dim, caption_projection_dim=config.width,
        pooled_projection_dim=config.pooled_dim, out_channels=config.out_channels,
        pos_embed_max_size=config.pos_embed_max_size, dual_attention_layers=config.dual_attention_layers,
        qk_norm="rms_norm").eval()
    reference.load_state_dict(converted, strict=True)
    x, t, context, pooled = inputs(config, 10, 6, 7)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, context, pooled), reference(x, context, pooled, t).sample)


@pytest.mark.parametrize("name", list(HUB_CONFIGS))
def test_presets_have_diffusers_parameter_counts(name: str):
    with torch.device("meta"):
        ours = MMDiT(PRESETS[name]())
        reference = SD3Transformer2DModel(**HUB_CONFIGS[name])
    count = sum(parameter.numel() for parameter in ours.parameters())
    assert count == sum(parameter.numel() for parameter in reference.parameters())
    assert count == {"sd3-medium": 2_028_328_000, "sd3.5-medium": 2_243_171_520, "sd3.5-large": 8_056_627_520}[name]
    assert sd3_config(HUB_CONFIGS[name]) == PRESETS[name]()


def test_position_table_is_cropped_at_the_centre_as_diffusers_does():
    config = small()
    model = MMDiT(config)
    reference = PatchEmbed(height=config.sample_size, width=config.sample_size, patch_size=config.patch_size,
                           in_channels=config.in_channels, embed_dim=config.width,
                           pos_embed_max_size=config.pos_embed_max_size)
    assert torch.equal(model.pos_embed, reference.pos_embed)
    for height, width in ((5, 9), (16, 3), (16, 16)):  # in patches; odd margins round down on the top/left
        crop = model.cropped_pos_embed(height, width)
        assert torch.equal(crop, reference.cropped_pos_embed(height * 2, width * 2))
        # The first token is table row (16 - h) // 2, column (16 - w) // 2.
        top, left = (16 - height) // 2, (16 - width) // 2
        assert torch.equal(crop[0, 0], model.pos_embed[0, top * 16 + left])


class JointRecorder:
    """Keeps the probabilities of every layer, by name, and the layers' kinds."""

    def __init__(self):
        self.probs: dict[str, Tensor] = {}
        self.kinds: dict[str, str] = {}

    def wants(self, layer: AttentionLayer) -> bool:
        return True

    def observe(self, layer: AttentionLayer, probs: Tensor) -> None:
        self.probs[layer.layer_name], self.kinds[layer.layer_name] = probs, layer.kind


def test_observers_see_joint_attention_image_first_and_change_nothing():
    torch.manual_seed(0)
    model = MMDiT(small()).eval()
    x, t, context, pooled = inputs(model.config, 6, 8, 5)
    n_image, n_text = 3 * 4, 5
    # The per-head q and k each stream hands the joint attention of block 0 (the QK-norms' outputs).
    normed = {}
    block = model.joint_blocks[0]
    for name, module in (("x_q", block.x_block.attn.ln_q), ("x_k", block.x_block.attn.ln_k),
                         ("c_q", block.context_block.attn.ln_q), ("c_k", block.context_block.attn.ln_k)):
        module.register_forward_hook(lambda module, args, out, name=name: normed.__setitem__(name, out))
    with torch.no_grad():
        plain = model(x, t, context, pooled)
        with observe_attention(JointRecorder()) as recorder:
            observed = model(x, t, context, pooled)
    assert torch.equal(observed, plain)
    assert recorder.kinds == {"joint_blocks.0.attn": "joint", "joint_blocks.0.x_block.attn2": "self",
                              "joint_blocks.1.attn": "joint"}
    heads = model.config.heads
    for name, kind in recorder.kinds.items():
        tokens = n_image + n_text if kind == "joint" else n_image
        probs = recorder.probs[name]
        assert probs.shape == (2, heads, tokens, tokens)
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, heads, tokens))
    # Image tokens first, then text: softmax([q_img; q_txt] [k_img; k_txt]^T / sqrt(d)) per head.
    q = torch.cat([normed["x_q"], normed["c_q"]], dim=1).transpose(1, 2)  # (B, heads, N, head_dim)
    k = torch.cat([normed["x_k"], normed["c_k"]], dim=1).transpose(1, 2)
    expected = (q @ k.transpose(-1, -2) / model.config.head_dim ** 0.5).softmax(-1)
    torch.testing.assert_close(recorder.probs["joint_blocks.0.attn"], expected)


@pytest.mark.parametrize("height, width", [(7, 8), (8, 34)])
def test_latents_that_do_not_fit_are_refused(height: int, width: int):
    model = MMDiT(small())
    x, t, context, pooled = inputs(model.config, height, width, 3)
    with pytest.raises(InvalidArgumentError, match="multiple of 2 and at most 32"):
        model(x, t, context, pooled)
