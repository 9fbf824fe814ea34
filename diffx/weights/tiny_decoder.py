"""A model folder's tiny preview decoder (`tiny_decoder.safetensors`, `diffx.models.tiny_decoder`): read and write.

Validated as every weight file diffx reads: a readable .safetensors whose metadata names a config that fits the
model's VAE, exactly the decoder's keys with its shapes, floating-point and finite; anything else is one
`CheckpointError` naming the file. The file is optional: a folder without one simply has no tiny preview.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from diffx.errors import CheckpointError
from diffx.files import write_atomic
from diffx.models.configs import VAEConfig
from diffx.models.tiny_decoder import TinyDecoder, TinyDecoderConfig, check_tiny_decoder

TINY_DECODER_FILE = "tiny_decoder.safetensors"


def write_tiny_decoder(decoder: TinyDecoder, path: Path, notes: dict[str, str] | None = None,
                       force: bool = False) -> Path:
    """Write the decoder's weights (fp32: it is small) with its config — and `notes`, such as how it was trained
    and its fidelity — as the file's metadata, atomically."""
    from safetensors.torch import save_file

    tensors = {key: value.detach().float().cpu().contiguous() for key, value in decoder.state_dict().items()}
    metadata = {**decoder.config.as_metadata(), **(notes or {})}
    return write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), force=force)


def read_tiny_decoder(path: Path, vae: VAEConfig) -> TinyDecoder:
    """The tiny decoder stored at `path`, for a model whose VAE is `vae`; CheckpointError if it is damaged or
    made for another VAE."""
    try:
        with safe_open(path, framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable .safetensors file ({error}); delete or re-make it "
                              "with diffx train-preview") from None
    try:
        config = TinyDecoderConfig.from_metadata(metadata)
        check_tiny_decoder(config, vae.embed_dim, 2 ** (len(vae.ch_mult) - 1))
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{path}: not a tiny decoder for this model ({error}); re-make it with "
                              "diffx train-preview") from None
    with torch.device("meta"):
        expected = TinyDecoder(config).state_dict()
    if set(tensors) != set(expected):
        odd = sorted(set(tensors) ^ set(expected))
        raise CheckpointError(f"{path}: {len(odd)} tensor names differ from a tiny decoder's (first: {odd[0]}); "
                              "re-make it with diffx train-preview")
    for key, tensor in tensors.items():
        if tensor.shape != expected[key].shape or not tensor.is_floating_point():
            raise CheckpointError(f"{path}: tensor {key} is {str(tensor.dtype).removeprefix('torch.')} "
                                  f"{tuple(tensor.shape)}, expected floating point {tuple(expected[key].shape)}")
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: tensor {key} holds NaN or infinite values; re-make the file")
    decoder = TinyDecoder(config)
    decoder.load_state_dict({key: tensor.float() for key, tensor in tensors.items()})
    return decoder.eval()
