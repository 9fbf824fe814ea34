"""The attention hook points: observers see, editors replace the probabilities multiplied by V."""

import torch
from torch import Tensor

from diffx.models.attention import AttentionLayer, edit_attention, observe_attention

HEADS, TOKENS, KEYS, WIDTH = 2, 6, 5, 8


class Layer(AttentionLayer):
    kind = "cross"
    layer_name = "probe"


class Editor:
    """Replaces every probability row with `make(probs)`; counts its calls."""

    def __init__(self, make, wanted: bool = True):
        self.make, self.wanted, self.seen = make, wanted, []

    def edits(self, layer: AttentionLayer, num_queries: int) -> bool:
        self.seen.append((layer.layer_name, num_queries))
        return self.wanted

    def edit(self, layer: AttentionLayer, probs: Tensor) -> Tensor:
        return self.make(probs)


class Recorder:
    def __init__(self):
        self.probs = []

    def wants(self, layer):
        return True

    def observe(self, layer, probs):
        self.probs.append(probs)


def inputs(causal: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    keys = TOKENS if causal else KEYS
    return (torch.randn(3, TOKENS, WIDTH, generator=generator), torch.randn(3, keys, WIDTH, generator=generator),
            torch.randn(3, keys, WIDTH, generator=generator))


def test_no_editor_is_exactly_sdpa():
    q, k, v = inputs()
    out = Layer().attend(q, k, v, HEADS)
    qh, kh, vh = (x.reshape(3, -1, HEADS, WIDTH // HEADS).transpose(1, 2) for x in (q, k, v))
    expected = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(3, TOKENS, WIDTH)
    assert torch.equal(out, expected)


def test_identity_editor_matches_sdpa_and_is_asked_with_the_query_count():
    for causal in (False, True):
        q, k, v = inputs(causal)
        plain = Layer().attend(q, k, v, HEADS, causal=causal)
        editor = Editor(lambda probs: probs)
        with edit_attention(editor):
            edited = Layer().attend(q, k, v, HEADS, causal=causal)
        assert editor.seen == [("probe", TOKENS)]
        torch.testing.assert_close(edited, plain, atol=1e-6, rtol=1e-5)


def test_editor_output_is_what_multiplies_v_and_what_observers_see():
    q, k, v = inputs()
    uniform = Editor(lambda probs: torch.full_like(probs, 1 / KEYS))
    with edit_attention(uniform), observe_attention(Recorder()) as recorder:
        out = Layer().attend(q, k, v, HEADS)
    # Uniform attention averages the values: every query gets the mean of V over the keys.
    torch.testing.assert_close(out, v.mean(1, keepdim=True).expand(3, TOKENS, WIDTH))
    assert torch.equal(recorder.probs[0], torch.full((3, HEADS, TOKENS, KEYS), 1 / KEYS))


def test_editor_that_declines_leaves_the_numbers_alone():
    q, k, v = inputs()
    plain = Layer().attend(q, k, v, HEADS)
    declining = Editor(lambda probs: probs * 0, wanted=False)
    with edit_attention(declining):
        assert torch.equal(Layer().attend(q, k, v, HEADS), plain)
    with edit_attention(declining):
        pass
    assert torch.equal(Layer().attend(q, k, v, HEADS), plain)  # the context is gone after the block



def test_bias_and_scale_are_added_and_used_as_the_reference_formula():
    """softmax(scale Q K^T + bias) V, with the bias per batch row or shared, in SDPA and in the probabilities."""
    q, k, v = inputs()
    qh, kh, vh = (x.reshape(3, -1, HEADS, WIDTH // HEADS).transpose(1, 2) for x in (q, k, v))
    for rows in (3, 1):
        bias = torch.randn(rows, HEADS, TOKENS, KEYS, generator=torch.Generator().manual_seed(rows))
        probs = (qh @ kh.transpose(-1, -2) * 1.0 + bias).softmax(-1)
        expected = (probs @ vh).transpose(1, 2).reshape(3, TOKENS, WIDTH)
        with observe_attention(Recorder()) as recorder:
            out = Layer().attend(q, k, v, HEADS, bias=bias, scale=1.0)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(recorder.probs[0], probs, atol=1e-6, rtol=1e-5)
        with edit_attention(Editor(lambda probs: probs)):
            edited = Layer().attend(q, k, v, HEADS, bias=bias, scale=1.0)
        torch.testing.assert_close(edited, expected, atol=1e-5, rtol=1e-5)
