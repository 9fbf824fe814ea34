"""Model families: what the pipeline needs of a kind of text-to-image model, and the registry of kinds.

The layers above the pipeline (the tracer, the views, the report) never look inside a model: they see ε̂, x_t, x̂0,
attention maps and decoded pictures. Everything that differs between kinds of model is one `ModelFamily`:

- `conditioning`: prompts → the network's conditioning per classifier-free-guidance branch (`Conditioning`);
- `network`: one batched forward pass, (x, t, context, added) → the network's raw output;
- `parameterization`: what that output is (ε, v or a rectified-flow velocity) and what input and time the network
  expects — `diffx.sampling.parameterizations` turns it into the ε̂ every sampler walks with;
- `size_multiple`: what the image sides must be multiples of;
- `mask_conditioned`: whether the network takes [x_t, mask, masked-image latent] (an inpainting network);
- `token_grid`: a transformer's grid of image tokens (patches) for a latent size, None for a U-Net.

The latent codec is the model's `vae` (encode → posterior, decode) with `config.vae` (scaling factor, channels,
downsampling), shared by every family (`diffx.pipeline.codec`). A model object names its family in `model.family`.
docs/ARCHITECTURE.md lists what a new family must provide; tests/pipeline/test_families.py registers a toy one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from diffx.errors import InvalidArgumentError
from diffx.pipeline.conditioning import prompt_conditioning
from diffx.pipeline.sd3_conditioning import sd3_conditioning
from diffx.sampling.parameterizations import Parameterization

if TYPE_CHECKING:
    from diffx.pipeline.conditioning import Conditioning

# (model, x (B, C, h, w), t, context (B, L, D), added (B, D') or None) -> the network's output (B, C, h, w)
Network = Callable[[Any, Tensor, Tensor, Tensor, Tensor | None], Tensor]


@dataclass(frozen=True)
class ModelFamily:
    """The parts of one kind of text-to-image model that the pipeline calls (see the module docstring)."""

    name: str
    conditioning: Callable[..., Conditioning]  # same signature as `prompt_conditioning`
    network: Network
    parameterization: Callable[[Any], Parameterization]
    size_multiple: Callable[[Any], int]
    mask_conditioned: Callable[[Any], bool]
    # A transformer's image tokens: (rows, cols) of patches for a latent (h, w), the grid its joint attention's
    # image queries lie on (the tracer splits the joint matrix with it); None for a U-Net, whose attention layers
    # each have their own grid.
    token_grid: Callable[[Any, tuple[int, int]], tuple[int, int] | None] = lambda model, latent: None


FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Make `family` available to every model whose `family` attribute names it (a new name, or the same object)."""
    known = FAMILIES.get(family.name)
    if known is not None and known is not family:
        raise InvalidArgumentError(f"a model family named {family.name!r} is registered already; pick another name")
    FAMILIES[family.name] = family
    return family


def family_of(model: Any) -> ModelFamily:
    """The registered family of `model` (its `family` attribute)."""
    name = getattr(model, "family", None)
    if name not in FAMILIES:
        raise InvalidArgumentError(f"no model family {name!r} is registered; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def _unet(model: Any, x: Tensor, t: Tensor, context: Tensor, added: Tensor | None) -> Tensor:
    """The U-Net of SD 1.x/2.x/SDXL: ε̂ or v̂ (B, 4, h, w); `added` is SDXL's vector y."""
    return model.unet(x, t, context, added)


def _unet_size_multiple(model: Any) -> int:
    """VAE factor × the U-Net's total downsampling (2 per level but the last)."""
    return model.config.vae.downsample_factor * 2 ** (len(model.config.unet.channel_mult) - 1)


STABLE_DIFFUSION = register_family(ModelFamily(
    name="stable-diffusion",
    conditioning=prompt_conditioning,
    network=_unet,
    parameterization=lambda model: Parameterization(model.config.scheduler.prediction_type,
                                                    model.config.scheduler.num_train_timesteps),
    size_multiple=_unet_size_multiple,
    mask_conditioned=lambda model: model.config.unet.in_channels == 9,
))


def _mmdit(model: Any, x: Tensor, t: Tensor, context: Tensor, added: Tensor | None) -> Tensor:
    """SD3's MMDiT: the velocity v̂ (B, 16, h, w) at time t = s · 1000; `added` is the pooled text (B, 2048)."""
    return model.transformer(x, t.expand(x.shape[0]), context, added)


SD3 = register_family(ModelFamily(
    name="sd3",
    conditioning=sd3_conditioning,
    network=_mmdit,
    parameterization=lambda model: Parameterization("flow", model.config.scheduler.num_train_timesteps),
    # VAE factor × the MMDiT's patch: a side must be a whole number of patches.
    size_multiple=lambda model: model.config.vae.downsample_factor * model.config.mmdit.patch_size,
    mask_conditioned=lambda model: False,
    token_grid=lambda model, latent: (latent[0] // model.config.mmdit.patch_size,
                                      latent[1] // model.config.mmdit.patch_size),
))
