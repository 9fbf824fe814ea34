"""Exporting a training folder (`diffx.embedded.export`): what a model folder inherits from the model its run
started from. (The export itself runs end to end in test_train.py, test_flow_model.py and the script tests.)"""

import torch

from diffx.embedded.export import inherited_tiny_decoder
from diffx.paths import EMBEDDED_MODEL_DIR
from diffx.weights.load import load_model


def test_the_tiny_decoder_comes_along_only_while_the_vae_is_the_sources_bit_for_bit():
    model = load_model(EMBEDDED_MODEL_DIR, dtype=torch.float32)  # as training holds it: fp32 copies of fp16
    decoder = inherited_tiny_decoder(model, str(EMBEDDED_MODEL_DIR))
    assert decoder is not None and decoder.state_dict().keys() == model.tiny_decoder.state_dict().keys()
    assert inherited_tiny_decoder(model, None) is None  # trained from scratch: nothing to inherit
    with torch.no_grad():
        next(model.vae.parameters()).view(-1)[0] += 1e-2  # a VAE trained on: its latents are not the decoder's
    assert inherited_tiny_decoder(model, str(EMBEDDED_MODEL_DIR)) is None
