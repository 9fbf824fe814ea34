"""The tracer: what it records, that watching changes nothing, and the trace file."""

import copy
import json
import math
from dataclasses import fields

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from diffx.errors import InvalidArgumentError, OutputPathError, TraceFileError
from diffx.models.attention import observe_attention
from diffx.models.configs import sd15, tiny
from diffx.models.stable_diffusion import build
from diffx.models.tokenizer import CONTEXT_LENGTH, TokenizedPrompt
from diffx.pipeline.codec import decode_latents
from diffx.pipeline.conditioning import PromptTruncatedWarning, encode_text
from diffx.pipeline.generation import generate
from diffx.pipeline.settings import GenerationSettings, ResolvedSettings
from diffx.sampling.grids import SAMPLERS
from diffx.trace.attention import daam_aggregate, layer_labels
from diffx.trace.checks import SAMPLES_PER_TENSOR, model_identity, spaced_values
from diffx.trace.record import Trace, load_trace, save_trace
from diffx.trace.tracer import DEFAULT_RECORD, RECORDABLE, TraceOptions, Tracer, generate_traced

SIZE = 32  # pixels; tiny's f2 VAE → a 16x16 latent, attention grids 16x16 and 8x8
LATENT = SIZE // 2
PROMPT = "a cuboid and a red sphere"  # "cuboid" is three BPE tokens: cu, bo, id</w>


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build(tiny()).eval()


def settings(**changes) -> GenerationSettings:
    return GenerationSettings(**{"prompt": PROMPT, "steps": 3, "guidance": 7.5, "height": SIZE, "width": SIZE,
                                 "seed": 1, **changes})


@pytest.fixture(scope="module")
def default_trace(model) -> Trace:
    return generate_traced(model, settings()).traces[0]


@pytest.fixture
def observed_layers(monkeypatch) -> list[tuple[str, int]]:
    """(layer name, query count) of every attention layer the tracer is handed probabilities of."""
    seen = []
    observe = Tracer.observe

    def spy(self, layer, probs):
        seen.append((layer.layer_name, probs.shape[2]))
        observe(self, layer, probs)

    monkeypatch.setattr(Tracer, "observe", spy)
    return seen


# ---------------------------------------------------------------------------------------------------
# Watching changes nothing


@pytest.mark.parametrize("sampler, guidance", [("ddim", 7.5), ("euler_a", 7.5), ("heun", 3.0), ("dpmpp_2m", 1.0)])
def test_tracing_does_not_change_the_image(model, sampler, guidance):
    everything = TraceOptions(record=("latents", "eps", "x0", "attention", "negative_attention", "self_attention"))
    plain = generate(model, settings(sampler=sampler, guidance=guidance, negative_prompt="blue"))
    traced = generate_traced(model, settings(sampler=sampler, guidance=guidance, negative_prompt="blue"),
                             options=everything, decode_every=1)
    assert torch.equal(plain.latents, traced.latents)
    assert np.array_equal(plain.images[0], traced.images[0])


# ---------------------------------------------------------------------------------------------------
# What is recorded


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_recorded_shapes(model, sampler):
    records = []
    result = generate_traced(model, settings(sampler=sampler), progress=records.append)
    trace = result.traces[0]
    evaluations = 2 * 3 - 1 if sampler == "heun" else 3  # Heun evaluates the model twice per step but the last
    tokens = trace.tokens.num_tokens
    assert tokens == 2 + 8  # start, a, cu, bo, id, and, a, red, sphere, end
    expected = {"timesteps": (evaluations,), "sigmas": (evaluations,), "alphas_cumprod": (evaluations,),
                "latents": (evaluations, 4, LATENT, LATENT), "eps": (evaluations, 4, LATENT, LATENT),
                "eps_cond": (evaluations, 4, LATENT, LATENT), "eps_uncond": (evaluations, 4, LATENT, LATENT),
                "x0": (evaluations, 4, LATENT, LATENT), "attention": (evaluations, tokens, LATENT, LATENT),
                "final_latent": (4, LATENT, LATENT), "image": (SIZE, SIZE, 3)}
    assert {key: tuple(value.shape) for key, value in trace.tensors.items()} == expected
    assert trace.num_steps == evaluations == len(records)
    assert trace.tensors["image"].dtype == torch.uint8 and np.array_equal(trace.tensors["image"], result.images[0])
    assert torch.equal(trace.tensors["final_latent"], result.latents[0])
    # The values are the sampler's own, stored in fp16.
    assert trace.tensors["timesteps"].tolist() == [r.timestep for r in records]
    assert torch.equal(trace.tensors["x0"], torch.stack([r.x0_pred[0] for r in records]).half())
    assert torch.equal(trace.tensors["latents"], torch.stack([r.x[0] for r in records]).half())
    uncond, cond = trace.tensors["eps_uncond"].float(), trace.tensors["eps_cond"].float()
    torch.testing.assert_close(trace.tensors["eps"].float(), uncond + 7.5 * (cond - uncond), atol=0.1, rtol=0.01)


def test_attention_probabilities_and_their_aggregation(model, observed_layers):
    """Per layer, the token maps of each pixel sum to 1; DAAM upsamples them to the largest grid and averages."""
    tracer = Tracer((LATENT, LATENT), TraceOptions(record=("attention",)), num_tokens=77)  # rows sum to 1
    context = encode_text(model, [model.tokenizer.encode(PROMPT)])
    with torch.no_grad(), observe_attention(tracer):
        model.unet(torch.randn(1, 4, LATENT, LATENT), torch.tensor(500.0), context)
    per_layer = tracer._pending["attention"]
    grids = sorted({m.shape[-1] for m in per_layer})
    assert len(per_layer) == len(observed_layers) == 7 and grids == [LATENT // 2, LATENT]
    assert all(name.endswith("attn2") for name, _ in observed_layers)  # cross-attention layers only
    for maps in per_layer:  # (77, rows, cols)
        assert maps.min() >= 0
        torch.testing.assert_close(maps.sum(0), torch.ones(maps.shape[1:]))

    expected = torch.stack([F.interpolate(m[None], size=(LATENT, LATENT), mode="bicubic")[0] for m in per_layer])
    aggregated = _aggregate_via_on_step(tracer)
    assert aggregated.shape == (77, LATENT, LATENT)
    torch.testing.assert_close(aggregated.float(), expected.mean(0).clamp_min(0).half().float())
    torch.testing.assert_close(aggregated.float().sum(0), torch.ones(LATENT, LATENT), atol=0.02, rtol=0)


def _aggregate_via_on_step(tracer: Tracer) -> torch.Tensor:
    from diffx.sampling.samplers import StepRecord

    x = torch.zeros(1, 4, LATENT, LATENT)
    tracer.on_step(StepRecord(index=0, num_steps=1, timestep=500.0, sigma=1.0, alpha_cumprod=0.5, x=x, state=x,
                              eps_pred=x, x0_pred=x, x_next=x, next_sigma=0.0))
    return tracer.recorded("attention")[0]


def test_resolution_and_layer_selection(model, default_trace, observed_layers):
    low = generate_traced(model, settings(), options=TraceOptions(attention_resolutions=(LATENT // 2,))).traces[0]
    assert low.tensors["attention"].shape[-2:] == (LATENT // 2, LATENT // 2)
    assert not low.tensors["attention"].isnan().any()

    observed_layers.clear()
    decoder = generate_traced(model, settings(), options=TraceOptions(attention_layers=r"output_blocks")).traces[0]
    names = {name for name, _ in observed_layers}
    assert names and all(name.startswith("output_blocks.") for name in names)
    assert decoder.tensors["attention"].shape == default_trace.tensors["attention"].shape
    assert not torch.equal(decoder.tensors["attention"], default_trace.tensors["attention"])


def test_negative_attention_is_recorded_when_asked(model, default_trace):
    assert "negative_attention" not in default_trace.tensors
    trace = generate_traced(model, settings(negative_prompt="blurry"),
                            options=TraceOptions(record=("negative_attention",))).traces[0]
    assert trace.negative_tokens.num_tokens == 3  # start, blurry, end
    assert trace.tensors["negative_attention"].shape == (3, 3, LATENT, LATENT)
    assert "attention" not in trace.tensors and "eps" not in trace.tensors
    assert trace.word_maps(0, negative=True).shape == (1, LATENT, LATENT)


def test_attention_rows_belong_to_their_prompts(model):
    """In the batch [uncond; cond], negative_attention is the first row's and attention the last row's."""
    contexts = encode_text(model, [model.tokenizer.encode("blurry"), model.tokenizer.encode(PROMPT)])
    x = torch.randn(1, 4, LATENT, LATENT)

    def maps(context: torch.Tensor, record: tuple[str, ...]) -> dict[str, list[torch.Tensor]]:
        tracer = Tracer((LATENT, LATENT), TraceOptions(record=record), num_tokens=77, num_negative_tokens=77)
        with torch.no_grad(), observe_attention(tracer):
            model.unet(x.expand(len(context), -1, -1, -1), torch.tensor(500.0), context)
        return tracer._pending

    both = maps(contexts, ("attention", "negative_attention"))
    alone_negative, alone_positive = maps(contexts[:1], ("attention",)), maps(contexts[1:], ("attention",))
    for ours, expected in ((both["negative_attention"], alone_negative["attention"]),
                           (both["attention"], alone_positive["attention"])):
        for layer_maps, layer_expected in zip(ours, expected, strict=True):
            torch.testing.assert_close(layer_maps, layer_expected)
    assert not torch.allclose(both["attention"][0], both["negative_attention"][0])


def test_self_attention_entropy(model):
    trace = generate_traced(model, settings(), options=TraceOptions(record=("self_attention",))).traces[0]
    entropy = trace.tensors["self_attention"]
    assert entropy.shape == (3, LATENT, LATENT) and "attention" not in trace.tensors
    # Entropy of a distribution over the N = 16·16 pixels lies in [0, log N].
    assert entropy.min() >= 0 and entropy.max() <= math.log(LATENT * LATENT) + 1e-2


@pytest.fixture(scope="module")
def detailed_trace(model) -> Trace:
    """Every layer's and every head's cross-attention, and the 16×16 self-attention maps."""
    options = TraceOptions(record=(*DEFAULT_RECORD, "self_attention_maps"), attention_detail="heads")
    return generate_traced(model, settings(), options=options).traces[0]


def test_detail_changes_neither_the_image_nor_the_aggregate(model, default_trace, detailed_trace):
    """Per-layer and per-head recording leaves the image and the default DAAM map bit for bit as they were."""
    assert torch.equal(detailed_trace.tensors["attention"], default_trace.tensors["attention"])
    assert np.array_equal(detailed_trace.tensors["image"], default_trace.tensors["image"])
    assert "attention_layers" not in default_trace.meta and not any("layer_" in k for k in default_trace.tensors)


def test_layer_and_head_maps(model, detailed_trace, observed_layers):
    """Each layer at its own grid, in U-Net order; heads average to the layer's map; the layers' DAAM
    aggregate is the recorded one; with the padding share, each pixel's columns sum to 1."""
    layers = detailed_trace.attention_layers
    assert [info["label"] for info in layers] == ["down.0", "down.1", "mid", "up.0", "up.1", "up.2", "up.3"]
    assert [info["grid"] for info in layers] == [[16, 16], [8, 8], [8, 8], [8, 8], [8, 8], [16, 16], [16, 16]]
    assert all(info["name"].endswith("attn2") and info["heads"] == model.config.unet.num_heads for info in layers)
    tokens = detailed_trace.tokens.num_tokens
    for index, info in enumerate(layers):
        maps = detailed_trace.tensors[f"layer_attention.{index}"].float()
        heads = detailed_trace.tensors[f"head_attention.{index}"].float()
        assert maps.shape == (3, tokens, *info["grid"]) and heads.shape == (3, info["heads"], tokens, *info["grid"])
        torch.testing.assert_close(heads.mean(1), maps, atol=2e-3, rtol=0)
        assert (maps.sum(1) <= 1 + 2e-3).all()  # the K kept positions hold part of each pixel's unit of attention
    for step in range(3):
        aggregate = daam_aggregate([detailed_trace.token_maps(step, i) for i in range(len(layers))])
        torch.testing.assert_close(aggregate, detailed_trace.token_maps(step), atol=2e-3, rtol=0)
    labels, columns = detailed_trace.token_columns(detailed_trace.token_maps(1, 0))
    assert labels == ["⟨start⟩", "“a”", "“cuboid”", "“and”", "“a”", "“red”", "“sphere”", "⟨end⟩", "⟨padding ×67⟩"]
    kept = detailed_trace.token_maps(1, 0)
    torch.testing.assert_close(kept.sum(0) + columns[-1], torch.ones(16, 16))  # padding = 1 − Σ kept
    torch.testing.assert_close(columns[[0, -2]], kept[[0, tokens - 1]])  # start and end
    torch.testing.assert_close(columns[2], detailed_trace.token_maps(1, 0)[2:5].mean(0))  # cu, bo, id: the mean
    assert detailed_trace.token_maps(None, 3, 1).shape == (tokens, 8, 8)
    assert detailed_trace.layer_index("up.2") == detailed_trace.layer_index(5) == 5
    with pytest.raises(InvalidArgumentError, match="unknown layer 'up.9'; choose one of: down.0, down.1, mid"):
        detailed_trace.layer_index("up.9")


def test_self_attention_maps_are_the_rows_of_the_16x16_layers(model):
    """(S, 256, 256): the mean over heads and over the 16×16 self-attention layers of softmax(QKᵀ/√d)."""
    tracer = Tracer((LATENT, LATENT), TraceOptions(record=("self_attention_maps",)))
    seen = []
    observe = tracer.observe
    tracer.observe = lambda layer, probs: (seen.append((layer.layer_name, probs.clone())), observe(layer, probs))
    context = encode_text(model, [model.tokenizer.encode(PROMPT)])
    with torch.no_grad(), observe_attention(tracer):
        model.unet(torch.randn(1, 4, LATENT, LATENT), torch.tensor(500.0), context)
    finest = [probs[-1].mean(0) for _, probs in seen if probs.shape[2] == LATENT * LATENT]
    assert len(finest) == 3  # the attn1 of the 16×16 blocks: down.0, up.2, up.3
    torch.testing.assert_close(torch.stack(tracer._pending["self_attention_maps"]).mean(0), torch.stack(finest).mean(0))
    coarse = {name for name, probs in seen if probs.shape[2] != LATENT * LATENT}
    assert coarse and coarse <= tracer._unwanted  # the 8×8 layers are not computed again at the next step
    trace = generate_traced(model, settings(), options=TraceOptions(record=("self_attention_maps",))).traces[0]
    maps = trace.tensors["self_attention_maps"].float()
    assert maps.shape == (3, 256, 256) and trace.meta["self_attention_grid"] == [16, 16]
    torch.testing.assert_close(maps.sum(-1), torch.ones(3, 256), atol=2e-3, rtol=0)


def test_layer_labels():
    names = ["input_blocks.1.1.transformer_blocks.0.attn2", "input_blocks.2.1.transformer_blocks.0.attn2",
             "middle_block.1.transformer_blocks.0.attn2", "output_blocks.3.1.transformer_blocks.0.attn2"]
    assert layer_labels(names) == ["down.0", "down.1", "mid", "up.0"]
    assert layer_labels(names + ["middle_block.1.transformer_blocks.1.attn2"]) == [
        "down.0", "down.1", "mid.0", "up.0", "mid.1"]


def test_bad_detail_options():
    with pytest.raises(InvalidArgumentError, match="unknown attention detail 'all'; choose one of: aggregate"):
        TraceOptions(attention_detail="all")
    with pytest.raises(InvalidArgumentError, match="self_attention_resolution must be a positive"):
        TraceOptions(self_attention_resolution=0)


def test_word_maps_average_the_tokens_of_a_word(default_trace):
    words = default_trace.words
    assert words == ["a", "cuboid", "and", "a", "red", "sphere"]
    attention = default_trace.tensors["attention"][2].float()
    maps = default_trace.word_maps(2)
    assert maps.shape == (len(words), LATENT, LATENT)
    torch.testing.assert_close(maps[1], attention[2:5].mean(0))  # cu, bo, id</w> at positions 2..4
    torch.testing.assert_close(maps[5], attention[8])


def test_decode_every(model):
    trace = generate_traced(model, settings(steps=6), decode_every=2).traces[0]
    assert trace.tensors["decoded_steps"].tolist() == [0, 2, 4, 5]  # every 2nd step and the last
    assert trace.tensors["decoded_x0"].shape == (4, SIZE, SIZE, 3)
    expected = decode_latents(model, trace.tensors["x0"][[0, 2, 4, 5]].float())
    assert np.array_equal(trace.tensors["decoded_x0"].numpy(), np.stack(expected))
    assert "decoded_x0" not in generate_traced(model, settings()).traces[0].tensors


def test_unknown_record_names_the_choices():
    with pytest.raises(InvalidArgumentError, match="cannot record attn; choose from: latents, eps, x0, attention"):
        TraceOptions(record=("attn",))


# ---------------------------------------------------------------------------------------------------
# Trace files


def tokenized_fields(tokens: TokenizedPrompt) -> dict:
    """A `TokenizedPrompt`'s own fields (a `WeightedPrompt`'s weights left out: a trace file does not keep them)."""
    return {field.name: getattr(tokens, field.name) for field in fields(TokenizedPrompt)}


def test_save_and_load_round_trip(tmp_path, default_trace):
    path = save_trace(default_trace, tmp_path / "trace.safetensors")
    loaded = load_trace(path)
    assert loaded.meta == default_trace.meta
    assert loaded.settings.prompt == PROMPT and loaded.settings.seed == 1
    assert loaded.tensors.keys() == default_trace.tensors.keys()
    for key, value in default_trace.tensors.items():
        assert loaded.tensors[key].dtype == value.dtype and torch.equal(loaded.tensors[key], value), key
    with pytest.raises(OutputPathError):
        save_trace(default_trace, path)
    save_trace(default_trace, path, force=True)


def test_settings_and_tokens_read_back_typed(model, tmp_path):
    """Settings keep their types through the file (an int guidance stays an int, floats floats, bools bools);
    tokens come back as the 77-position `TokenizedPrompt` the text encoder read, a weighted prompt's too."""
    trace = generate_traced(model, settings(prompt="a (cuboid:1.2) and a red sphere", guidance=7, karras=True,
                                            sampler="euler", negative_prompt="blurry")).traces[0]
    loaded = load_trace(save_trace(trace, tmp_path / "typed.safetensors"))
    assert isinstance(loaded.settings, ResolvedSettings) and loaded.settings == trace.settings
    assert {name: type(value) for name, value in loaded.settings.as_dict().items()} == {
        name: type(value) for name, value in trace.settings.as_dict().items()}
    assert type(loaded.settings.guidance) is int and loaded.settings.karras is True
    assert type(loaded.settings.eta) is float and type(loaded.settings.guidance_rescale) is float
    for ours, theirs in ((loaded.tokens, trace.tokens), (loaded.negative_tokens, trace.negative_tokens)):
        assert type(ours) is TokenizedPrompt and tokenized_fields(ours) == tokenized_fields(theirs)
        assert len(ours.ids) == len(ours.tokens) == len(ours.word_ids) == CONTEXT_LENGTH
    assert loaded.tokens.prompt == "a cuboid and a red sphere"  # the text read: the weight's brackets removed
    assert loaded.tokens.word_positions(1) == [2, 3, 4]  # cu, bo, id
    assert load_trace(save_trace(loaded, tmp_path / "again.safetensors")).tokens == loaded.tokens


def test_a_long_prompts_cut_tokens_read_back(model, tmp_path):
    prompt = " ".join(["a red sphere"] * 30) + " with a purple dragon"
    with pytest.warns(PromptTruncatedWarning):
        trace = generate_traced(model, settings(prompt=prompt, steps=1)).traces[0]
    loaded = load_trace(save_trace(trace, tmp_path / "long.safetensors"))
    cut = loaded.tokens.truncated_tokens
    assert loaded.tokens.num_tokens == CONTEXT_LENGTH and cut == trace.tokens.truncated_tokens and cut
    assert "purple dragon" in loaded.tokens.truncated_text and loaded.tokens.word_positions(len(loaded.words) - 1) == []


def previous_layout_meta(trace: Trace, pad: bool = True) -> dict:
    """The metadata of `trace` as diffx wrote it before traces read back typed (format diffx-trace/4 too): the
    token dicts without the text read and the cut tokens, and, with `pad` False, without the pad token (older
    still)."""
    def token_info(t: TokenizedPrompt) -> dict:
        info = {"words": list(t.words), "tokens": list(t.tokens[: t.num_tokens]), "ids": list(t.ids[: t.num_tokens]),
                "word_ids": list(t.word_ids[: t.num_tokens]), "num_tokens": t.num_tokens,
                "truncated_text": t.truncated_text}
        return {**info, "pad_token": t.tokens[-1], "pad_id": t.ids[-1]} if pad else info

    meta = trace.meta
    return {"version": 4, "mode": meta["mode"], "prompt": trace.settings.prompt,
            "negative_prompt": trace.settings.negative_prompt, "tokens": token_info(trace.tokens),
            "negative_tokens": token_info(trace.negative_tokens), "model": meta["model"],
            "settings": dict(trace.settings.__dict__), "prediction_type": meta["prediction_type"],
            "latent_scaling_factor": meta["latent_scaling_factor"], "latent_preview": meta["latent_preview"],
            "versions": meta["versions"]}


@pytest.mark.parametrize("pad", [True, False])
def test_a_trace_file_of_the_previous_layout_still_loads(model, tmp_path, pad):
    """A file written before the token dicts held the text read and the cut tokens (and, older, the pad token)
    loads with the same settings and words; the text is the prompt as written, the padding the end token."""
    model.tokenizer = model.tokenizer.padded_with("!")
    try:
        trace = generate_traced(model, settings(prompt="a (red:1.5) sphere", negative_prompt="blurry")).traces[0]
    finally:
        model.tokenizer = model.tokenizer.padded_with("<|endoftext|>")
    path = tmp_path / "previous.safetensors"
    save_file({key: value.contiguous() for key, value in trace.tensors.items()}, str(path),
              metadata={"format": "diffx-trace/4", "diffx_trace": json.dumps(previous_layout_meta(trace, pad))})
    loaded = load_trace(path)
    assert loaded.settings == trace.settings and loaded.meta == trace.meta
    assert loaded.words == trace.words == ["a", "red", "sphere"] and loaded.negative_tokens.words == ["blurry"]
    kept = slice(0, trace.tokens.num_tokens)
    assert loaded.tokens.ids[kept] == trace.tokens.ids[kept] and loaded.tokens.word_ids == trace.tokens.word_ids
    assert loaded.tokens.prompt == "a (red:1.5) sphere" and loaded.tokens.truncated_tokens == []
    assert loaded.tokens.tokens[-1] == ("!" if pad else "<|endoftext|>")
    torch.testing.assert_close(loaded.word_maps(1), trace.word_maps(1))


def test_a_trace_of_a_newer_diffx_is_refused_in_one_line(tmp_path, default_trace):
    path = rewrite(save_trace(default_trace, tmp_path / "trace.safetensors"), tmp_path, "newer",
                   header={"format": "diffx-trace/5"})
    with pytest.raises(TraceFileError) as caught:
        load_trace(path)
    assert str(caught.value) == (f"{path} was written by a newer diffx (format diffx-trace/5, this diffx reads "
                                 "diffx-trace/4); re-record it with `diffx trace --save-trace` or update diffx")


def test_files_that_are_not_traces(tmp_path):
    with pytest.raises(TraceFileError, match="does not exist"):
        load_trace(tmp_path / "missing.safetensors")
    weights = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(weights))
    with pytest.raises(TraceFileError, match="safetensors file but not a diffx trace"):
        load_trace(weights)
    text = tmp_path / "notes.safetensors"
    text.write_text("not a trace at all")
    with pytest.raises(TraceFileError, match="is not a diffx trace"):
        load_trace(text)


def rewrite(path, tmp_path, name, meta=None, header=None, tensors=None, drop=()):
    """A copy of the trace file at `path` with its metadata, header fields or tensors changed."""
    with safe_open(str(path), framework="pt") as handle:
        old_header = handle.metadata()
        old_tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    old_header = {**old_header, "diffx_trace": json.dumps(meta)} if meta is not None else old_header
    new_tensors = {key: value.contiguous() for key, value in {**old_tensors, **(tensors or {})}.items()
                   if key not in drop}
    new_header = {key: value for key, value in {**old_header, **(header or {})}.items() if value is not None}
    out = tmp_path / f"{name}.safetensors"
    save_file(new_tensors, str(out), metadata=new_header)
    return out


@pytest.fixture(scope="module")
def decoded_trace_file(model, tmp_path_factory):
    trace = generate_traced(model, settings(), decode_every=2,
                            options=TraceOptions(record=RECORDABLE, attention_detail="heads")).traces[0]
    return save_trace(trace, tmp_path_factory.mktemp("traces") / "full.safetensors")


def file_meta(path) -> dict:
    """The metadata in a trace file's header, as written."""
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["diffx_trace"])


def without(meta: dict, *keys: str) -> dict:
    """`meta` with the nested field at path `keys` removed."""
    meta = copy.deepcopy(meta)
    inner = meta
    for key in keys[:-1]:
        inner = inner[key]
    del inner[keys[-1]]
    return meta


def changed(meta: dict, value, *keys: str) -> dict:
    meta = copy.deepcopy(meta)
    inner = meta
    for key in keys[:-1]:
        inner = inner[key]
    inner[keys[-1]] = value
    return meta


def malformed_cases(meta: dict, tensors: dict) -> dict[str, tuple[dict, str]]:
    """Name -> (changes for `rewrite`, what the one-line error says)."""
    steps = tensors["timesteps"].shape[0]
    return {
        "empty metadata {}": ({"meta": {}}, "version None, expected 4"),
        "metadata not JSON": ({"header": {"diffx_trace": "{not json"}}, "metadata is not JSON"),
        "metadata a JSON list": ({"header": {"diffx_trace": "[1, 2]"}}, "not a JSON object"),
        "metadata missing": ({"header": {"diffx_trace": None}}, "metadata is not JSON"),
        "format missing": ({"header": {"format": None}}, "safetensors file but not a diffx trace"),
        "older format": ({"header": {"format": "diffx-trace/2"}}, "written by an older diffx .*diffx-trace/2"),
        "newer format": ({"header": {"format": "diffx-trace/9"}}, "written by a newer diffx .*or update diffx"),
        "format not a number": ({"header": {"format": "diffx-trace/x"}}, "written by another diffx"),
        "old version field": ({"meta": changed(meta, 2, "version")}, "version 2, expected 4"),
        "tokens missing": ({"meta": without(meta, "tokens")}, "field 'tokens' should be a dict, is missing"),
        "settings not a dict": ({"meta": changed(meta, [], "settings")}, "'settings' should be a dict, is a list"),
        "setting missing": ({"meta": without(meta, "settings", "sampler")}, "settings field 'sampler' should be a str, "
                                                                            "is missing"),
        "setting of another type": ({"meta": changed(meta, "3", "settings", "steps")}, "'steps' should be a int, "
                                                                                       "is a str"),
        "bool for an int setting": ({"meta": changed(meta, True, "settings", "seed")}, "'seed' should be a int, "
                                                                                       "is a bool"),
        "negative prompt a number": ({"meta": changed(meta, 3, "negative_prompt")},
                                     "'negative_prompt' should be a str or NoneType, is a int"),
        "negative prompt setting a list": ({"meta": changed(meta, [], "settings", "negative_prompt")},
                                           "settings field 'negative_prompt' should be a str or NoneType, is a list"),
        "int for a bool setting": ({"meta": changed(meta, 1, "settings", "karras")}, "'karras' should be a bool"),
        "unknown setting": ({"meta": changed(meta, 2, "settings", "clip_skip")}, "settings has unknown fields "
                                                                                 "clip_skip"),
        "too many tokens": ({"meta": changed(meta, 78, "tokens", "num_tokens")}, r"num_tokens is 78, outside 1…77"),
        "cut tokens not a list": ({"meta": changed(meta, "x", "tokens", "truncated_tokens")},
                                  "'truncated_tokens' should be a list"),
        "num_tokens disagrees": ({"meta": changed(meta, 3, "tokens", "num_tokens")}, "num_tokens is 3"),
        "word id out of range": ({"meta": changed(meta, [None, 99] + meta["tokens"]["word_ids"][2:], "tokens",
                                                  "word_ids")}, "word id is not one of the"),
        "model identity missing": ({"meta": without(meta, "model", "identity")}, "'identity' should be a dict"),
        "weights hash missing": ({"meta": without(meta, "model", "identity", "weights_hash")}, "'weights_hash'"),
        "timesteps missing": ({"drop": ["timesteps"]}, "timesteps should be a 1-D tensor"),
        "no steps": ({"tensors": {k: v[:0] for k, v in tensors.items() if v.ndim and v.shape[0] == steps
                                  and k != "decoded_steps"}, "drop": ["decoded_x0", "decoded_steps"]}, "no steps"),
        "sigmas shorter than steps": ({"tensors": {"sigmas": tensors["sigmas"][:-1]}}, "tensor sigmas has shape"),
        "latents shorter than steps": ({"tensors": {"latents": tensors["latents"][:-1]}},
                                       rf"tensor latents has shape \({steps - 1}, "),
        "x0 shorter than steps": ({"tensors": {"x0": tensors["x0"][:-1]}}, "tensor x0 has shape"),
        "eps of another latent size": ({"tensors": {"eps": tensors["eps"][..., :-1]}}, "tensor eps has shape"),
        "attention shorter than steps": ({"tensors": {"attention": tensors["attention"][:-1]}}, "tensor attention"),
        "attention token count wrong": ({"tensors": {"attention": tensors["attention"][:, :-1]}},
                                        "tokens maps"),
        "negative attention token count": ({"tensors": {"negative_attention": tensors["negative_attention"][:, 1:]}},
                                           "negative tokens maps"),
        "self attention 4-D": ({"tensors": {"self_attention": tensors["self_attention"][:, None]}},
                               "tensor self_attention has shape"),
        "final latent wrong shape": ({"tensors": {"final_latent": tensors["final_latent"][:2]}}, "final_latent"),
        "image not uint8": ({"tensors": {"image": tensors["image"].float()}}, "image is torch.float32"),
        "image grey": ({"tensors": {"image": tensors["image"][..., 0]}}, "tensor image has shape"),
        "decoded_steps out of range": ({"tensors": {"decoded_steps": tensors["decoded_steps"] + steps}},
                                       "decoded_steps holds a step outside"),
        "decoded_steps negative": ({"tensors": {"decoded_steps": tensors["decoded_steps"] - 1}}, "outside"),
        "decoded_steps fractional": ({"tensors": {"decoded_steps": tensors["decoded_steps"].float()}},
                                     "expected integer step numbers"),
        "decoded_steps count wrong": ({"tensors": {"decoded_steps": tensors["decoded_steps"][:-1]}},
                                      "one step number per decoded picture"),
        "decoded_x0 without steps": ({"drop": ["decoded_steps"]}, "one is missing"),
        "latents not floating": ({"tensors": {"latents": tensors["latents"].long()}}, "expected floating point"),
        "unexpected tensor": ({"tensors": {"weights": torch.zeros(2)}}, "unexpected tensors weights"),
        "older format 3": ({"header": {"format": "diffx-trace/3"}}, "written by an older diffx .*diffx-trace/3"),
        "layer map of another grid": ({"tensors": {"layer_attention.0": tensors["layer_attention.0"][..., :-1]}},
                                      r"tensor layer_attention.0 has shape .* of layer down.0"),
        "layer map missing": ({"drop": ["layer_attention.1"]}, "missing or extra: layer_attention.1"),
        "extra layer map": ({"tensors": {"layer_attention.99": tensors["layer_attention.0"]}},
                            "missing or extra: layer_attention.99"),
        "head maps of one layer missing": ({"drop": ["head_attention.2"]}, "missing or extra: head_attention.2"),
        "head count wrong": ({"tensors": {"head_attention.0": tensors["head_attention.0"][:, 1:]}},
                             "tensor head_attention.0 has shape"),
        "layer map not floating": ({"tensors": {"layer_attention.0": tensors["layer_attention.0"].long()}},
                                   "expected floating point"),
        "layer grid wrong": ({"meta": changed(meta, [16], "attention_layers", 0, "grid")}, r"grid should be \[rows"),
        "layer label missing": ({"meta": without(meta, "attention_layers", 0, "label")}, "'label' should be a str"),
        "layers not a list": ({"meta": changed(meta, {}, "attention_layers")}, "'attention_layers' should be a list"),
        "self maps without grid": ({"meta": without(meta, "self_attention_grid")}, "come together, one is missing"),
        "self maps of another grid": ({"meta": changed(meta, [8, 8], "self_attention_grid")},
                                      "tensor self_attention_maps has shape"),
        "latents with NaN": ({"tensors": {"latents": tensors["latents"] * float("nan")}},
                             "tensor latents holds NaN or infinite values"),
        "eps with inf": ({"tensors": {"eps": tensors["eps"] + float("inf")}}, "tensor eps holds NaN or infinite"),
        "alpha_cumprod negative": ({"tensors": {"alphas_cumprod": -tensors["alphas_cumprod"]}},
                                   r"must lie in \(0, 1\]"),
        "alpha_cumprod NaN": ({"tensors": {"alphas_cumprod": tensors["alphas_cumprod"] * float("nan")}},
                              "tensor alphas_cumprod holds NaN"),
        "alpha_cumprod back and forth": ({"tensors": {"alphas_cumprod": tensors["alphas_cumprod"][[0, 2, 1]]}},
                                         "must move one way"),
        "sigmas negative": ({"tensors": {"sigmas": -tensors["sigmas"]}}, "sigmas must be >= 0"),
        "image of zero size": ({"tensors": {"image": tensors["image"][:0]}}, "tensor image is empty"),
        "fewer steps than the settings": ({"meta": changed(meta, steps + 1, "settings", "steps")},
                                          f"it holds {steps} steps but its settings"),
        "preview as a string": ({"meta": changed(meta, "0", "latent_preview")}, "latent_preview should be an object"),
        "preview with a stray key": ({"meta": changed(meta, {"": 0}, "latent_preview")},
                                     "latent_preview should be an object"),
        "preview factors of another latent": ({"meta": changed(meta, {"factors": [[1, 2, 3]]}, "latent_preview")},
                                              r"latent_preview factors has shape \(1, 3\)"),
        "preview factors not numbers": ({"meta": changed(meta, {"factors": "abc"}, "latent_preview")},
                                        "latent_preview factors should be numbers"),
    }


def test_malformed_trace_files_are_refused_in_one_line(tmp_path, decoded_trace_file):
    """Every malformed case: one TraceFileError line naming the file and the problem, never a traceback."""
    good, meta = load_trace(decoded_trace_file), file_meta(decoded_trace_file)
    assert good.meta["version"] == 4 and set(good.tensors) >= {"decoded_x0", "negative_attention"}
    assert len(malformed_cases(meta, good.tensors)) >= 30
    for number, (name, (changes, message)) in enumerate(malformed_cases(meta, good.tensors).items()):
        path = rewrite(decoded_trace_file, tmp_path, f"case{number}", **changes)
        with pytest.raises(TraceFileError, match=message) as caught:
            load_trace(path)
        text = str(caught.value)
        assert "\n" not in text and str(path) in text, name
        if "not a diffx trace" not in text:
            assert "re-record it with `diffx trace --save-trace`" in text, name


def test_every_load_of_a_good_file_passes_the_checks(tmp_path, default_trace, decoded_trace_file):
    assert load_trace(decoded_trace_file).decoded_steps()
    # Hand-built metadata gets the version field on save; it still needs everything else.
    assert load_trace(save_trace(default_trace, tmp_path / "plain.safetensors")).meta == default_trace.meta


def test_the_package_exports_the_public_api():
    import diffx.trace

    assert {"Trace", "TraceOptions", "Tracer", "TraceCollector", "TracedGeneration", "generate_traced", "save_trace",
            "load_trace"} <= set(diffx.trace.__all__)
    assert diffx.trace.generate_traced is generate_traced and diffx.trace.load_trace is load_trace


def test_model_identity(model):
    identity = model_identity(model)
    assert identity["name"] == "tiny" and len(identity["config_hash"]) == len(identity["weights_hash"]) == 16
    assert model_identity(copy.deepcopy(model).to(dtype=torch.float16)) == identity  # the dtype is left out
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.unet.parameters()).zero_()
    assert model_identity(other)["weights_hash"] != identity["weights_hash"]
    assert model_identity(other)["config_hash"] == identity["config_hash"]


@pytest.mark.parametrize("numel", [1, 2, 7, 8, 1000, 1280 * 2560 * 9])  # the last: SD1.5's largest convolution
def test_spaced_values_include_both_ends_at_any_size(numel):
    """Past 2^24 elements float32 indices round out of range; SD1.5's 29,491,200-weight conv crashed `trace`."""
    tensor = torch.arange(numel, dtype=torch.float64)
    values = spaced_values(tensor)
    assert values[0] == 0 and values[-1] == numel - 1 and len(values) == SAMPLES_PER_TENSOR
    assert (values.diff() >= 0).all()


def test_decoding_with_another_model_is_refused(model, tmp_path):
    trace = generate_traced(model, settings()).traces[0]
    assert trace.meta["model"]["identity"] == model_identity(model)
    torch.manual_seed(5)
    other = build(tiny()).eval()
    loaded = load_trace(save_trace(trace, tmp_path / "trace.safetensors"))
    for recorded in (trace, loaded):
        with pytest.raises(InvalidArgumentError, match=r"the trace was made by model tiny \(config [0-9a-f]+, "
                                                       r"weights [0-9a-f]+\), this is model tiny .*--preview fast"):
            recorded.decoded_x0([0, 1], other)
        assert len(recorded.decoded_x0([0, 1], model)) == 2
    stored = generate_traced(model, settings(), decode_every=1).traces[0]
    assert len(stored.decoded_x0([0, 1, 2], other)) == 3  # nothing to decode: the stored pictures serve


def test_sd15_trace_size_bound(model, default_trace):
    """A 50-step 512 px SD1.5 trace (default record, 10 tokens) stays far below 200 MB.

    Every per-step tensor lives on the latent grid (SD1.5 has cross-attention at full latent resolution,
    as tiny does), so its bytes scale with the latent area; the final image with the pixel area.
    """
    assert default_trace.tokens.num_tokens == 10
    config = sd15()
    scale_latent = (config.image_size // config.vae.downsample_factor) ** 2 / LATENT**2  # 64² / 16²
    scale_image = config.image_size**2 / SIZE**2
    tensors = default_trace.tensors
    scalars = sum(tensors[key][0].element_size() for key in ("timesteps", "sigmas", "alphas_cumprod"))
    per_step = (default_trace.bytes_per_step() - scalars) * scale_latent + scalars
    # x_t, ε̂, ε_c, ε_u, x̂0: 5 × 4 channels, plus 10 token maps, on the 64² grid in fp16.
    assert per_step == (5 * 4 + 10) * 64**2 * 2 + scalars
    final = tensors["final_latent"].numel() * 4 * scale_latent + tensors["image"].numel() * scale_image
    size = 50 * per_step + final
    print(f"50-step 512 px SD1.5 trace: {size / 1e6:.1f} MB ({per_step / 1e3:.0f} kB per step)")
    assert size < 200e6
