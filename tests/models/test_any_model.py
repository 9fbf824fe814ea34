"""models/any_model.py: a configuration of either family read and written with its family, and built."""

import json

import torch

from diffx.embedded.flow_model import flow_model_config
from diffx.models.any_model import build_model, config_from_dict, config_to_dict, denoiser_of, is_sd3_config
from diffx.models.configs import tiny
from diffx.models.sd3 import SD3Config, StableDiffusion3
from diffx.models.stable_diffusion import StableDiffusion


def test_each_family_round_trips_through_json():
    flow = flow_model_config(tiny(), depth=1, heads=2, head_dim=16)
    for config in (tiny(), flow):
        data = json.loads(json.dumps(config_to_dict(config)))
        assert config_from_dict(data) == config
    assert is_sd3_config(config_to_dict(flow)) and not is_sd3_config(config_to_dict(tiny()))
    assert config_to_dict(tiny()) == tiny().to_dict()  # a U-Net model's config.json is as it was
    assert isinstance(config_from_dict(config_to_dict(flow)), SD3Config)


def test_build_model_builds_either_family_with_or_without_weights():
    flow = flow_model_config(tiny(), depth=1, heads=2, head_dim=16)
    unet_model, flow_model = build_model(tiny()), build_model(flow)
    assert isinstance(unet_model, StableDiffusion) and denoiser_of(unet_model) is unet_model.unet
    assert isinstance(flow_model, StableDiffusion3) and denoiser_of(flow_model) is flow_model.transformer
    for config in (tiny(), flow):
        skeleton = build_model(config, weights=False)
        assert all(p.device == torch.device("meta") for p in denoiser_of(skeleton).parameters())
