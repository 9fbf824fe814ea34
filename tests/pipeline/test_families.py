"""A second model family, registered from outside the package: a 2-layer transformer denoiser with a rectified-flow
parameterization (random weights) runs through `generate_traced` and `views.trace_frames` unchanged — the room
SD3's MMDiT will move into. Also the built-in family and the registry's refusals."""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from diffx.errors import InvalidArgumentError
from diffx.models.attention import AttentionLayer, name_attention_layers
from diffx.models.configs import tiny
from diffx.models.stable_diffusion import build
from diffx.models.unet import timestep_embedding
from diffx.pipeline.conditioning import prompt_conditioning
from diffx.pipeline.families import FAMILIES, STABLE_DIFFUSION, ModelFamily, family_of, register_family
from diffx.pipeline.generation import generate
from diffx.pipeline.settings import GenerationSettings
from diffx.sampling.parameterizations import Parameterization
from diffx.trace.record import load_trace, save_trace
from diffx.trace.tracer import generate_traced
from diffx.views.steps import trace_frames

PATCH = 2  # the transformer's patch side, in latent pixels


class Attention(AttentionLayer):
    """Multi-head attention through the one hook point (`AttentionLayer.attend`), so the tracer sees it."""

    def __init__(self, width: int, context_width: int, heads: int, kind: str):
        super().__init__()
        self.kind, self.heads = kind, heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(context_width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        k, v = self.kv(context).chunk(2, dim=-1)  # (B, L, D) each
        return self.out(self.attend(self.q(x), k, v, self.heads))


class Block(nn.Module):
    """Pre-norm self-attention, cross-attention to the prompt, MLP (a DiT block without adaLN)."""

    def __init__(self, width: int, context_width: int, heads: int = 2):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(3))
        self.self_attention = Attention(width, width, heads, "self")
        self.cross_attention = Attention(width, context_width, heads, "cross")
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        h = self.norms[0](x)
        x = x + self.self_attention(h, h)
        x = x + self.cross_attention(self.norms[1](x), context)
        return x + self.mlp(self.norms[2](x))


class ToyTransformer(nn.Module):
    """Latent (B, C, h, w) → patches (B, hw/4, D) → 2 blocks → velocity (B, C, h, w)."""

    def __init__(self, channels: int, context_width: int, width: int = 32):
        super().__init__()
        self.width = width
        self.patch_in = nn.Linear(channels * PATCH * PATCH, width)
        self.blocks = nn.ModuleList(Block(width, context_width) for _ in range(2))
        self.patch_out = nn.Linear(width, channels * PATCH * PATCH)
        name_attention_layers(self)

    def forward(self, x: Tensor, t: Tensor, context: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        # (B, C, h, w) -> (B, h/2 · w/2, C·4)
        patches = x.unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH).permute(0, 2, 3, 1, 4, 5)
        tokens = self.patch_in(patches.reshape(batch, -1, channels * PATCH * PATCH))
        tokens = tokens + timestep_embedding(t.expand(batch), self.width)[:, None]
        for block in self.blocks:
            tokens = block(tokens, context)
        # (B, h/2 · w/2, C·4) -> (B, C, h, w)
        out = self.patch_out(tokens).reshape(batch, height // PATCH, width // PATCH, channels, PATCH, PATCH)
        return out.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, height, width)


@dataclass
class ToyFlowModel:
    """A text-to-image model of another kind: CLIP text encoder and VAE as SD's, a transformer for the U-Net."""

    family: ClassVar[str] = "toy-flow"

    config: object
    tokenizer: object
    text_encoder: nn.Module
    transformer: ToyTransformer
    vae: nn.Module
    source: str = "random init (test)"

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def modules(self) -> dict[str, nn.Module]:
        return {"text_encoder": self.text_encoder, "transformer": self.transformer, "vae": self.vae}


TOY_FLOW = ModelFamily(
    name="toy-flow",
    conditioning=prompt_conditioning,  # the same CLIP conditioning as SD1.x
    network=lambda model, x, t, context, added: model.transformer(x, t, context),
    parameterization=lambda model: Parameterization("flow", model.config.scheduler.num_train_timesteps),
    size_multiple=lambda model: model.config.vae.downsample_factor * PATCH,
    mask_conditioned=lambda model: False,
)


@pytest.fixture(scope="module")
def toy_model():
    register_family(TOY_FLOW)
    torch.manual_seed(0)
    parts = build(tiny())
    transformer = ToyTransformer(tiny().vae.embed_dim, tiny().text_encoder.hidden_size)
    return ToyFlowModel(parts.config, parts.tokenizer, parts.text_encoder.eval(), transformer.eval(), parts.vae.eval())


SETTINGS = GenerationSettings(prompt="a red circle", steps=4, height=32, width=32, guidance=3.0)


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m"])
def test_a_second_family_is_traced_and_drawn(toy_model, sampler, tmp_path):
    traced = generate_traced(toy_model, GenerationSettings(**{**SETTINGS.__dict__, "sampler": sampler}))
    trace = traced.traces[0]
    assert trace.num_steps == 4 and traced.images[0].shape == (32, 32, 3)
    # The transformer's cross-attention reached the tracer through the one hook point: a map per step and token.
    tokens = trace.tokens.num_tokens
    assert trace.tensors["attention"].shape == (4, tokens, 8, 8)  # 16×16 latent, 2×2 patches -> an 8×8 grid
    kept = trace.tensors["attention"].float().sum(1)  # the K kept of 77 positions: a share of each pixel's row
    assert (kept > 0).all() and (kept <= 1.001).all()
    frames = trace_frames(trace, preview="fast")
    assert len(frames) == 4 and all(frame.size[0] > 32 for frame in frames)
    assert trace.meta["prediction_type"] == "flow"
    loaded = load_trace(save_trace(trace, tmp_path / "toy.safetensors"))  # a valid trace file, read back typed
    assert loaded.settings == trace.settings and torch.equal(loaded.tensors["eps"], trace.tensors["eps"])
    # Tracing never changes a number: the same picture as an untraced run.
    plain = generate(toy_model, GenerationSettings(**{**SETTINGS.__dict__, "sampler": sampler}))
    assert np.array_equal(plain.images[0], traced.images[0])


def test_the_flow_parameterization_reaches_the_network(toy_model):
    """The transformer is handed x_s = x_t / (α + σ) at time s·T, not the VP x_t and t."""
    seen = []
    original = toy_model.transformer.forward

    def spy(x, t, context):
        seen.append(float(t))
        return original(x, t, context)

    toy_model.transformer.forward = spy
    try:
        generate(toy_model, GenerationSettings(**{**SETTINGS.__dict__, "sampler": "ddim", "steps": 2}))
    finally:
        del toy_model.transformer.forward
    assert seen and all(0 < t < 1000 for t in seen)
    assert seen[0] > seen[-1]  # time runs from noise (s near 1) towards the picture


def test_size_multiple_comes_from_the_family(toy_model):
    with pytest.raises(InvalidArgumentError, match="multiple of 4"):  # f2 VAE × 2×2 patches
        generate(toy_model, GenerationSettings(**{**SETTINGS.__dict__, "height": 34}))


def test_the_registry():
    assert family_of(build(tiny())) is STABLE_DIFFUSION and FAMILIES["stable-diffusion"] is STABLE_DIFFUSION
    with pytest.raises(InvalidArgumentError, match="registered already"):
        register_family(ModelFamily("stable-diffusion", *[None] * 5))

    class Unknown:
        family = "nobody"

    with pytest.raises(InvalidArgumentError, match="no model family 'nobody'"):
        family_of(Unknown())
