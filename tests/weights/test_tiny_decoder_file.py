"""A model folder's tiny_decoder.safetensors: written, read back, attached by `load_model`, and every damaged or
foreign file refused with one line naming it."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffx.errors import CheckpointError, OutputPathError
from diffx.models.configs import tiny
from diffx.models.stable_diffusion import build
from diffx.models.tiny_decoder import TinyDecoder, TinyDecoderConfig
from diffx.weights.load import load_model, save_model
from diffx.weights.tiny_decoder import TINY_DECODER_FILE, read_tiny_decoder, write_tiny_decoder


@pytest.fixture
def folder_with_decoder(tmp_path):
    torch.manual_seed(0)
    model = build(tiny()).eval()
    model.tiny_decoder = TinyDecoder(TinyDecoderConfig(4, (8,))).eval()
    return save_model(model, tmp_path / "model"), model


def test_load_model_attaches_the_decoder_a_folder_holds_and_none_otherwise(folder_with_decoder, tiny_model_dir):
    folder, model = folder_with_decoder  # tiny()'s VAE is f2: one channel width
    loaded = load_model(folder)
    for key, value in model.tiny_decoder.state_dict().items():
        assert torch.equal(loaded.tiny_decoder.state_dict()[key], value)
    assert load_model(tiny_model_dir).tiny_decoder is None


def _damaged(folder, tensors=None, metadata=None):
    path = folder / TINY_DECODER_FILE
    original = load_file(path)
    save_file(tensors(original) if tensors else original, str(path),
              metadata=metadata or {"latent_channels": "4", "channels": "8"})
    return path


@pytest.mark.parametrize(("damage", "message"), [
    (lambda path: path.write_bytes(b"not a safetensors file"), "not a readable"),
    (lambda path: path.write_bytes(path.read_bytes()[:100]), "not a readable"),
    (lambda path: _damaged(path.parent, metadata={"latent_channels": "4", "channels": "8,8"}), "not a tiny decoder"),
    (lambda path: _damaged(path.parent, metadata={"format": "pt"}), "not a tiny decoder"),
    (lambda path: _damaged(path.parent, lambda t: {k: v for k, v in t.items() if k != "conv_in.bias"}),
     "names differ"),
    (lambda path: _damaged(path.parent, lambda t: {**t, "extra.weight": torch.zeros(1)}), "names differ"),
    (lambda path: _damaged(path.parent, lambda t: {**t, "conv_in.bias": torch.zeros(3)}), "expected floating"),
    (lambda path: _damaged(path.parent, lambda t: {**t, "conv_in.bias": torch.zeros(8, dtype=torch.int32)}),
     "expected floating"),
    (lambda path: _damaged(path.parent, lambda t: {**t, "conv_in.bias": torch.full((8,), float("nan"))}), "NaN"),
])
def test_a_damaged_or_foreign_file_is_one_line_naming_it(folder_with_decoder, damage, message):
    folder, _ = folder_with_decoder
    path = folder / TINY_DECODER_FILE
    damage(path)
    with pytest.raises(CheckpointError, match=message) as error:
        load_model(folder)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_written_notes_travel_in_the_metadata(tmp_path):
    decoder = TinyDecoder(TinyDecoderConfig(4, (8,)))
    path = write_tiny_decoder(decoder, tmp_path / TINY_DECODER_FILE, {"fidelity_psnr_db": "31.00"})
    from safetensors import safe_open

    with safe_open(path, "pt") as file:
        assert file.metadata()["fidelity_psnr_db"] == "31.00"
    assert read_tiny_decoder(path, tiny().vae).config == decoder.config
    with pytest.raises(OutputPathError):
        write_tiny_decoder(decoder, path)
