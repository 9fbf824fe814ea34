"""Loading SD3 / SD3.5 from one of Stability's single files, whichever parts it holds.

Stability's repositories ship the same model as several files (the keys are diffx's own: `diffx.models.sd3`):

    sd3_medium.safetensors                          MMDiT + VAE
    sd3_medium_incl_clips.safetensors               + CLIP-L and bigG
    sd3_medium_incl_clips_t5xxlfp16.safetensors     + T5-XXL in fp16
    sd3_medium_incl_clips_t5xxlfp8.safetensors      + T5-XXL in fp8 (e4m3fn), upcast on load
    sd3.5_medium.safetensors, sd3.5_large.safetensors   (the same layout; MMDiT-X's attn2, QK-norm)

The configuration is recognised from the tensors (`diffx.weights.sd3_architecture`). What a file lacks is looked
for beside it, where the same repositories keep the diffusers folders of the model (`text_encoder/`,
`text_encoder_2/`, `text_encoder_3/`, `tokenizer_3/`):

- the CLIPs: a file without them takes `text_encoder/` and `text_encoder_2/` beside it (their config.json and
  weights); without those it cannot run (SD3's pooled vector and half its context are theirs): one
  CheckpointError says which file or folders to give;
- T5: a file without it takes `text_encoder_3/` beside it; else the model runs without T5, as diffusers does
  (256 zero rows stand for its part of the context), and the note says so;
- T5's tokenizer, which no single file holds: `tokenizer_3/tokenizer.json` or `t5xxl/tokenizer.json` beside the
  file; without one the model runs without T5 (weights or not), and the note says so — never silently;
- CLIP's tokenizer: a `tokenizer/` beside the file, else CLIP's vocabulary shipped with diffx (as for SD1 files).

The file's tensors are views into a memory map of it (`diffx.weights.safetensors_map`), handed to the modules
without a copy; fp8 tensors, which no layer computes with, are upcast one at a time to the model's dtype.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from diffx.errors import CheckpointError
from diffx.models.sd3 import StableDiffusion3, build_sd3
from diffx.models.t5_tokenizer import T5Tokenizer
from diffx.models.tokenizer import ClipTokenizer
from diffx.weights.sd3_architecture import T5_PREFIX, UNUSED_SUFFIXES, recognise_sd3
from diffx.weights.sd3_load import (
    check_flow_prediction,
    clip_configs,
    clip_state_dict,
    t5_config,
    t5_keys,
    t5_state_dict,
)

# Where T5's tokenizer.json may sit, relative to the single file's folder (diffusers' layout first).
T5_TOKENIZER_FILES = ("tokenizer_3/tokenizer.json", "t5xxl/tokenizer.json")
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)

ReadComponent = Callable[[Path], dict[str, Tensor]]


def _has_component(folder: Path, name: str) -> bool:
    return (folder / name / "config.json").is_file()


def _t5_tokenizer_beside(folder: Path) -> Path | None:
    return next((folder / name for name in T5_TOKENIZER_FILES if (folder / name).is_file()), None)


def _upcast_fp8(state_dict: dict[str, Tensor], dtype: torch.dtype) -> None:
    """fp8 tensors (no layer computes in fp8) cast in place in the dict to `dtype`, one at a time; the others stay
    views of the file until the model's `to` casts them."""
    for key, tensor in state_dict.items():
        if tensor.dtype in FP8:
            state_dict[key] = tensor.to(dtype)


def load_sd3_file(path: Path, state_dict: dict[str, Tensor], read_component: ReadComponent,
                  check: Callable[[Path, dict[str, Tensor]], None], *, tokenizer: ClipTokenizer,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                  prediction_type: str | None = None, note: Callable[[str], None] | None = None
                  ) -> StableDiffusion3:
    """An SD3 / SD3.5 model from a Stability single file's tensors `state_dict` (see the module's docstring).

    From `diffx.weights.load`: `read_component(folder)` reads a diffusers component's tensors, `check(path,
    tensors)` refuses integer or non-finite weights. `note(line)` hears what was recognised, taken from beside
    the file and assumed."""
    check_flow_prediction(path.name, prediction_type)
    folder = path.parent
    state_dict = {key: tensor for key, tensor in state_dict.items() if not key.endswith(UNUSED_SUFFIXES)}
    recognised = recognise_sd3({key: tuple(tensor.shape) for key, tensor in state_dict.items()}, path.stem)
    config, told = recognised.config, [f"recognised {recognised.summary()}"]
    if recognised.has_t5:  # its token table under both names the module has, whichever the file keeps
        t5 = [key for key in state_dict if key.startswith(T5_PREFIX)]
        state_dict.update(t5_keys({key.removeprefix(T5_PREFIX): state_dict.pop(key) for key in t5}, T5_PREFIX))
    if not recognised.has_clips:
        if not (_has_component(folder, "text_encoder") and _has_component(folder, "text_encoder_2")):
            raise CheckpointError(f"{path} holds the MMDiT and VAE but no CLIP text encoders; put the diffusers "
                                  "text_encoder/ and text_encoder_2/ folders beside it (as Stability's repository "
                                  "has them) or load the ..._incl_clips file")
        first, second = clip_configs(folder)
        config = dataclasses.replace(config, clip_l=first, clip_g=second)
        state_dict.update(clip_state_dict(folder, read_component))
        told.append("CLIP-L and bigG from text_encoder/ and text_encoder_2/ beside it")
    if not recognised.has_t5 and _has_component(folder, "text_encoder_3"):
        config = dataclasses.replace(config, t5=t5_config(folder))
        state_dict.update(t5_state_dict(folder, read_component))
        told.append("T5 from text_encoder_3/ beside it")
    t5_tokenizer_file = _t5_tokenizer_beside(folder) if config.t5 is not None else None
    if config.t5 is None:
        told.append("no T5 weights (in the file or a text_encoder_3/ beside it): runs without T5, 256 zero rows "
                    "in its place, as diffusers does")
    elif t5_tokenizer_file is None:
        config = dataclasses.replace(config, t5=None)
        state_dict = {key: tensor for key, tensor in state_dict.items() if not key.startswith(T5_PREFIX)}
        told.append(f"T5 weights but no T5 tokenizer ({' or '.join(T5_TOKENIZER_FILES)} beside the file): runs "
                    "without T5, 256 zero rows in its place")
    else:
        told.append(f"T5's tokenizer from {t5_tokenizer_file.relative_to(folder)}")
    if any(tensor.dtype in FP8 for tensor in state_dict.values()):
        told.append(f"fp8 weights upcast to {str(dtype).removeprefix('torch.')}")
    _upcast_fp8(state_dict, dtype)
    check(path, state_dict)
    t5_tokenizer = T5Tokenizer.from_file(t5_tokenizer_file) if t5_tokenizer_file is not None else None
    model = build_sd3(config, tokenizer, t5_tokenizer, str(path), weights=False)
    model.load_original_state_dict(state_dict)  # the file's tensors themselves: views of its memory map
    del state_dict
    if note is not None:
        note(f"{path.name}: {'; '.join(told)}")
    return model.to(device=device, dtype=dtype).eval()
