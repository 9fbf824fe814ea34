"""Every check `diffx train` can make before any work: output folders, the model to continue from, the
device, and the files of a training folder it would resume from. `check_train_inputs` fails with one
`DiffxError` line before the scene pool is rendered or any file is written, so a bad argument or a damaged
checkpoint costs milliseconds instead of the minutes of rendering and training before it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from diffx.devices import resolve_device
from diffx.embedded.checkpoints import CONFIG_FILE, LATENTS_FILE, UNET_CHECKPOINT, VAE_CHECKPOINT
from diffx.embedded.config import TrainConfig, TrainState
from diffx.embedded.flow_model import inherited_fields
from diffx.embedded.pool import POOL_FILE
from diffx.errors import CheckpointError, InvalidArgumentError, ModelNotFoundError, OutputPathError, elide
from diffx.models.any_model import AnyConfig, AnyModel, build_model, config_from_dict, config_to_dict, denoiser_of

MODEL_FILES = ("config.json", "model.safetensors", "training.json", "MODEL_CARD.md")  # what an export writes
# Fitted when training ends, not part of the architecture: a model may differ there and still continue.
_FITTED = {"scaling_factor", "latent_rgb_factors", "latent_rgb_bias", "latent_rgb_hidden_weight",
           "latent_rgb_hidden_bias"}


def _check_writable_folder(option: str, folder: Path) -> None:
    """`folder` (made if missing) can be created and written: it is no file, nor under a file."""
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"{option} {folder} is a file, not a folder; give a folder path")
    nearest = folder
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent  # the nearest existing folder: the missing ones are made on write
    if not nearest.is_dir():
        raise OutputPathError(f"{option} {folder}: {nearest} is a file, not a folder; give a folder path")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise OutputPathError(f"{option} {folder}: cannot write to folder {nearest}; choose a writable path")


def check_export_folder(folder: Path, force: bool = False) -> None:
    """`--export` can be written: a writable folder, and without `force` none that already holds a model."""
    _check_writable_folder("--export", folder)
    if not force and folder.is_dir() and any((folder / name).exists() for name in MODEL_FILES):
        raise OutputPathError(f"--export {folder} already holds a model; pass --force to replace it "
                              "or export to a new folder")


def _differing_field(have: dict, want: dict, prefix: str = "") -> str | None:
    """The first architecture field (dotted name) where `have` and `want` differ, fitted values skipped."""
    for key in sorted(set(have) | set(want)):
        if key in _FITTED:
            continue
        a, b = have.get(key), want.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _differing_field(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif (list(a) if isinstance(a, tuple) else a) != (list(b) if isinstance(b, tuple) else b):
            return f"{prefix}{key} is {a!r}, training builds {b!r}"
    return None


def check_init_from(path: str, model: dict) -> None:
    """`--init-from` is a diffx model folder whose architecture is the one training builds (`model`)."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelNotFoundError(f"--init-from {path}: no such folder; point it at a diffx model folder "
                                 "such as data/shapes-world-2")
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise CheckpointError(f"--init-from {path}: not a diffx model folder (config.json and model.safetensors "
                              "expected); point it at one such as data/shapes-world-2")
    try:
        have = config_to_dict(config_from_dict(json.loads((folder / "config.json").read_text(encoding="utf-8"))))
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"--init-from {path}: unreadable config.json ({err}); "
                              "point it at a diffx model folder") from None
    differs = _differing_field(*inherited_fields(have, model))
    if differs:
        raise CheckpointError(f"--init-from {path}: another architecture ({differs}); continue from a "
                              "shapes-world model such as data/shapes-world-2")


# The files of a training folder `train` resumes from, checked before any work --------------------------------

_DELETE = "delete it to re-make it, or use a new --out-dir"
_SAME_RUN = "resume with the settings it was started with, or use a new --out-dir"
_SAME_RUN_FIELDS = ("world", "seed", "pool_size")  # what the cached pool's scenes and pictures were drawn from
_ARCHITECTURE = ("family", "text_encoder", "text_encoder_2", "unet", "clip_l", "clip_g", "t5", "mmdit",
                 "clip_length", "t5_max_length", "vae", "image_size", "scheduler")  # what training builds
_GROUP_NUMBERS = {"lr": 1, "eps": 1, "weight_decay": 1, "betas": 2}  # AdamW's numbers; its other settings are flags


class _Unusable(Exception):
    """A training-folder file's problem, raised where it is found and reported with the file's name and `fix`."""

    def __init__(self, problem: str, fix: str = _DELETE):
        super().__init__(problem)
        self.fix = fix


def _is_real(value: object) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """An int, or a finite float (an int is finite, where math.isfinite would overflow on a huge one)."""
    return _is_real(value) and (isinstance(value, int) or math.isfinite(value))


# What each `TrainState` annotation admits, and how to say so: a field of a new type fails here (KeyError)
# until it has its own check, so no state that `TrainState(**state)` would take wrongly slips through. A loss
# may be NaN: the record of a run that diverged (its weights are checked finite on their own).
_STATE_KINDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "int": (lambda v: _is_real(v) and isinstance(v, int) and v >= 0, "a whole number at least 0"),
    "float": (_is_real, "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "list[float]": (lambda v: isinstance(v, list) and all(map(_is_real, v)), "a list of numbers"),
}


def _load(path: Path) -> object:
    """`path` as `train` loads it (`torch.load` of tensors and plain containers only: nothing in it runs),
    memory-mapped so that a pool of a gigabyte is not read twice."""
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a truncated one lacks its directory
        raise _Unusable("not a PyTorch checkpoint (a torch.save zip archive), or truncated")
    try:
        return torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except pickle.UnpicklingError:  # torch's own message suggests weights_only=False: the one thing not to do
        raise _Unusable("holds more than tensors and plain containers, or is damaged: refused unread, as a pickle "
                        "can run code") from None
    except Exception as err:  # a damaged archive fails anywhere in the zip, pickle and storage readers
        lines = str(err).strip().splitlines()
        detail = f"{type(err).__name__}: {lines[0][:100]}" if lines else type(err).__name__
        raise _Unusable(f"unreadable as tensors and plain containers ({detail})") from None


def _finite(tensor: torch.Tensor) -> bool:
    """No NaN or ±inf. A finite sum proves it (NaN and ±inf carry through a sum): one fast pass, no mask as large
    as the tensor; only a sum that is not finite, which large finite values can also make, is checked value by
    value."""
    return math.isfinite(float(tensor.sum())) or bool(torch.isfinite(tensor).all())


def _check_tensor(value: object, label: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """`value` is a tensor of `shape` and `dtype`, finite if floating."""
    if not isinstance(value, torch.Tensor):
        raise _Unusable(f"{label} is a {type(value).__name__}, not a tensor")
    if value.dtype != dtype:
        raise _Unusable(f"{label} is {value.dtype}, training uses {dtype}")
    if tuple(value.shape) != tuple(shape):
        raise _Unusable(f"{label} has shape {list(value.shape)}, training uses {list(shape)}")
    if value.is_floating_point() and not _finite(value):
        raise _Unusable(f"{label} holds NaN or infinite values")


def _dict_with(saved: object, keys: list[str], label: str = "the file") -> dict:
    """`saved` as a dict holding every one of `keys` (`label` names it in a message)."""
    if not isinstance(saved, dict):
        raise _Unusable(f"{label} is a {type(saved).__name__}, not a dict")
    missing = [key for key in keys if key not in saved]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise _Unusable(f"{label} lacks {elide(str(missing[0]))}{more}")
    return saved


def _check_weights(saved: object, module: torch.nn.Module, part: str) -> None:
    """`saved` is a state dict `module.load_state_dict` takes: its keys exactly, each tensor's shape and dtype."""
    want = module.state_dict()
    found = _dict_with(saved, list(want), f"{part} state dict")
    unexpected = [key for key in found if key not in want]
    if unexpected:
        raise _Unusable(f"{part} state dict has {elide(str(unexpected[0]))}, which the model lacks")
    for key, tensor in want.items():
        _check_tensor(found[key], f"{part} tensor {key}", tuple(tensor.shape), tensor.dtype)


def _check_optimizer(saved: object, params: list[torch.nn.Parameter]) -> None:
    """`saved` is the AdamW state of `params` as one group (how both stages make theirs)."""
    found = _dict_with(saved, ["state", "param_groups"], "optimizer")
    groups, states = found["param_groups"], found["state"]
    if not isinstance(groups, list) or len(groups) != 1 or not isinstance(groups[0], dict) \
            or groups[0].get("params") != list(range(len(params))) or not isinstance(states, dict):
        raise _Unusable(f"optimizer is not the state of one group of this model's {len(params)} parameters")
    for key, value in groups[0].items():
        if key in _GROUP_NUMBERS:
            numbers = value if key == "betas" else (value,)
            valid = isinstance(numbers, list | tuple) and len(numbers) == _GROUP_NUMBERS[key] \
                and all(map(_is_number, numbers))
        else:
            valid = key == "params" or value is None or isinstance(value, bool)
        if not valid:
            raise _Unusable(f"optimizer setting {elide(str(key))} is {repr(value)[:80]}")
    for index, state in states.items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(state, dict):
            raise _Unusable(f"optimizer has a state for {elide(repr(index))}, not one of its parameters")
        for name, value in state.items():
            shape = () if name == "step" else tuple(params[index].shape)
            _check_tensor(value, f"optimizer {elide(str(name))} of parameter {index}", shape, torch.float32)


def _check_generator(saved: object) -> None:
    """`saved` is a state `torch.Generator.set_state` takes (tried on a generator of its own)."""
    try:
        torch.Generator().set_state(saved)
    except (TypeError, ValueError, RuntimeError):
        raise _Unusable("generator is not a torch.Generator state") from None


def _check_state(saved: object) -> None:
    """`saved` makes a `TrainState`: known fields, each of its type."""
    kinds = {field.name: str(field.type) for field in fields(TrainState)}
    for key, value in _dict_with(saved, [], "state").items():
        if key not in kinds:
            raise _Unusable(f"state has an unknown field {elide(str(key))}")
        valid, description = _STATE_KINDS[kinds[key]]
        if not valid(value):
            raise _Unusable(f"state's {key} is not {description}")


def _differing_architecture(have: object, want: AnyConfig) -> str | None:
    """The first field of `_ARCHITECTURE` where a saved model config (`have`) differs from training's."""
    if not isinstance(have, dict):
        raise _Unusable(f"its model is a {type(have).__name__}, not a JSON object")
    wanted = config_to_dict(want)
    return _differing_field({key: have.get(key) for key in _ARCHITECTURE},
                            {key: wanted.get(key) for key in _ARCHITECTURE})


def _check_vae_state(saved: object, model: AnyModel) -> None:
    """`saved` is what `train_vae` resumes from (and `model_from_checkpoints` reads)."""
    found = _dict_with(saved, ["vae", "optimizer", "generator", "state"])
    _check_weights(found["vae"], model.vae, "vae")
    _check_optimizer(found["optimizer"], list(model.vae.parameters()))
    _check_generator(found["generator"])
    _check_state(found["state"])


def _check_unet_state(saved: object, model: AnyModel) -> None:
    """`saved` is what `train_unet` resumes from (and `model_from_checkpoints` reads)."""
    found = _dict_with(saved, ["text_encoder", "unet", "optimizer", "ema", "generator", "model_config", "rng",
                               "state"])
    try:
        have = config_to_dict(config_from_dict(json.loads(found["model_config"])))
    except (TypeError, ValueError, KeyError, AttributeError):
        raise _Unusable("model_config is not a model configuration in JSON") from None
    differs = _differing_architecture(have, model.config)
    if differs:
        raise _Unusable(f"trained for another model ({differs})", _SAME_RUN)
    _check_weights(found["text_encoder"], model.text_encoder, "text_encoder")
    _check_weights(found["unet"], denoiser_of(model), "unet")  # the U-Net or the MMDiT
    params = [*model.text_encoder.parameters(), *denoiser_of(model).parameters()]
    _check_optimizer(found["optimizer"], params)
    if not isinstance(found["ema"], list) or len(found["ema"]) != len(params):
        raise _Unusable(f"ema is not a list of {len(params)} tensors, one per parameter")
    for index, (shadow, p) in enumerate(zip(found["ema"], params, strict=True)):
        _check_tensor(shadow, f"ema tensor {index}", tuple(p.shape), p.dtype)
    _check_generator(found["generator"])
    try:
        np.random.default_rng().bit_generator.state = json.loads(found["rng"])  # tried on a generator of its own
    except (TypeError, ValueError, KeyError, OverflowError):
        raise _Unusable("rng is not a numpy generator state in JSON") from None
    _check_state(found["state"])


def _rows(value: object, label: str) -> int:
    """The first dimension of `value` (a pool of n scenes may hold any n: it grows on a resume that draws more,
    and a run that draws fewer takes its first rows), at least 1; the full checks follow in `_check_tensor`."""
    if not isinstance(value, torch.Tensor) or value.ndim == 0 or len(value) == 0:
        raise _Unusable(f"{label} is not a tensor with one row per pool scene")
    return len(value)


def _check_pool(saved: object, model: AnyConfig) -> None:
    """`saved` is a pool `scene_pool` rendered: (n, 3, H, W) uint8 at the model's image size (any n: `scene_pool`
    renders the scenes a file lacks and takes the first ones of a larger file, as `pool_render` may write)."""
    size = model.image_size
    _check_tensor(saved, "pool tensor", (_rows(saved, "pool tensor"), 3, size, size), torch.uint8)


def _check_latents(saved: object, model: AnyConfig) -> None:
    """`saved` is what `pool_latents` writes: the pool's posterior means and stds, (n, C, h, w) each (any n, as the
    pool)."""
    if not isinstance(saved, tuple | list) or len(saved) != 2:
        raise _Unusable("not a pair of tensors (the pool's posterior means and stds)")
    side = model.image_size // model.vae.downsample_factor
    rows = _rows(saved[0], "means tensor")
    for name, tensor in zip(("means", "stds"), saved, strict=True):
        _check_tensor(tensor, f"{name} tensor", (rows, model.vae.embed_dim, side, side), torch.float32)


def _check_settings(path: Path, config: TrainConfig, model: AnyConfig) -> None:
    """The saved train_config.json is a JSON object from a run this one can continue: the same world, seed and
    pool, the same model (step counts, learning rates and the like may differ)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise _Unusable(f"not readable JSON ({type(err).__name__}: {str(err)[:100]})") from None
    if not isinstance(saved, dict):
        raise _Unusable(f"a JSON {type(saved).__name__}, not an object of settings")
    defaults = {field.name: field.default for field in fields(TrainConfig)}  # a field the file predates: its default
    for name in _SAME_RUN_FIELDS:
        have, want = saved.get(name, defaults[name]), getattr(config, name)
        if have != want:
            raise _Unusable(f"saved by a run with {name} {repr(have)[:80]}, this one has {want!r}",
                            _SAME_RUN)
    if saved.get("model") is not None:
        differs = _differing_architecture(saved["model"], model)
        if differs:
            raise _Unusable(f"saved by a run of another model ({differs})", _SAME_RUN)


def check_training_folder(config: TrainConfig) -> None:
    """Every file `train` would resume from in `config.out_dir` is one it can use, else a `CheckpointError`
    naming the file, what is wrong and the fix: loadable, the right containers, keys, dtypes and shapes for the
    model and pool training makes, finite numbers, and saved by a run of the same world, seed, pool and model.
    Reads only: tensors are memory-mapped, and the model compared with has no weights (`meta`)."""
    out = Path(config.out_dir)
    if not out.is_dir():
        return
    model = config_from_dict(config.model)
    meta = functools.cache(lambda: build_model(model, weights=False))  # ~0.3 s, only when a checkpoint is there
    checks: dict[str, Callable[[Path], None]] = {  # the settings first: another run's explain what follows
        CONFIG_FILE: lambda path: _check_settings(path, config, model),
        POOL_FILE: lambda path: _check_pool(_load(path), model),
        LATENTS_FILE: lambda path: _check_latents(_load(path), model),
        VAE_CHECKPOINT: lambda path: _check_vae_state(_load(path), meta()),
        UNET_CHECKPOINT: lambda path: _check_unet_state(_load(path), meta()),
    }
    for name, check in checks.items():
        if (out / name).exists():
            try:
                check(out / name)
            except _Unusable as problem:
                shown = str(out) if len(str(out)) <= 80 else elide(str(out), 30)  # the problem and fix stay
                raise CheckpointError(f"{shown}/{name}: {problem}; {problem.fix}") from None


def check_train_inputs(config: TrainConfig, export: Path | None = None, force: bool = False) -> None:
    """Raise the first `DiffxError` training (and exporting to `export`, replacing a model there if `force`)
    would meet, before any work and without writing anything."""
    config.validate()
    _check_writable_folder("--out-dir", Path(config.out_dir))
    if export is not None:
        check_export_folder(Path(export), force)
    if config.init_from is not None:
        check_init_from(config.init_from, config.model)
    resolve_device(config.device)
    if config.threads > (os.cpu_count() or 1) * 4:
        raise InvalidArgumentError(f"--threads {config.threads} is more than 4x this machine's "
                                   f"{os.cpu_count()} CPUs; use 0 (torch's default) or at most the CPU count")
    if export is not None and Path(export).resolve() == Path(config.out_dir).resolve():
        raise InvalidArgumentError(f"--export {export} is the training folder --out-dir; export to another folder")
    check_training_folder(config)  # last: it reads the folder's checkpoints, the others take milliseconds
