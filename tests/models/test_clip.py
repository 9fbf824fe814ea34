"""The CLIP text encoder against transformers' CLIPTextModel holding the same (random) weights.

Weights travel in the on-disk layouts SD files use (`text_model.*` in a diffusers `text_encoder/`,
`cond_stage_model.transformer.text_model.*` in an original checkpoint), through the reference libraries'
own loaders, so these tests also prove our module paths are those keys.
"""

import pytest
import torch
from safetensors.torch import save_file

from diffx.errors import InvalidArgumentError
from diffx.models.attention import AttentionLayer, observe_attention
from diffx.models.clip import TextEncoder
from diffx.models.configs import TextEncoderConfig, tiny
from diffx.models.tokenizer import ClipTokenizer

transformers = pytest.importorskip("transformers")

PROMPTS = ["a photo of a cat", "An astronaut riding a horse on Mars, highly detailed, 8k"]


def reference_config(config: TextEncoderConfig):
    return transformers.CLIPTextConfig(
        vocab_size=config.vocab_size,
        max_position_embeddings=config.max_position_embeddings,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        layer_norm_eps=config.layer_norm_eps,
        hidden_act="quick_gelu",
    )


def random_text_encoder(config: TextEncoderConfig, seed: int = 0) -> TextEncoder:
    """A TextEncoder whose every weight matters: LayerNorms get random scales and shifts too."""
    torch.manual_seed(seed)
    model = TextEncoder(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(param))
    return model


def input_ids(config: TextEncoderConfig) -> torch.Tensor:
    """Real prompts' ids (start, words, end, end-padding) plus one row of random ids: (3, 77)."""
    prompts = ClipTokenizer.default()(PROMPTS)
    random_ids = torch.randint(0, config.vocab_size, (1, config.max_position_embeddings),
                               generator=torch.Generator().manual_seed(1))
    return torch.cat([prompts, random_ids])


def max_abs_diff(ours: TextEncoder, theirs, ids: torch.Tensor) -> float:
    with torch.inference_mode():
        hidden_ours = ours(ids)
        hidden_theirs = theirs(input_ids=ids).last_hidden_state
    assert hidden_ours.shape == (ids.shape[0], ids.shape[1], ours.config.hidden_size)
    assert hidden_theirs.abs().max() > 0.1  # a vacuous comparison would prove nothing
    return (hidden_ours - hidden_theirs).abs().max().item()


def test_state_dict_keys_are_clip_text_model_keys():
    keys = list(TextEncoder(tiny().text_encoder).state_dict())
    layer = "text_model.encoder.layers.1."
    for key in ["text_model.embeddings.token_embedding.weight",
                "text_model.embeddings.position_embedding.weight",
                layer + "self_attn.q_proj.weight", layer + "self_attn.out_proj.bias",
                layer + "layer_norm1.weight", layer + "mlp.fc1.weight", layer + "mlp.fc2.bias",
                layer + "layer_norm2.bias", "text_model.final_layer_norm.weight"]:
        assert key in keys
    assert len(keys) == 2 + 2 * 16 + 2  # embeddings, 16 tensors per layer, final LayerNorm
    assert not any("position_ids" in key for key in keys)


def test_tiny_matches_transformers_loaded_from_a_diffusers_folder(tmp_path):
    """Our state dict saved as a `text_encoder/` folder loads into transformers with nothing missing."""
    config = tiny().text_encoder
    ours = random_text_encoder(config)
    save_file(ours.state_dict(), tmp_path / "model.safetensors")
    reference_config(config).save_pretrained(tmp_path)
    theirs, info = transformers.CLIPTextModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    diff = max_abs_diff(ours, theirs.eval(), input_ids(config))
    assert diff <= 1e-5, diff


def test_tiny_loads_transformers_weights():
    """The other direction: transformers' own random init, keys as stored on disk, loaded strictly."""
    config = tiny().text_encoder
    torch.manual_seed(0)
    theirs = transformers.CLIPTextModel(reference_config(config)).eval()
    ours = TextEncoder(config).eval()
    ours.load_state_dict({f"text_model.{key}": value for key, value in theirs.state_dict().items()})
    assert max_abs_diff(ours, theirs, input_ids(config)) <= 1e-5


def test_position_ids_key_is_tolerated():
    config = tiny().text_encoder
    state_dict = random_text_encoder(config).state_dict()
    state_dict["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    model = TextEncoder(config)
    model.load_state_dict(state_dict)  # strict: no unexpected key
    assert "text_model.embeddings.position_ids" not in model.state_dict()


def test_attention_is_causal():
    config = tiny().text_encoder
    model = random_text_encoder(config)
    ids = input_ids(config)[:1]
    changed = ids.clone()
    changed[0, 5] = 1234
    with torch.inference_mode():
        hidden, hidden_changed = model(ids), model(changed)
    assert torch.equal(hidden[:, :5], hidden_changed[:, :5])  # earlier tokens cannot see token 5
    assert not torch.allclose(hidden[:, 5:], hidden_changed[:, 5:])


class Recorder:
    def __init__(self):
        self.probs = {}

    def wants(self, layer):
        return True

    def observe(self, layer, probs):
        self.probs[layer.layer_name] = probs


def test_self_attention_goes_through_attention_layer():
    config = tiny().text_encoder
    model = random_text_encoder(config)
    layers = [m for m in model.modules() if isinstance(m, AttentionLayer)]
    assert len(layers) == config.num_hidden_layers
    assert all(layer.kind == "self" for layer in layers)
    ids = input_ids(config)
    with torch.inference_mode():
        plain = model(ids)
        with observe_attention(Recorder()) as recorder:
            observed = model(ids)
    assert torch.equal(plain, observed)  # watching never changes the numbers
    assert sorted(recorder.probs) == [f"text_model.encoder.layers.{i}.self_attn" for i in range(2)]
    probs = recorder.probs["text_model.encoder.layers.0.self_attn"]
    assert probs.shape == (3, config.num_attention_heads, 77, 77)
    assert torch.allclose(probs.sum(-1), torch.ones(()))
    assert probs.triu(1).abs().max() == 0  # causal: no weight on later tokens


def test_unknown_activation_is_a_user_error():
    with pytest.raises(InvalidArgumentError, match="hidden_act"):
        TextEncoder(TextEncoderConfig(hidden_act="relu6", num_hidden_layers=1, hidden_size=8,
                                      intermediate_size=8, num_attention_heads=2))


@pytest.mark.slow
def test_sd15_size_matches_transformers():
    config = TextEncoderConfig()  # SD1.5: CLIP ViT-L/14 text tower, 12 layers, width 768, 12 heads
    ours = random_text_encoder(config)
    theirs = transformers.CLIPTextModel(reference_config(config)).eval()
    # transformers >= 5.6 keeps CLIPTextModel's modules at the top level; the files keep `text_model.`.
    theirs.load_state_dict({key.removeprefix("text_model."): v for key, v in ours.state_dict().items()})
    diff = max_abs_diff(ours, theirs, input_ids(config))
    print(f"SD1.5 text encoder, max |ours - transformers| = {diff:.2e}")
    assert diff <= 1e-4


@pytest.mark.slow
def test_sd15_original_checkpoint_through_diffusers_single_file_loader(tmp_path):
    """Our weights as an original SD checkpoint's `cond_stage_model.transformer.*`, read by diffusers."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        create_diffusers_clip_model_from_ldm,
    )

    config = TextEncoderConfig()
    ours = random_text_encoder(config, seed=1)
    checkpoint = {f"cond_stage_model.transformer.{key}": value for key, value in ours.state_dict().items()}
    checkpoint["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    checkpoint["model.diffusion_model.out.2.bias"] = torch.zeros(4)  # other components are ignored

    converted = convert_ldm_clip_checkpoint(checkpoint)
    assert set(converted) == set(ours.state_dict()) | {"text_model.embeddings.position_ids"}
    reloaded = TextEncoder(config)
    reloaded.load_state_dict(converted)  # the converter's output loads strictly into ours, too

    reference_config(config).save_pretrained(tmp_path / "text_encoder")
    theirs = create_diffusers_clip_model_from_ldm(
        transformers.CLIPTextModel, checkpoint, subfolder="text_encoder", config=str(tmp_path),
        local_files_only=True,
    )
    their_weights = {f"text_model.{key}": value for key, value in theirs.state_dict().items()}
    for key, value in ours.state_dict().items():
        assert torch.equal(their_weights[key], value), key
    ids = input_ids(config)
    assert max_abs_diff(ours, theirs, ids) <= 1e-4
    with torch.inference_mode():
        assert torch.equal(reloaded.eval()(ids), ours(ids))


@pytest.mark.parametrize("act, width, heads", [("quick_gelu", 768, 12), ("gelu", 1280, 20)], ids=["clip-l", "big-g"])
def test_projection_matches_clip_text_model_with_projection(act: str, width: int, heads: int) -> None:
    """SD3's encoders (CLIP-L, bigG, both `CLIPTextModelWithProjection`) at real widths, 2 layers: the penultimate
    hidden state without the final norm, and the pooled projection taken at the first end token."""
    config = TextEncoderConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2,
                               num_attention_heads=heads, hidden_act=act, skipped_layers=1, final_norm=False,
                               projection_dim=width)
    torch.manual_seed(0)
    reference = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2, num_attention_heads=heads,
        hidden_act=act, projection_dim=width, eos_token_id=49407)).eval()
    ours = TextEncoder(config).eval()
    ours.load_state_dict({k: v for k, v in reference.state_dict().items() if "position_ids" not in k})
    ids = ClipTokenizer.default()(PROMPTS)
    with torch.no_grad():
        expected = reference(ids, output_hidden_states=True)
        context, pooled = ours.encode(ids, end_id=49407)
    torch.testing.assert_close(context, expected.hidden_states[-2], atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, expected.text_embeds, atol=1e-5, rtol=0)
