"""Which models are on disk: a checkpoint file or model folder's layout, and where diffx looks for one.

A model is a *single file* (an original SD1.x `.ckpt` / `.safetensors`), a *diffusers folder*
(`model_index.json`, `unet/`, `vae/`, `text_encoder/`...) or a *diffx folder* (`config.json` +
`model.safetensors`). `find_models` lists, without the network, every model diffx could load — $DIFFX_MODEL,
data/, the Hugging Face hub cache, the embedded model — and `resolve_model_source` picks one.
Reading the weights is `diffx.weights`' job.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from diffx.errors import CheckpointError, ModelNotFoundError
from diffx.paths import DATA_DIR, EMBEDDED_MODEL_DIR, FLOW_MODEL_DIR

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
MODEL_ALIASES = {"embedded": EMBEDDED_MODEL_DIR, "shapes-world-2": EMBEDDED_MODEL_DIR,
                 "shapes-world-flow": FLOW_MODEL_DIR}
SD15_FILE_NAMES = ("v1-5-pruned-emaonly.safetensors", "v1-5-pruned-emaonly.ckpt")
SD_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")
# diffusers/transformers weight file names, preferred first.
COMPONENT_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors", "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",
    "diffusion_pytorch_model.bin", "pytorch_model.bin",
)


@dataclass(frozen=True)
class ModelSource:
    """A model found on disk: where, in which layout ("single-file", "diffusers", "diffx"), and a summary."""

    path: Path
    format: str
    description: str


class SkippedModelWarning(UserWarning):
    """An entry of the Hugging Face cache that is not a model diffx can read was passed over (the message names it)."""


def read_json(path: Path) -> dict:
    """A model folder's JSON file; a missing or broken one is a one-line CheckpointError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; the model folder is incomplete") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON ({error})") from error


# ---------------------------------------------------------------------------------------------------
# Finding a model


def detect_format(path: Path) -> str:
    """"single-file", "diffusers" or "diffx" for a path that exists; CheckpointError for anything else."""
    if path.is_file():
        if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            return "single-file"
        raise CheckpointError(
            f"{path} is not a checkpoint file; expected one of: {', '.join(SINGLE_FILE_SUFFIXES)}"
        )
    if (path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file():
        return "diffusers"
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return "diffx"
    raise CheckpointError(
        f"{path} is not a model folder: expected a diffusers folder (model_index.json, unet/, vae/, "
        "text_encoder/) or a diffx folder (config.json + model.safetensors)"
    )


def _model_source(path: Path) -> ModelSource:
    kind = detect_format(path)
    if kind == "single-file":
        description = f"checkpoint file, {path.stat().st_size / 2**20:.0f} MB"
    elif kind == "diffusers":
        description = "diffusers folder"
    else:
        config = read_json(path / "config.json")
        description = f"diffx folder ({config.get('name', '?') if isinstance(config, dict) else '?'})"
    return ModelSource(path=path, format=kind, description=description)


def _is_model(path: Path) -> bool:
    try:
        detect_format(path)
    except CheckpointError:
        return False
    return True


def hub_cache_dirs() -> list[Path]:
    """Hugging Face hub caches (only read): $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub."""
    candidates = [os.environ.get("HF_HUB_CACHE")]
    if os.environ.get("HF_HOME"):
        candidates.append(str(Path(os.environ["HF_HOME"]) / "hub"))
    candidates.append(str(Path.home() / ".cache" / "huggingface" / "hub"))
    return list(dict.fromkeys(Path(c).expanduser() for c in candidates if c))


def _data_dir_models() -> list[Path]:
    """SD1.5 checkpoints in data/ (the usual file names first), then other checkpoints and model folders."""
    if not DATA_DIR.is_dir():
        return []
    entries = sorted(DATA_DIR.iterdir(), key=lambda p: (p.name not in SD15_FILE_NAMES, p.name))
    shipped = {EMBEDDED_MODEL_DIR.resolve(), FLOW_MODEL_DIR.resolve()}  # listed last: a user's model comes first
    return [
        p for p in entries
        if p.resolve() not in shipped
        and (p.suffix.lower() in (".ckpt", ".safetensors") if p.is_file() else _is_model(p))
    ]


def _hub_cache_models() -> list[Path]:
    """Snapshots of Stable Diffusion pipelines in the hub caches that hold U-Net weights."""
    found = []
    for cache in hub_cache_dirs():
        for index in sorted(cache.glob("models--*/snapshots/*/model_index.json")):
            try:
                entry = json.loads(index.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                entry = None
            if not isinstance(entry, dict):  # one damaged entry must not stop every command that looks for a model
                warnings.warn(SkippedModelWarning(f"skipped {index}: not a readable model_index.json"), stacklevel=2)
                continue
            pipeline = entry.get("_class_name")
            snapshot = index.parent
            has_weights = any((snapshot / "unet" / name).is_file() for name in COMPONENT_WEIGHT_FILES)
            if pipeline in SD_PIPELINES and has_weights:
                found.append(snapshot)
    return found


def find_models() -> list[ModelSource]:
    """Every model diffx can use without the network, in the order it prefers them.

    $DIFFX_MODEL, then checkpoints and model folders in data/, then Stable Diffusion snapshots in the
    Hugging Face hub cache, then the embedded models (the default, shapes-world-2, before shapes-world-flow).
    """
    paths = []
    if os.environ.get("DIFFX_MODEL"):
        paths.append(Path(os.environ["DIFFX_MODEL"]).expanduser())
    paths += _data_dir_models() + _hub_cache_models() + [EMBEDDED_MODEL_DIR, FLOW_MODEL_DIR]
    unique = dict.fromkeys(p for p in paths if p.exists() and _is_model(p))
    return [_model_source(p) for p in unique]


def resolve_model_source(model: str | Path | None = None, where: str = "--model") -> ModelSource:
    """The model to use: `model` (a path or "embedded"), else $DIFFX_MODEL, else `find_models()[0]`. `where`: what
    named `model`, for the message when there is none such (`diffx compare`'s model axis names models too)."""
    if model is None and os.environ.get("DIFFX_MODEL"):
        model, where = os.environ["DIFFX_MODEL"], "DIFFX_MODEL"
    if model is not None:
        path = MODEL_ALIASES.get(str(model), Path(model).expanduser())
        if not path.exists():
            raise ModelNotFoundError(
                f"{where} {model}: no such file or folder; point it at a .ckpt/.safetensors file "
                "(SD 1.x, 2.x, SDXL or SD3), a diffusers folder or a diffx folder, or use 'embedded' or "
                "'shapes-world-flow'"
            )
        return _model_source(path)
    found = find_models()
    if not found:
        caches = ", ".join(str(p) for p in hub_cache_dirs())
        raise ModelNotFoundError(
            f"no model found: diffx looked in {DATA_DIR} (e.g. {SD15_FILE_NAMES[1]}), the Hugging Face cache "
            f"({caches}) and the embedded model folder {EMBEDDED_MODEL_DIR}; "
            "pass --model PATH or set DIFFX_MODEL"
        )
    return found[0]
