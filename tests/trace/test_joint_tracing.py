"""Tracing SD3's joint attention (diffx.trace.tracer on a tiny SD3, tests/models/sd3_tiny.py): the quadrant shares,
the words both ways, the image→text quadrant as the word maps, and a trace file that reads back."""

from __future__ import annotations

import pytest
import torch

from diffx.models.attention import observe_attention
from diffx.pipeline.generation import generate
from diffx.pipeline.settings import GenerationSettings
from diffx.trace.record import load_trace, save_trace
from diffx.trace.tracer import TraceOptions, generate_traced
from tests.models.sd3_tiny import tiny_sd3

SETTINGS = GenerationSettings(prompt="a red circle", seed=0, steps=3, guidance=5.0)
RECORD = ("latents", "eps", "x0", "attention", "negative_attention", "self_attention", "joint_attention")


@pytest.fixture(scope="module")
def traced():
    model = tiny_sd3()
    return model, generate_traced(model, SETTINGS, options=TraceOptions(record=RECORD))


def test_tracing_changes_no_pixel(traced) -> None:
    model, generation = traced
    assert (generation.images[0] == generate(model, SETTINGS).images[0]).all()


def test_quadrant_shares_split_each_query_kind(traced) -> None:
    trace = traced[1].traces[0]
    shares = trace.tensors["joint_attention"].float()  # (steps, blocks, 4)
    assert shares.shape == (3, 2, 4) and trace.meta["joint_layers"] == ["joint_blocks.0.attn", "joint_blocks.1.attn"]
    # an image query's attention is all on image or text keys, a text query's too
    torch.testing.assert_close(shares[..., 0] + shares[..., 1], torch.ones(3, 2), atol=2e-3, rtol=0)
    torch.testing.assert_close(shares[..., 2] + shares[..., 3], torch.ones(3, 2), atol=2e-3, rtol=0)
    assert trace.meta["token_grid"] == [8, 8]
    assert trace.tensors["text_to_image"].shape == (3, trace.tokens.num_tokens, 8, 8)
    assert trace.tensors["self_attention"].shape == (3, 8, 8)
    assert trace.tensors["negative_attention"].shape[0] == 3


def test_word_maps_are_the_image_to_text_quadrant() -> None:
    """The traced `attention` of one step is the mean over blocks and heads of the conditional image→text quadrant
    (the CLIP tokens' columns), and `text_to_image` of its text→image quadrant, as a plain observer sees them."""
    model = tiny_sd3()
    seen = []

    class Everything:
        def wants(self, layer):
            return layer.kind == "joint"

        def observe(self, layer, probs):
            seen.append(probs[-1].mean(0))  # (N, N), the conditional row

    one = GenerationSettings(prompt="a red circle", seed=0, steps=1, guidance=5.0)
    with observe_attention(Everything()):
        generate(model, one)
    trace = generate_traced(model, one).traces[0]
    count, n_image = trace.tokens.num_tokens, 64
    image_to_text = torch.stack([p[:n_image, n_image:n_image + count] for p in seen]).mean(0)  # (64, K)
    torch.testing.assert_close(trace.tensors["attention"][0].float(), image_to_text.T.reshape(count, 8, 8),
                               atol=1e-3, rtol=1e-2)
    text_to_image = torch.stack([p[n_image:n_image + count, :n_image] for p in seen]).mean(0)
    torch.testing.assert_close(trace.tensors["text_to_image"][0].float(), text_to_image.reshape(count, 8, 8),
                               atol=1e-3, rtol=1e-2)


def test_a_joint_trace_reads_back(traced, tmp_path) -> None:
    trace = traced[1].traces[0]
    loaded = load_trace(save_trace(trace, tmp_path / "sd3.safetensors"))
    assert loaded.meta["joint_layers"] == trace.meta["joint_layers"]
    assert torch.equal(loaded.tensors["joint_attention"], trace.tensors["joint_attention"])
    assert loaded.settings.schedule == "flow" and loaded.meta["prediction_type"] == "flow"
