"""Stability-layout SD3 single files written by the *inverse* of diffusers' own SD3 converters, for tests.

diffusers reads such a file with `convert_sd3_transformer_checkpoint_to_diffusers` (the MMDiT),
`convert_ldm_vae_checkpoint` (the VAE), `convert_ldm_clip_checkpoint` (each CLIP, its prefix removed) and
`convert_sd3_t5_checkpoint_to_diffusers` (T5). Each is run on an index template of the file's shapes
(`tests.models.inverse_conversion`): where each index lands says where a diffusers tensor's numbers sit in the
file, and the reference pipeline's (tests/pipeline/sd3_models.py) are put there. So the file is what diffusers
would read back as that pipeline, whatever diffx's own renaming does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_sd3_t5_checkpoint_to_diffusers,
    convert_sd3_transformer_checkpoint_to_diffusers,
)
from safetensors.torch import save_file
from torch import Tensor

from diffx.models.sd3 import SD3Config, build_sd3
from tests.models.inverse_conversion import invert_converters

# A component of the pipeline -> its key prefix in the file and diffusers' converter of that part.
CLIP_L, CLIP_G, T5 = "text_encoders.clip_l.transformer.", "text_encoders.clip_g.transformer.", \
    "text_encoders.t5xxl.transformer."
PARTS = {
    "transformer": ("model.diffusion_model.",
                    lambda sd, vae: convert_sd3_transformer_checkpoint_to_diffusers(dict(sd))),
    "vae": ("first_stage_model.", lambda sd, vae: convert_ldm_vae_checkpoint(sd, vae.config)),
    "text_encoder": (CLIP_L, lambda sd, vae: convert_ldm_clip_checkpoint(sd, CLIP_L)),
    "text_encoder_2": (CLIP_G, lambda sd, vae: convert_ldm_clip_checkpoint(sd, CLIP_G)),
    "text_encoder_3": (T5, lambda sd, vae: convert_sd3_t5_checkpoint_to_diffusers(sd)),
}


def round_weights(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Every floating-point weight of `module` rounded through `dtype` (kept in its own dtype): the numbers a file
    in `dtype` holds exactly."""
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(dtype).to(tensor.dtype))


@contextlib.contextmanager
def rounded(module: torch.nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """`module`'s weights rounded through `dtype` for the duration; put back after."""
    saved = {key: tensor.clone() for key, tensor in module.state_dict().items()}
    round_weights(module, dtype)
    try:
        yield
    finally:
        module.load_state_dict(saved)


def single_file_tensors(pipeline, config: SD3Config) -> dict[str, Tensor]:
    """The whole model (MMDiT, VAE, both CLIPs and, when the pipeline has one, T5) in Stability's layout, fp32."""
    with torch.device("meta"):
        shapes = {key: tensor.shape for key, tensor in build_sd3(config, weights=False).original_state_dict().items()}
    tensors = {}
    for name, (prefix, convert) in PARTS.items():
        model = getattr(pipeline, name)
        if model is None:
            continue
        part = {key: shape for key, shape in shapes.items() if key.startswith(prefix)}
        tensors.update(invert_converters(part, {name: model}, {name: lambda sd, c=convert: c(sd, pipeline.vae)}))
    return tensors


def write_single_file(path: Path, tensors: dict[str, Tensor], parts: tuple[str, ...] = ("clips", "t5"),
                      t5_dtype: torch.dtype = torch.float16, dtype: torch.dtype = torch.float16) -> Path:
    """`tensors` saved as a single file holding the MMDiT and VAE, and the CLIPs and T5 if `parts` says so (T5 in
    `t5_dtype`, the rest in `dtype`): Stability's `sd3_medium`, `_incl_clips`, `_incl_clips_t5xxlfp16/fp8`."""
    kept = {}
    for key, tensor in tensors.items():
        if key.startswith((CLIP_L, CLIP_G)) and "clips" not in parts or key.startswith(T5) and "t5" not in parts:
            continue
        kept[key] = tensor.to(t5_dtype if key.startswith(T5) else dtype).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(kept, str(path))
    return path
