"""The T5 v1.1 encoder against transformers' T5EncoderModel holding the same (random) weights.

The XXL comparison uses T5-XXL v1.1's real widths (d_model 4096, 64 heads of 64, d_ff 10240, vocabulary 32128)
at reduced depth — 2 blocks instead of 24, to fit the test machine's memory and time; the full 24-block model is
built on the meta device only (its parameter count).
"""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from diffx.models.attention import AttentionLayer, observe_attention
from diffx.models.t5 import T5Config, T5Encoder, relative_position_bucket, small, t5_xxl
from tests.models.test_clip import Recorder  # the observer that keeps every layer's probabilities

transformers = pytest.importorskip("transformers")


def reference_config(config: T5Config):
    return transformers.T5Config(
        vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.d_kv, d_ff=config.d_ff,
        num_layers=config.num_layers, num_heads=config.num_heads,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance,
        layer_norm_epsilon=config.layer_norm_epsilon, feed_forward_proj=config.feed_forward_proj,
        dropout_rate=0.0, is_encoder_decoder=False, use_cache=False,
    )


def random_t5(config: T5Config, seed: int = 0) -> T5Encoder:
    """A T5Encoder whose every weight matters, filled without a second initialisation pass: linear layers
    N(0, 1/fan_in), norms 1 + N(0, 0.1^2), the embedding and the position-bias table N(0, 1)."""
    with torch.device("meta"):
        model = T5Encoder(config)
    model = model.to_empty(device="cpu").eval()
    model.encoder.embed_tokens = model.shared  # to_empty keeps the tie, but say so
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(generator=generator)
            if "layer_norm" in name:
                param.mul_(0.1).add_(1.0)
            elif param.ndim == 2 and "shared" not in name and "relative_attention_bias" not in name:
                param.mul_(param.shape[1] ** -0.5)
    return model


def reference_with(ours: T5Encoder):
    """transformers' T5EncoderModel built on the meta device, then given our very tensors (no copy)."""
    with torch.device("meta"):
        theirs = transformers.T5EncoderModel(reference_config(ours.config))
    theirs.load_state_dict(ours.state_dict(), assign=True, strict=True)
    theirs.encoder.embed_tokens = theirs.shared
    return theirs.eval()


def ids_for(config: T5Config, batch: int = 2, length: int = 40) -> torch.Tensor:
    """Random ids, the end token 1 and padding 0 at the end of the first row, as SD3 feeds them: (B, L)."""
    ids = torch.randint(3, config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(1))
    ids[0, 20] = 1
    ids[0, 21:] = 0
    return ids


def max_abs_diff(ours: T5Encoder, theirs, ids: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    with torch.inference_mode():
        hidden_ours = ours(ids, mask)
        hidden_theirs = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
    assert hidden_ours.shape == (*ids.shape, ours.config.d_model)
    assert hidden_theirs.float().abs().max() > 0.1  # a vacuous comparison would prove nothing
    return (hidden_ours.float() - hidden_theirs.float()).abs().max().item()


def test_xxl_widths_at_two_blocks_match_transformers():
    """T5-XXL v1.1's widths, 2 blocks (reduced depth), no mask (SD3's pipeline passes none): fp32 parity."""
    config = dataclasses.replace(t5_xxl(), num_layers=2)
    ours = random_t5(config)
    diff = max_abs_diff(ours, reference_with(ours), ids_for(config, length=48))
    assert diff <= 1e-4, diff


def test_small_with_attention_mask_matches_transformers():
    config = small()
    ours = random_t5(config)
    theirs = reference_with(ours)
    ids = ids_for(config, length=160)  # longer than max_distance: the last, shared bucket is used
    mask = (torch.arange(ids.shape[1]) <= 20).long().expand(2, -1).clone()
    mask[1] = 1
    assert max_abs_diff(ours, theirs, ids, mask) <= 1e-5
    with torch.inference_mode():
        assert not torch.allclose(ours(ids, mask)[0], ours(ids)[0])  # the mask did change row 0
    assert max_abs_diff(ours, theirs, ids) <= 1e-5


def test_fp16_keeps_wo_in_fp32_as_transformers():
    """In fp16 the feed-forward outputs `wo` stay fp32, as transformers' `_keep_in_fp32_modules`; same numbers."""
    ours = random_t5(small()).to_dtype(torch.float16)
    assert {p.dtype for n, p in ours.named_parameters() if n.endswith("wo.weight")} == {torch.float32}
    assert ours.shared.weight.dtype == torch.float16 and ours.encoder.embed_tokens is ours.shared
    theirs = reference_with(ours)
    diff = max_abs_diff(ours, theirs, ids_for(ours.config))
    assert diff <= 1e-2, diff
    # The reference computes its attention in fp16, diffx in fp32; diffx stays close to the fp32 model.
    with torch.inference_mode():
        half, full = ours(ids_for(ours.config)), random_t5(small())(ids_for(ours.config))
    assert half.dtype == torch.float16 and (half.float() - full).abs().max() <= 1e-2


def test_full_xxl_on_meta_has_transformers_parameter_count():
    with torch.device("meta"):
        ours = T5Encoder(t5_xxl())
        theirs = transformers.T5EncoderModel(reference_config(t5_xxl()))
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters())
    assert 4.7e9 < count < 4.8e9  # T5-XXL's encoder: 4.76 B parameters
    assert set(ours.state_dict()) == set(theirs.state_dict())


def test_loads_a_transformers_save_pretrained_folder(tmp_path):
    """transformers' own random init, saved to disk; loaded by its keys, either embedding name, strictly."""
    torch.manual_seed(0)
    theirs = transformers.T5EncoderModel(reference_config(small())).eval()
    theirs.save_pretrained(tmp_path)
    state_dict = load_file(tmp_path / "model.safetensors")
    assert "shared.weight" in state_dict  # transformers writes the tied table once
    table = state_dict.pop("shared.weight")
    ids = ids_for(small())
    for names in (["shared.weight"], ["encoder.embed_tokens.weight"], ["shared.weight", "encoder.embed_tokens.weight"]):
        ours = T5Encoder(small()).eval()
        ours.load_state_dict(state_dict | dict.fromkeys(names, table))
        assert ours.encoder.embed_tokens is ours.shared
        assert max_abs_diff(ours, theirs, ids) <= 1e-5


def test_relative_position_buckets():
    """Exact buckets for distances below 8, log-spaced up to 128, keys after the query in the upper half."""
    relative = torch.tensor([0, 1, 7, 8, 127, 128, 1000, -1, -7, -1000])
    assert relative_position_bucket(relative, 32, 128).tolist() == [0, 17, 23, 24, 31, 31, 31, 1, 7, 15]


def test_attention_goes_through_attention_layer():
    model = random_t5(small())
    layers = [m for m in model.modules() if isinstance(m, AttentionLayer)]
    assert [layer.layer_name for layer in layers] == [
        f"encoder.block.{i}.layer.0.SelfAttention" for i in range(small().num_layers)]
    assert all(layer.kind == "self" for layer in layers)
    ids = ids_for(small())
    with torch.inference_mode():
        plain = model(ids)
        with observe_attention(Recorder()) as recorder:
            watched = model(ids)
    assert torch.equal(plain, watched)
    probs = recorder.probs["encoder.block.1.layer.0.SelfAttention"]
    assert probs.shape == (2, small().num_heads, ids.shape[1], ids.shape[1])
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
