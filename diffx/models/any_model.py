"""A model configuration of either family, and the model it builds: one place that tells them apart.

A diffx model folder's config.json (and a training run's `TrainConfig.model`) is a U-Net model's `ModelConfig`
as it always was, or an SD3-family `SD3Config` marked `"family": "sd3"` (the embedded flow model,
`diffx.embedded.flow_model`). `config_from_dict` reads either, `config_to_dict` writes the mark.
"""

from __future__ import annotations

from torch import nn

from diffx.models.configs import ModelConfig
from diffx.models.sd3 import SD3Config, StableDiffusion3, build_sd3
from diffx.models.stable_diffusion import StableDiffusion, build, build_without_weights
from diffx.models.tokenizer import ClipTokenizer

FAMILY_KEY = "family"
SD3_FAMILY = StableDiffusion3.family  # "sd3"

AnyConfig = ModelConfig | SD3Config
AnyModel = StableDiffusion | StableDiffusion3


def is_sd3_config(data: dict) -> bool:
    """Whether a config dict (config.json, `TrainConfig.model`) is marked as an SD3-family model's."""
    return data.get(FAMILY_KEY) == SD3_FAMILY


def config_from_dict(data: dict) -> AnyConfig:
    """A `ModelConfig`, or an `SD3Config` for a dict marked `"family": "sd3"`."""
    if is_sd3_config(data):
        return SD3Config.from_dict({key: value for key, value in data.items() if key != FAMILY_KEY})
    return ModelConfig.from_dict(data)


def config_to_dict(config: AnyConfig) -> dict:
    """JSON-native, what `config_from_dict` reads back: an `SD3Config` with its family first."""
    if isinstance(config, SD3Config):
        return {FAMILY_KEY: SD3_FAMILY, **config.to_dict()}
    return config.to_dict()


def build_model(config: AnyConfig, tokenizer: ClipTokenizer | None = None, source: str = "random init", *,
                weights: bool = True) -> AnyModel:
    """The model `config` describes, freshly initialised, or (`weights=False`) with shape-only parameters."""
    if isinstance(config, SD3Config):
        return build_sd3(config, tokenizer, source=source, weights=weights)
    return build(config, tokenizer, source) if weights else build_without_weights(config, tokenizer, source)


def denoiser_of(model: AnyModel) -> nn.Module:
    """The network that denoises latents: an SD3-family model's MMDiT, else the U-Net."""
    return model.transformer if isinstance(model, StableDiffusion3) else model.unet
