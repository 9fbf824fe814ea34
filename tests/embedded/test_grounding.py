"""The attention-grounding loss: which tokens are supervised, with which masks, and the loss itself."""

import numpy as np
import pytest
import torch

from diffx.embedded import world
from diffx.embedded.flow_model import CONTEXT_TOKENS, flow_model_config
from diffx.embedded.grounding import CrossAttentionCollector, grounding_loss, token_targets
from diffx.embedded.shapes import Scene, ShapeObject, object_masks
from diffx.embedded.worlds import WORLDS
from diffx.models.any_model import build_model
from diffx.models.attention import observe_attention
from diffx.models.configs import shapes_world, tiny
from diffx.models.stable_diffusion import build
from diffx.models.tokenizer import ClipTokenizer

RED_CIRCLE = ShapeObject("circle", "red", "small", "left", (0.25, 0.5), 0.1)
BLUE_SQUARE = ShapeObject("square", "blue", "small", "right", (0.75, 0.5), 0.1)


def _targets(scene: Scene, prompt: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    encoding = ClipTokenizer.default().encode(prompt)
    token_masks, supervised = token_targets(WORLDS["shapes"], [scene], [object_masks(scene, 16)], [encoding], 16)
    return token_masks[0], supervised[0], encoding.tokens


def test_colour_and_shape_tokens_of_each_named_object_get_its_mask():
    scene = Scene([RED_CIRCLE, BLUE_SQUARE], "white")
    token_masks, supervised, tokens = _targets(scene, "a blue square right of a red circle on a white background")
    assert [tokens[i] for i in supervised.nonzero().flatten()] == ["blue</w>", "square</w>", "red</w>", "circle</w>"]
    masks = object_masks(scene, 16)
    assert torch.equal(token_masks[tokens.index("square</w>")], torch.from_numpy(masks[1]))
    assert torch.equal(token_masks[tokens.index("red</w>")], torch.from_numpy(masks[0]))
    assert token_masks[~supervised].sum() == 0  # "white", "background", padding: nothing to ground


@pytest.mark.parametrize("prompt", ["", "a circle"])
def test_captions_naming_no_coloured_object_supervise_nothing(prompt):
    assert not _targets(Scene([RED_CIRCLE], "white"), prompt)[1].any()


def test_two_objects_of_the_same_colour_and_shape_are_ambiguous_and_skipped():
    twin = ShapeObject("circle", "red", "small", "right", (0.75, 0.5), 0.1)
    assert not _targets(Scene([RED_CIRCLE, twin], "white"), "a red circle left of a red circle")[1].any()


V2_SCENE = world.Scene((world.WorldObject("star", "lime", "large", "left", (0.3, 0.5), 0.18, fill="striped"),
                         world.WorldObject("ring", "cyan", "small", "right", (0.75, 0.5), 0.1)),
                        world.Background("checkered", ("pale pink",)))


def _v2_supervised(prompt: str) -> list[str]:
    encoding = ClipTokenizer.default().encode(prompt)
    token_masks, supervised = token_targets(WORLDS["shapes2"], [V2_SCENE], [world.object_masks(V2_SCENE, 16)],
                                            [encoding], 16)
    masks = world.object_masks(V2_SCENE, 16)
    for token in supervised[0].nonzero().flatten():  # each supervised token holds its own object's mask
        obj = 0 if encoding.tokens[token] in ("lime</w>", "star</w>") else 1
        assert torch.equal(token_masks[0, token], torch.from_numpy(masks[obj]))
    return [encoding.tokens[i] for i in supervised[0].nonzero().flatten()]


def test_v2_captions_supervise_the_objects_named_by_colour_and_shape_and_nothing_else():
    exact = "a large lime striped star left of a small cyan solid ring on a pale pink checkered background"
    cyan = ["cy", "an</w>"]  # two BPE tokens, both supervised
    assert _v2_supervised(exact) == ["lime</w>", "star</w>", *cyan, "ring</w>"]
    assert _v2_supervised("a lime star and a purple ring, nice picture") == ["lime</w>", "star</w>"]  # wrong colour
    assert _v2_supervised("a star next to a cyan ring") == [*cyan, "ring</w>"]  # colour omitted
    assert _v2_supervised("a pale pink checkered background") == []


def test_loss_is_zero_inside_the_mask_and_one_minus_coverage_squared_when_uniform():
    token_masks = torch.zeros(1, 3, 4, 4)
    token_masks[0, 1, :2, :2] = 1.0  # token 1: the top-left quarter
    supervised = torch.tensor([[False, True, False]])
    inside = torch.zeros(1, 16, 3)
    inside[0, [0, 1, 4, 5], 1] = 0.25  # all of token 1's attention in its quarter (row-major 4x4 grid)
    assert grounding_loss([inside], token_masks, supervised) == 0
    uniform = torch.full((1, 16, 3), 1 / 3)
    assert grounding_loss([uniform], token_masks, supervised).item() == pytest.approx(0.75 ** 2)
    # A 2x2 layer sees the mask pooled: the quarter is exactly its top-left cell.
    coarse = torch.zeros(1, 4, 3)
    coarse[0, 0, 1] = 1.0
    assert grounding_loss([coarse], token_masks, supervised) == 0
    assert grounding_loss([uniform], token_masks, torch.zeros(1, 3, dtype=torch.bool)) == 0


def test_collector_keeps_the_unets_cross_attention_with_gradients():
    torch.manual_seed(0)
    model = build(tiny())
    x = torch.randn(1, 4, 8, 8)
    context = model.text_encoder(model.tokenizer(["a red circle"]))
    collector = CrossAttentionCollector()
    with observe_attention(collector):
        model.unet(x, torch.tensor([500]), context)
    cross_layers = [m for m in model.unet.modules() if getattr(m, "kind", None) == "cross"]
    assert len(collector.probs) == len(cross_layers) > 0
    assert all(p.shape[0] == 1 and p.shape[-1] == 77 and p.requires_grad for p in collector.probs)
    token_masks = torch.zeros(1, 77, 8, 8)
    token_masks[0, 2, :4, :4] = 1.0
    supervised = torch.zeros(1, 77, dtype=torch.bool)
    supervised[0, 2] = True
    loss = grounding_loss(collector.probs, token_masks, supervised)
    loss.backward()
    grads = [p.grad for name, p in model.unet.named_parameters() if "attn2.to_k" in name or "attn2.to_q" in name]
    assert 0 < loss.item() < 1 and grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert np.isfinite(loss.item())


def test_a_rightly_named_grid_cell_grounds_its_position_words_and_a_wrong_one_does_not():
    one = world.Scene((world.WorldObject("star", "lime", "large", "top left", (0.25, 0.25), 0.18),),
                      world.Background("plain", ("white",)))
    masks = world.object_masks(one, 16)

    def supervised(prompt: str) -> list[str]:
        encoding = ClipTokenizer.default().encode(prompt)
        token_masks, chosen = token_targets(WORLDS["shapes2"], [one], [masks], [encoding], 16)
        assert all(torch.equal(token_masks[0, i], torch.from_numpy(masks[0])) for i in chosen[0].nonzero().flatten())
        return [encoding.tokens[i] for i in chosen[0].nonzero().flatten()]

    assert supervised("a lime star in the top left on a white background") == [
        "lime</w>", "star</w>", "top</w>", "left</w>"]
    assert supervised("a lime star in the bottom right") == ["lime</w>", "star</w>"]  # a wrong cell teaches nothing
    assert supervised("a lime star") == ["lime</w>", "star</w>"]


def test_collector_keeps_an_mmdits_image_to_text_quadrant_with_gradients():
    """The flow model has joint attention: the collector keeps its image→text quadrant (what the tracer records),
    and the loss reaches the attention's projections."""
    torch.manual_seed(0)
    model = build_model(flow_model_config(shapes_world(), depth=2, heads=2, head_dim=16))
    ids = torch.tensor([model.tokenizer.encode("a red circle").ids])
    context, pooled = model.text_encoder(ids)  # (1, 40, 64), (1, 64)
    x = torch.randn(1, 4, 8, 8)  # (B, 4, 8, 8) latents -> 16 image tokens of 2x2 patches
    collector = CrossAttentionCollector(text_tokens=context.shape[1])
    with observe_attention(collector):
        model.transformer(x, torch.tensor([500.0]), context, pooled)
    joint_layers = [m for m in model.transformer.modules() if getattr(m, "kind", None) == "joint"]
    assert len(collector.probs) == len(joint_layers) > 0
    assert all(p.shape == (1, 16, CONTEXT_TOKENS) and p.requires_grad for p in collector.probs)
    full = []

    class Everything:  # the whole joint attention of the first block, for the quadrant it should have kept
        def wants(self, layer):
            return layer.kind == "joint"

        def observe(self, layer, probs):
            full.append(probs.detach())

    with torch.no_grad(), observe_attention(Everything()):
        model.transformer(x, torch.tensor([500.0]), context, pooled)
    torch.testing.assert_close(collector.probs[0].detach(), full[0][:, :, :16, 16:].mean(1))
    token_masks = torch.zeros(1, 77, 4, 4)  # the tokenizer's ids may run past the context: cut to its 40
    token_masks[0, 2, :2, :2] = 1.0
    supervised = torch.zeros(1, 77, dtype=torch.bool)
    supervised[0, 2] = True
    loss = grounding_loss(collector.probs, token_masks, supervised)
    loss.backward()
    grads = [p.grad for name, p in model.transformer.named_parameters() if name.endswith(("attn.qkv.weight",))]
    assert 0 < loss.item() < 1 and grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert CrossAttentionCollector().wants(joint_layers[0]) is False  # without the text length: U-Net only
