"""Every check `diffx train` can make before any work: output folders, the model to continue from, the
device. `check_train_inputs` fails with one `DiffxError` line before the scene pool is rendered or any file
is written, so a bad argument costs milliseconds instead of the minutes of rendering and training before it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from diffx.devices import resolve_device
from diffx.embedded.config import TrainConfig
from diffx.errors import CheckpointError, InvalidArgumentError, ModelNotFoundError, OutputPathError
from diffx.models.configs import ModelConfig

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
        have = ModelConfig.from_dict(json.loads((folder / "config.json").read_text(encoding="utf-8"))).to_dict()
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"--init-from {path}: unreadable config.json ({err}); "
                              "point it at a diffx model folder") from None
    want = {key: value for key, value in model.items() if key in ("text_encoder", "unet", "vae", "image_size")}
    differs = _differing_field({key: have.get(key) for key in want}, want)
    if differs:
        raise CheckpointError(f"--init-from {path}: another architecture ({differs}); continue from a "
                              "shapes-world model such as data/shapes-world-2")


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
