"""Exporting a training folder (`diffx.embedded.export`): what a model folder inherits from the model its run
started from. (The export itself runs end to end in test_train.py, test_flow_model.py and the script tests.)"""

from dataclasses import replace

import torch

from diffx.embedded.export import PREVIEW_FIELDS, inherit_previews, same_vae_source
from diffx.models.any_model import build_model
from diffx.models.configs import shapes_world_2
from diffx.paths import EMBEDDED_MODEL_DIR
from diffx.weights.load import load_model


def test_the_source_counts_only_while_the_vae_is_its_bit_for_bit_at_the_same_scaling():
    model = load_model(EMBEDDED_MODEL_DIR, dtype=torch.float32)  # as training holds it: fp32 copies of fp16
    assert same_vae_source(model, str(EMBEDDED_MODEL_DIR)) is not None
    assert same_vae_source(model, None) is None  # trained from scratch: nothing to inherit
    rescaled = replace(model.config.vae, scaling_factor=model.config.vae.scaling_factor * 1.01)
    model.config = replace(model.config, vae=rescaled)  # other latents: the previews would draw them wrong
    assert same_vae_source(model, str(EMBEDDED_MODEL_DIR)) is None
    model = load_model(EMBEDDED_MODEL_DIR, dtype=torch.float32)
    with torch.no_grad():
        weight = next(model.vae.parameters())
        weight[(0,) * weight.dim()] += 1e-2  # a VAE trained on: its latents are not the previews'
    assert same_vae_source(model, str(EMBEDDED_MODEL_DIR)) is None


def test_both_previews_come_along_from_the_source():
    source = load_model(EMBEDDED_MODEL_DIR)
    model = build_model(shapes_world_2())  # fresh: no preview fitted, no tiny decoder
    assert model.tiny_decoder is None and model.config.vae.latent_rgb_factors != source.config.vae.latent_rgb_factors
    inherit_previews(model, source)
    for name in PREVIEW_FIELDS:
        assert getattr(model.config.vae, name) == getattr(source.config.vae, name) is not None, name
    assert model.tiny_decoder is source.tiny_decoder
