"""Read a model's weights and load them into a `StableDiffusion`, without the network (finding one on disk is
`diffx.discovery`'s job).

Three layouts are understood, all converted to the original single-file keys that diffx's modules
mirror (`model.diffusion_model.*`, `first_stage_model.*`, and `cond_stage_model.transformer.*` for SD1.x's
CLIP, `cond_stage_model.model.*` for SD2.x's OpenCLIP, `conditioner.embedders.*` for SDXL's two):

- *single file*: an original SD1.x, SD2.x or SDXL base checkpoint (`v1-5-pruned-emaonly.ckpt`,
  `v2-1_768-ema-pruned.safetensors`, `sd_xl_base_1.0.safetensors`), or one of Stability's SD3 / SD3.5 files
  (`sd3_medium_incl_clips.safetensors`: `diffx.weights.sd3_single`), read as views into a memory map of a
  .safetensors (`diffx.weights.safetensors_map`) or with diffx's code-free unpickler (`diffx.safe_checkpoint`);
- *diffusers folder*: `unet/`, `vae/`, `text_encoder/` (SDXL: and `text_encoder_2/`), `tokenizer/`, `scheduler/`
  with config.json files; names are mapped back by `diffx.diffusers_layout`;
- *diffx folder*: `model.safetensors` (original keys) + `config.json` (`ModelConfig.to_dict()`), the
  format of the embedded model.

Models are built with parameters on the `meta` device and the checkpoint tensors are assigned, not
copied, so loading needs about one model's worth of memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from diffx.errors import CheckpointError, InvalidArgumentError, ModelNotFoundError, check_choice, elide
from diffx.files import atomic_output
from diffx.models.any_model import build_model, config_to_dict
from diffx.models.configs import PREDICTION_TYPES, ModelConfig
from diffx.models.sd3 import SD3Config, StableDiffusion3
from diffx.models.sdxl import SDXL_PREFIX
from diffx.models.stable_diffusion import ALL_PREFIXES, ORIGINAL_PREFIXES, StableDiffusion
from diffx.models.tokenizer import ClipTokenizer
from diffx.weights.architecture import UNUSED_KEYS, recognise
from diffx.weights.config_schema import read_any_model_config
from diffx.weights.diffusers_layout import (
    config_from_diffusers,
    open_clip_from_transformers,
    text_encoder_from_transformers,
    unet_from_diffusers,
    vae_from_diffusers,
)
from diffx.weights.discovery import COMPONENT_WEIGHT_FILES, ModelSource, read_json, resolve_model_source
from diffx.weights.safe_pickle import load_torch_zip
from diffx.weights.safetensors_map import header_shapes, map_safetensors
from diffx.weights.sd3_architecture import is_sd3_layout, recognise_sd3
from diffx.weights.sd3_load import check_flow_prediction, is_sd3_folder, load_sd3_folder, sd3_config_from_diffusers
from diffx.weights.sd3_single import load_sd3_file
from diffx.weights.tiny_decoder import TINY_DECODER_FILE, read_tiny_decoder, write_tiny_decoder

# EMA copies of the U-Net weights in original training checkpoints: `model_ema.diffusion_modelout0weight`.
EMA_PREFIX = "model_ema."
CHECK_PIECE = 1 << 22  # elements of a tensor checked for NaN and infinity at a time


# ---------------------------------------------------------------------------------------------------
# Reading tensors


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a .safetensors, .ckpt, .pt, .pth or .bin file, memory-mapped; no pickled code runs.

    A Lightning checkpoint's weights under a top-level `state_dict` key are returned directly.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"no checkpoint file at {path}; check the path")
    if path.suffix.lower() == ".safetensors":
        tensors = map_safetensors(path)  # views into a memory map of the file: no copy
    else:
        tree = load_torch_zip(path)
        if isinstance(tree, dict) and isinstance(tree.get("state_dict"), dict):
            tree = tree["state_dict"]
        if not isinstance(tree, dict):
            raise CheckpointError(f"{path} holds a pickled {type(tree).__name__}, not a dict of weights")
        tensors = {key: value for key, value in tree.items() if isinstance(value, Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors")
    return tensors


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, without reading the data: a .safetensors header, or a .ckpt's memory-mapped tensors."""
    if path.suffix.lower() == ".safetensors":
        return header_shapes(path)
    return {key: tuple(tensor.shape) for key, tensor in read_state_dict(path).items()}


# ---------------------------------------------------------------------------------------------------
# Loading and saving


def _tokenizer_near(*folders: Path) -> ClipTokenizer:
    """The tokenizer of the first folder holding vocab.json + merges.txt, else CLIP's shipped vocabulary."""
    for folder in folders:
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            return ClipTokenizer.from_folder(folder)
    return ClipTokenizer.default()


WEIGHT_CHOICES = ("ema", "main")


def _select_weights(state_dict: dict[str, Tensor], choice: str) -> tuple[dict[str, Tensor], str]:
    """The U-Net weights asked for, and a phrase saying which were taken.

    A training checkpoint (CompVis' `sd-v1-4-full-ema.ckpt`) holds the trained weights and their
    exponential moving average, the EMA copy under `model_ema.<key without its dots>`; the EMA weights
    sample better and are what CompVis' scripts load (`use_ema`), so "ema" takes them when every U-Net
    tensor has a copy (diffusers' `from_single_file` takes the main ones). "main" takes the others.
    """
    check_choice("weights", choice, WEIGHT_CHOICES)
    weights = {key: tensor for key, tensor in state_dict.items() if not key.startswith(EMA_PREFIX)}
    unet_keys = [key for key in weights if key.startswith(ORIGINAL_PREFIXES["unet"])]
    copies = {key: EMA_PREFIX + key.removeprefix("model.").replace(".", "") for key in unet_keys}
    if not all(flat in state_dict for flat in copies.values()):
        return weights, "the U-Net's one set of weights (the file has no EMA copy)"
    if choice == "main":
        return weights, "the main U-Net weights (--weights main; the file also has EMA ones)"
    return {**weights, **{key: state_dict[flat] for key, flat in copies.items()}}, \
        "the U-Net's EMA weights (the file also has the main ones: --weights main takes those)"


def _modern_text_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Older SD1.x files store CLIP as `cond_stage_model.transformer.embeddings…` (transformers < 4.20, without
    `text_model.`): the same tensors, named as transformers' CLIPTextModel names them now."""
    prefix = ORIGINAL_PREFIXES["text_encoder"]
    old = [key for key in state_dict if key.startswith(prefix) and not key.startswith(prefix + "text_model.")]
    return {**{key: t for key, t in state_dict.items() if key not in old},
            **{prefix + "text_model." + key.removeprefix(prefix): state_dict[key] for key in old}}


def _read_single_file(path: Path, tensors: dict[str, Tensor], config: ModelConfig | None, choice: str,
                      prediction: str | None) -> tuple[ModelConfig, dict, str]:
    """The config (given, or recognised from the file's `tensors` and the prediction type `prediction` when known,
    else `v_prediction_hint`), the weights, and a note on what was recognised."""
    state_dict, taken = _select_weights(_modern_text_keys(tensors), choice)
    # Other keys (the schedule tables `betas`, `alphas_cumprod`..., the text encoder's position ids, OpenCLIP's
    # contrastive head, which SD2 does not use: `UNUSED_KEYS`) are not weights of diffx's modules.
    state_dict = {key: tensor for key, tensor in state_dict.items() if key not in UNUSED_KEYS}
    if config is not None:
        note = f"the {config.name} config as given"
    else:
        try:
            v_prediction = v_prediction_hint(path) if prediction is None else prediction == "v_prediction"
            recognised = recognise({key: tuple(t.shape) for key, t in state_dict.items()}, v_prediction)
        except CheckpointError as error:
            raise CheckpointError(f"{path}: {error}") from None
        config, note = recognised.config, f"recognised {recognised.summary()}"
    return config, {key: t for key, t in state_dict.items() if key.startswith(ALL_PREFIXES)}, f"{note}; {taken}"


def v_prediction_hint(path: Path) -> bool | None:
    """What an LDM config beside a single file says: `v2-1_768-ema-pruned.yaml` next to the .safetensors (as
    the Stability repositories ship them, and A1111 reads them) has `parameterization: "v"` for a v-model.
    None when there is no such file: SD2's 512-base and 768-v have the same tensors, so nothing else tells."""
    yaml = path.with_suffix(".yaml")
    if not yaml.is_file():
        return None
    return re.search(r"^\s*parameterization:\s*[\"']?v[\"']?\s*(#.*)?$", yaml.read_text(errors="replace"),
                     re.M) is not None


def _component_state_dict(folder: Path) -> dict[str, Tensor]:
    """A diffusers component's tensors: one weights file, or the shards its `*.index.json` names (a large
    component, such as SD3's T5, is saved in pieces: `model-00001-of-00002.safetensors`, ...)."""
    for name in COMPONENT_WEIGHT_FILES:
        if (folder / name).is_file():
            return read_state_dict(folder / name)
    for name in COMPONENT_WEIGHT_FILES:
        index = folder / f"{name}.index.json"
        if index.is_file():
            return _sharded_state_dict(index)
    raise CheckpointError(f"{folder} holds no weights; expected one of: {', '.join(COMPONENT_WEIGHT_FILES)}")


def _sharded_state_dict(index: Path) -> dict[str, Tensor]:
    """The tensors of every shard an index file's `weight_map` names; each shard a file beside the index."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} has no weight_map; is the folder's index file damaged?")
    shards = sorted(set(weight_map.values()))
    for shard in shards:  # a name, never a path: an index must not point outside its folder
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise CheckpointError(f"{index} names the shard {shard!r}, not a file beside it; the index is damaged")
    tensors = {}
    for shard in shards:
        tensors.update(read_state_dict(index.parent / shard))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise CheckpointError(f"{index}: its shards lack {elide(', '.join(missing), 60)}; is a shard incomplete?")
    return tensors


def _read_diffusers(folder: Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    config = config_from_diffusers(folder)
    if config.text_encoder_2 is not None:  # SDXL: CLIP-L and bigG under `conditioner.embedders.0/1`
        text_weights = {
            **text_encoder_from_transformers(_component_state_dict(folder / "text_encoder"),
                                             SDXL_PREFIX + "embedders.0.transformer."),
            **open_clip_from_transformers(_component_state_dict(folder / "text_encoder_2"),
                                          SDXL_PREFIX + "embedders.1.model.")}
    else:
        text = open_clip_from_transformers if config.text_encoder.layout == "open_clip" else \
            text_encoder_from_transformers
        text_weights = text(_component_state_dict(folder / "text_encoder"))
    return config, {
        **text_weights,
        **unet_from_diffusers(_component_state_dict(folder / "unet"), config.unet),
        **vae_from_diffusers(_component_state_dict(folder / "vae"), config.vae),
    }


def check_prediction_type(prediction_type: str | None) -> str | None:
    """`prediction_type` in lower case if diffx runs it ("epsilon" or "v_prediction"; None: what the model says)."""
    return None if prediction_type is None else check_choice("prediction type", prediction_type.lower(),
                                                             PREDICTION_TYPES)


def load_model(
    source: str | Path | ModelSource | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    weights: str = "ema",
    config: ModelConfig | None = None,
    prediction_type: str | None = None,
    note: Callable[[str], None] | None = None,
) -> StableDiffusion | StableDiffusion3:
    """Load a model from a checkpoint file, a diffusers folder or a diffx folder (see `resolve_model_source`);
    an SD3 / SD3.5 diffusers folder gives a `StableDiffusion3` (`diffx.weights.sd3_load`).

    A single file's architecture is recognised from its tensors (`diffx.architecture.recognise`) unless
    `config` gives it. `weights`: "ema" takes the U-Net's EMA weights when a single file holds both (as
    CompVis' scripts do), "main" the others. `prediction_type` ("epsilon" or "v_prediction", any case; None:
    what the model says) overrides what the U-Net predicts, for any form, as diffusers'
    `from_single_file(..., prediction_type=...)` sets its scheduler's: the model's scheduler config says it,
    whatever the files or `config` say. For a single file it also stands for an LDM .yaml's `parameterization`
    (`v_prediction_hint`), the one thing beside the tensors that tells SD2.x's 512-base (ε) from 768-v (v), so
    that recognition gives that variant's default size and attention precision too. `note(line)` hears, for a
    single file, one line saying what was recognised and which weights were taken (a folder's config says it
    already).
    """
    # Before anything is read: a typo fails at once, not after a multi-gigabyte file.
    prediction = check_prediction_type(prediction_type)
    found = source if isinstance(source, ModelSource) else resolve_model_source(source)
    path = found.path
    check_choice("weights", weights, WEIGHT_CHOICES)
    if found.format == "diffusers" and is_sd3_folder(path):  # a second family: SD3's MMDiT and three encoders
        return load_sd3_folder(path, _component_state_dict, device=device, dtype=dtype, prediction_type=prediction)
    tiny_decoder = None  # a diffx folder's optional preview decoder
    if found.format == "single-file":
        tensors, tokenizer = read_state_dict(path), _tokenizer_near(path.parent, path.parent / "tokenizer")
        if is_sd3_layout(tensors):  # Stability's SD3 / SD3.5 files: `diffx.weights.sd3_single`
            if config is not None:
                raise InvalidArgumentError(f"{path.name} is an SD3 file, recognised from its tensors; leave the "
                                           f"config ({config.name}, an SD1/SD2/SDXL one) out")
            return load_sd3_file(path, tensors, _component_state_dict, _check_weights, tokenizer=tokenizer,
                                 device=device, dtype=dtype, prediction_type=prediction, note=note)
        config, state_dict, what = _read_single_file(path, tensors, config, weights, prediction)
    elif found.format == "diffusers":
        config, state_dict = _read_diffusers(path)
        tokenizer = _tokenizer_near(path / "tokenizer")
    else:  # a diffx folder of either family (an SD3-family one: the embedded flow model)
        config = read_any_model_config(path / "config.json")
        state_dict = read_state_dict(path / "model.safetensors")
        tokenizer = _tokenizer_near(path)
        tiny = path / TINY_DECODER_FILE
        tiny_decoder = read_tiny_decoder(tiny, config.vae) if tiny.is_file() else None
    if isinstance(config, SD3Config):
        check_flow_prediction(path.name, prediction)
    elif prediction is not None:  # a new config: the caller's `config` stays as it was
        config = replace(config, scheduler=replace(config.scheduler, prediction_type=prediction))
    if not isinstance(config, SD3Config) and config.scheduler.prediction_type not in PREDICTION_TYPES:
        raise CheckpointError(f"{path}: model {config.name!r} predicts {config.scheduler.prediction_type!r}; "
                              f"diffx runs {' and '.join(PREDICTION_TYPES)} models")
    _check_weights(path, state_dict)
    # Cast first (a no-op when the file already has `dtype`), then hand the tensors to the modules.
    state_dict = {key: t.to(dtype) if t.is_floating_point() else t for key, t in state_dict.items()}
    model = build_model(config, tokenizer, str(path), weights=False)
    model.load_original_state_dict(state_dict)
    model.tiny_decoder = tiny_decoder
    del state_dict
    if note is not None and found.format == "single-file":
        given = "" if prediction is None else " (as given)"
        note(f"{path.name}: {what}; predicts {config.scheduler.prediction_type}{given}")
    return model.to(device=device).eval()


def _check_weights(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Refuse a learned weight stored as integers and any weight holding NaN or ±inf, naming the tensor: a damaged
    file otherwise loads silently and draws noise (or fails deep inside a layer)."""
    for key, tensor in state_dict.items():
        if not tensor.is_floating_point():
            if key.endswith((".weight", ".bias")):
                raise CheckpointError(f"{path}: tensor {key} is {str(tensor.dtype).removeprefix('torch.')}; a weight "
                                      "must be floating point (the file is damaged or not a model)")
            continue
        # In pieces: isfinite's temporaries for a whole token table would add a tenth to the loader's peak memory.
        if not all(torch.isfinite(piece).all() for piece in tensor.reshape(-1).split(CHECK_PIECE)):
            raise CheckpointError(f"{path}: tensor {key} holds NaN or infinite values; the file is damaged "
                                  "(re-download or re-export it)")


def read_config(source: ModelSource, config: ModelConfig | None = None) -> ModelConfig | SD3Config:
    """A model's configuration without its weights (what `load_model` builds it from): a diffx folder's
    config.json, a diffusers folder's configs, or a single file's architecture recognised from its tensors' names
    and shapes (a .safetensors header; `config`, given, instead, as `load_model` takes it)."""
    if source.format == "single-file":
        if config is not None:
            return config
        shapes = read_shapes(source.path)
        try:
            if is_sd3_layout(shapes):  # the file's own encoders, else SD3's CLIPs (found beside it) and no T5
                return recognise_sd3(shapes).config
            return recognise(_modern_text_keys(shapes), v_prediction_hint(source.path)).config
        except CheckpointError as error:
            raise CheckpointError(f"{source.path}: {error}") from None
    if source.format == "diffusers":
        return sd3_config_from_diffusers(source.path) if is_sd3_folder(source.path) else \
            config_from_diffusers(source.path)
    return read_any_model_config(source.path / "config.json")


def unet_config(config: ModelConfig | SD3Config, what: str) -> ModelConfig:
    """`config` if it is a U-Net model's (SD 1.x, 2.x, SDXL); for an SD3 model one line saying `what` (e.g.
    "--lora: LoRA files") diffx applies only to those."""
    if isinstance(config, SD3Config):
        raise InvalidArgumentError(f"{what} apply to SD 1.x, 2.x and SDXL models in diffx; {config.name} is an SD3 "
                                   "model, for which they are not supported yet: leave the option out")
    return config


def describe_architecture(source: ModelSource) -> str:
    """What a model found on disk is, in a few words (the `diffx models` column): the family recognised from
    a single file's tensors, or from a folder's config; for a file diffx cannot load, why."""
    try:
        if source.format == "single-file":
            shapes = read_shapes(source.path)
            if is_sd3_layout(shapes):
                return recognise_sd3(shapes).summary()
            return recognise(_modern_text_keys(shapes), v_prediction_hint(source.path)).summary()
        config = read_any_model_config(source.path / "config.json") if source.format == "diffx" else \
            read_config(source)
    except CheckpointError as error:
        return str(error).removeprefix(f"{source.path}: ")
    if isinstance(config, SD3Config):  # an SD3-family diffx folder: the embedded flow model
        return f"SD3 family ({config.name}), rectified flow"
    return f"{config_family(config)} ({config.name}), predicts {config.scheduler.prediction_type}"


def config_family(config: ModelConfig | SD3Config) -> str:
    """The family a configuration's architecture is of: SD3 (an MMDiT), SDXL (two text encoders), SD2.x (OpenCLIP)
    or SD1.x."""
    if isinstance(config, SD3Config):
        return "SD3"
    return "SDXL" if config.text_encoder_2 is not None else \
        "SD2.x" if config.text_encoder.layout == "open_clip" else "SD1.x"


def save_model(model: StableDiffusion | StableDiffusion3, folder: str | Path, dtype: torch.dtype = torch.float16
               ) -> Path:
    """Write `model` as a diffx folder: model.safetensors (original keys, floats as `dtype`) + config.json (an
    SD3-family model's marked `"family": "sd3"`), and tiny_decoder.safetensors when the model has one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        key: (t.to(dtype) if t.is_floating_point() else t).detach().to("cpu").contiguous()
        for key, t in model.original_state_dict().items()
    }
    metadata = {"format": "pt", "diffx_model": model.config.name}
    with atomic_output(folder / "model.safetensors", force=True) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    config_text = json.dumps(config_to_dict(model.config), indent=2) + "\n"
    with atomic_output(folder / "config.json", force=True) as tmp:
        tmp.write_text(config_text, encoding="utf-8")
    if model.tiny_decoder is not None:
        write_tiny_decoder(model.tiny_decoder, folder / TINY_DECODER_FILE, force=True)
    return folder
