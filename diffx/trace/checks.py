"""Checks for trace files and the models that read them: a model's identity (`model_identity`), whether a
trace was made by a given model (`model_mismatch`), and the validation of a trace file's header, metadata
schema and tensor shapes (`check_trace_file`) before anything reads them. Every problem is one line."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, get_args, get_type_hints

import torch
from torch import Tensor

from diffx.errors import TraceFileError
from diffx.models.tokenizer import CONTEXT_LENGTH
from diffx.pipeline.settings import ResolvedSettings

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

TRACE_VERSION = 4
# /2: preview as {"factors", "bias"}; /3: version, model identity; /4: per-layer and per-head attention
# (layer_attention.i, head_attention.i with meta attention_layers), self_attention_maps (meta self_attention_grid)
TRACE_FORMAT = f"diffx-trace/{TRACE_VERSION}"
SAMPLES_PER_TENSOR = 8
RERECORD = "re-record it with `diffx trace --save-trace`"
LATENT_KEYS = ("latents", "eps", "eps_uncond", "eps_cond", "x0")
KNOWN_TENSORS = {"timesteps", "sigmas", "alphas_cumprod", *LATENT_KEYS, "attention", "negative_attention",
                 "self_attention", "self_attention_maps", "final_latent", "image", "decoded_x0", "decoded_steps",
                 "joint_attention", "text_to_image"}
LAYER_TENSOR = re.compile(r"(layer|head)_attention\.(0|[1-9][0-9]*)")  # one per recorded layer


def spaced_values(tensor: torch.Tensor, count: int = SAMPLES_PER_TENSOR) -> torch.Tensor:
    """`count` evenly spaced values of `tensor` (flattened), the first and the last included.

    The indices are integers throughout: float32 indices (`torch.linspace`) round past 2^24 elements, and
    SD1.5's largest convolution (2560 -> 1280, 3x3: 29,491,200 weights) would then index one past its end.
    """
    flat = tensor.detach().reshape(-1)
    index = torch.arange(count, device=flat.device) * (flat.numel() - 1) // (count - 1)
    return flat[index]


def model_identity(model: StableDiffusion) -> dict:
    """{"name", "config_hash", "weights_hash"} of a model, cheap even for a 4 GB SD1.5 checkpoint.

    config_hash: sha256 of the JSON config (sorted keys). weights_hash: a fingerprint, not a full hash —
    sha256 over every tensor's name and shape plus 8 evenly spaced values of it, rounded to float16 so the
    same weights in float32 or float16 (and on any device) give the same hash; the dtype is left out on
    purpose. Weights that differ only outside the sampled values are not told apart.
    """
    config = json.dumps(model.config.to_dict(), sort_keys=True).encode()
    digest = hashlib.sha256()
    samples = []
    for part, module in model.modules().items():
        for name, tensor in module.state_dict().items():
            digest.update(f"{part}.{name}:{tuple(tensor.shape)};".encode())
            if tensor.numel() and not tensor.is_meta:
                samples.append(spaced_values(tensor).to(torch.float16))
    if samples:
        digest.update(torch.cat(samples).cpu().numpy().tobytes())
    return {"name": model.config.name, "config_hash": hashlib.sha256(config).hexdigest()[:16],
            "weights_hash": digest.hexdigest()[:16]}


def describe_identity(identity: dict) -> str:
    return f"{identity.get('name', '?')} (config {identity.get('config_hash', '?')}, " \
           f"weights {identity.get('weights_hash', '?')})"


def model_mismatch(meta: dict, model: StableDiffusion) -> str | None:
    """Why `model` is not the one that made the trace with metadata `meta`; None when it is (or the trace
    does not say which model made it, as hand-built traces may not)."""
    recorded = (meta.get("model") or {}).get("identity")
    if not recorded:
        return None
    identity = model_identity(model)
    if all(recorded.get(key) == identity[key] for key in ("config_hash", "weights_hash")):
        return None
    return (f"the trace was made by model {describe_identity(recorded)}, this is model "
            f"{describe_identity(identity)}; pass the model that made it or use --preview fast")


def _fail(path: Path, problem: str) -> TraceFileError:
    return TraceFileError(f"{path}: {problem}; {RERECORD}")


def check_header(path: Path, header: dict) -> dict:
    """The metadata of a trace file from its safetensors header, checked against the schema."""
    fmt = header.get("format")
    if not isinstance(fmt, str) or not fmt.startswith("diffx-trace/"):
        raise TraceFileError(f"{path} is a safetensors file but not a diffx trace; pass a file from --save-trace")
    number = fmt.removeprefix("diffx-trace/")
    if fmt != TRACE_FORMAT:
        age = "another" if not number.isdigit() else "an older" if int(number) < TRACE_VERSION else "a newer"
        raise TraceFileError(f"{path} was written by {age} diffx (format {fmt}, this diffx reads {TRACE_FORMAT}); "
                             f"{RERECORD}{' or update diffx' if age == 'a newer' else ''}")
    try:
        meta = json.loads(header.get("diffx_trace", ""))
    except json.JSONDecodeError as error:
        raise _fail(path, f"its diffx_trace metadata is not JSON ({error})") from error
    if not isinstance(meta, dict):
        raise _fail(path, "its diffx_trace metadata is not a JSON object")
    if meta.get("version") != TRACE_VERSION:
        raise _fail(path, f"its metadata has version {meta.get('version')!r}, expected {TRACE_VERSION}")
    # negative_prompt: null when none was given (`GenerationSettings`)
    _require(path, meta, {"mode": str, "prompt": str, "negative_prompt": (str, type(None)), "tokens": dict,
                          "negative_tokens": dict, "model": dict, "settings": dict}, "metadata")
    for key in ("tokens", "negative_tokens"):
        _check_tokens(path, meta[key], key)
    _check_settings(path, meta["settings"])
    _require(path, meta["model"], {"name": str, "config": dict, "identity": dict}, "metadata model")
    _require(path, meta["model"]["identity"], {"name": str, "config_hash": str, "weights_hash": str},
             "metadata model identity")
    return meta


def _require(path: Path, data: dict, fields: dict[str, type | tuple[type, ...]], where: str) -> None:
    """Each field present with a value of its type (or one of its types); JSON's true and false are bool, not int."""
    for key, kind in fields.items():
        kinds = kind if isinstance(kind, tuple) else (kind,)
        value = data.get(key)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            got = "missing" if key not in data else f"a {type(value).__name__}"
            raise _fail(path, f"{where} field {key!r} should be a {' or '.join(k.__name__ for k in kinds)}, is {got}")


def _check_tokens(path: Path, tokens: dict, key: str) -> None:
    _require(path, tokens, {"words": list, "tokens": list, "ids": list, "word_ids": list, "num_tokens": int}, key)
    # Fields later diffx versions added to the token dict (see `diffx.trace.record`): checked where present.
    optional = {"pad_token": str, "pad_id": int, "truncated_text": str, "truncated_tokens": list, "prompt": str}
    _require(path, tokens, {name: kind for name, kind in optional.items() if name in tokens}, key)
    count = tokens["num_tokens"]
    if not 1 <= count <= CONTEXT_LENGTH:
        raise _fail(path, f"{key}: num_tokens is {count}, outside 1…{CONTEXT_LENGTH}")
    if any(len(tokens[field]) != count for field in ("tokens", "ids", "word_ids")):
        raise _fail(path, f"{key}: num_tokens is {count} but tokens/ids/word_ids hold "
                          f"{len(tokens['tokens'])}/{len(tokens['ids'])}/{len(tokens['word_ids'])}")
    words = len(tokens["words"])
    if any(w is not None and (not isinstance(w, int) or not 0 <= w < words) for w in tokens["word_ids"]):
        raise _fail(path, f"{key}: a word id is not one of the {words} words")


def _check_settings(path: Path, settings: dict) -> None:
    """The settings hold `ResolvedSettings`' fields, each of its type (`str | None`: either); a float may be written
    as an int."""
    hints = get_type_hints(ResolvedSettings)
    unknown = sorted(set(settings) - set(hints))
    if unknown:
        raise _fail(path, f"metadata settings has unknown fields {', '.join(unknown)}")
    _require(path, settings, {name: (int, float) if kind is float else get_args(kind) or kind
                              for name, kind in hints.items()}, "metadata settings")


def _check_values(path: Path, meta: dict, tensors: dict[str, Tensor], steps: int) -> None:
    """What the shapes cannot say: no empty tensor, no NaN or ±inf (pictures drawn from them would be garbage),
    ᾱ in (0, 1] and monotone over the steps, σ ≥ 0, and as many steps as a text-to-image run of the settings makes."""
    for key, tensor in tensors.items():
        if tensor.numel() == 0:
            raise _fail(path, f"tensor {key} is empty (shape {tuple(tensor.shape)})")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise _fail(path, f"tensor {key} holds NaN or infinite values")
    abar, sigmas = tensors["alphas_cumprod"].double(), tensors["sigmas"].double()
    if not ((abar > 0) & (abar <= 1)).all():
        raise _fail(path, "alphas_cumprod must lie in (0, 1] (ᾱ is a fraction of the signal kept)")
    steps_up = abar[1:] - abar[:-1]
    if not ((steps_up >= 0).all() or (steps_up <= 0).all()):
        raise _fail(path, "alphas_cumprod must move one way over the steps (denoising up, inversion down)")
    if (sigmas < 0).any():
        raise _fail(path, "sigmas must be >= 0")
    settings = meta.get("settings", {})
    if meta.get("mode") == "text2img" and isinstance(settings.get("steps"), int):
        expected = 2 * settings["steps"] - 1 if settings.get("sampler") == "heun" else settings["steps"]
        if steps != expected:
            raise _fail(path, f"it holds {steps} steps but its settings ({settings['steps']} "
                              f"{settings.get('sampler')} steps) make {expected}")


PREVIEW_KEYS = ("factors", "bias", "hidden_weight", "hidden_bias")  # latent_to_rgb_fast's keyword arguments


def _check_preview(path: Path, preview: object, channels: int | None) -> None:
    """meta["latent_preview"]: None, or arrays that `render.latent_to_rgb_fast` can apply to a C-channel latent —
    factors (C, 3) and bias (3,), or with a hidden layer hidden_weight (C, H), hidden_bias (H,), factors (H, 3)."""
    if preview is None:
        return
    if not isinstance(preview, dict) or set(preview) - set(PREVIEW_KEYS):
        raise _fail(path, f"latent_preview should be an object of {', '.join(PREVIEW_KEYS)}")
    arrays = {}
    for key, value in preview.items():
        if value is None:
            continue
        try:
            arrays[key] = torch.as_tensor(value, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise _fail(path, f"latent_preview {key} should be numbers in nested lists") from None
        if not torch.isfinite(arrays[key]).all():
            raise _fail(path, f"latent_preview {key} holds NaN or infinite values")
    shapes = {key: tuple(array.shape) for key, array in arrays.items()}
    hidden = shapes.get("hidden_weight")
    first = hidden[0] if hidden and len(hidden) == 2 else None
    width = hidden[1] if first is not None else channels
    wanted = {"factors": (width, 3), "bias": (3,)}
    if "hidden_weight" in shapes:
        wanted |= {"hidden_weight": (channels, width), "hidden_bias": (width,)}
        if "hidden_bias" not in shapes:
            raise _fail(path, "latent_preview has hidden_weight without hidden_bias")
    for key, shape in shapes.items():
        want = wanted.get(key)
        if want is None or len(shape) != len(want) or any(w not in (None, got) for w, got in zip(want, shape,
                                                                                                 strict=True)):
            raise _fail(path, f"latent_preview {key} has shape {shape}, which does not fit a {channels or 'C'}-channel "
                              "latent")


def check_tensors(path: Path, meta: dict, tensors: dict[str, Tensor]) -> None:
    """Every tensor's presence, dtype and shape against the others and the metadata (see `Trace`)."""
    unknown = sorted(key for key in set(tensors) - KNOWN_TENSORS if not LAYER_TENSOR.fullmatch(key))
    if unknown:
        raise _fail(path, f"unexpected tensors {', '.join(unknown)}")
    for key in ("timesteps", "sigmas", "alphas_cumprod"):
        if key not in tensors or tensors[key].ndim != 1:
            raise _fail(path, f"{key} should be a 1-D tensor (one value per step)")
    steps = tensors["timesteps"].shape[0]
    if steps < 1:
        raise _fail(path, "it holds no steps")
    _check_values(path, meta, tensors, steps)

    def expect(key: str, shape: tuple[int | None, ...], what: str) -> None:
        actual = tuple(tensors[key].shape)
        if len(actual) != len(shape) or any(want not in (None, got) for want, got in zip(shape, actual, strict=True)):
            wanted = "(" + ", ".join("·" if want is None else str(want) for want in shape) + ")"
            raise _fail(path, f"tensor {key} has shape {actual}, expected {wanted}: {what}")

    for key in ("sigmas", "alphas_cumprod"):
        expect(key, (steps,), f"one value per step, as timesteps has {steps}")
    latents = next((tensors[key] for key in LATENT_KEYS if key in tensors and tensors[key].ndim == 4), None)
    _check_preview(path, meta.get("latent_preview"), None if latents is None else latents.shape[1])
    latent = None
    for key in (k for k in LATENT_KEYS if k in tensors):
        expect(key, (steps, None, None, None) if latent is None else (steps, *latent), f"{steps} steps of latents")
        latent = tuple(tensors[key].shape[1:])
    if "final_latent" in tensors:
        expect("final_latent", latent or (None, None, None), "one latent like the per-step ones")
    for key, tokens in (("attention", "tokens"), ("negative_attention", "negative_tokens")):
        if key in tensors:
            expect(key, (steps, meta[tokens]["num_tokens"], None, None),
                   f"{steps} steps × {meta[tokens]['num_tokens']} {tokens.replace('_', ' ')} maps")
    if "self_attention" in tensors:
        expect("self_attention", (steps, None, None), f"{steps} steps of entropy maps")
    _check_layers(path, meta, tensors, expect)
    for key in (k for k in ("image", "decoded_x0") if k in tensors):
        if tensors[key].dtype != torch.uint8:
            raise _fail(path, f"tensor {key} is {tensors[key].dtype}, expected torch.uint8 pixels")
    if "image" in tensors:
        expect("image", (None, None, 3), "an RGB picture")
    if ("decoded_x0" in tensors) != ("decoded_steps" in tensors):
        raise _fail(path, "decoded_x0 and decoded_steps come together, one is missing")
    if "decoded_x0" in tensors:
        decoded = tensors["decoded_steps"]
        expect("decoded_x0", (None, None, None, 3), "RGB pictures")
        expect("decoded_steps", (tensors["decoded_x0"].shape[0],), "one step number per decoded picture")
        if decoded.is_floating_point() or decoded.dtype == torch.bool:
            raise _fail(path, f"decoded_steps is {decoded.dtype}, expected integer step numbers")
        if decoded.numel() and not (0 <= int(decoded.min()) and int(decoded.max()) < steps):
            raise _fail(path, f"decoded_steps holds a step outside 0…{steps - 1}")
    floating = ("timesteps", "sigmas", "alphas_cumprod", *LATENT_KEYS, "attention", "negative_attention",
                "self_attention", "self_attention_maps", "final_latent", "joint_attention", "text_to_image")
    for key in sorted(tensors):
        if (key in floating or LAYER_TENSOR.fullmatch(key)) and not tensors[key].is_floating_point():
            raise _fail(path, f"tensor {key} is {tensors[key].dtype}, expected floating point")


def _check_layers(path: Path, meta: dict, tensors: dict[str, Tensor], expect: Callable) -> None:
    """The per-layer and per-head maps against meta["attention_layers"], the self-attention maps against
    meta["self_attention_grid"]; `expect(key, shape, what)` checks one tensor's shape."""
    layers = meta.get("attention_layers", [])
    if not isinstance(layers, list):
        raise _fail(path, "metadata field 'attention_layers' should be a list")
    steps, count = tensors["timesteps"].shape[0], meta["tokens"]["num_tokens"]
    for index, layer in enumerate(layers):
        where = f"metadata attention_layers[{index}]"
        if not isinstance(layer, dict):
            raise _fail(path, f"{where} should be a dict")
        _require(path, layer, {"name": str, "label": str, "grid": list, "heads": int}, where)
        if len(layer["grid"]) != 2 or not all(isinstance(n, int) and n > 0 for n in layer["grid"]):
            raise _fail(path, f"{where} grid should be [rows, cols], is {layer['grid']}")
    names = {LAYER_TENSOR.fullmatch(key) for key in tensors} - {None}
    heads = sum(match.group(1) == "head" for match in names)
    wanted = {f"layer_attention.{i}" for i in range(len(layers))} | \
        ({f"head_attention.{i}" for i in range(len(layers))} if heads else set())
    found = {match.group(0) for match in names}
    if found != wanted:
        odd = sorted(found ^ wanted)
        raise _fail(path, f"the per-layer attention tensors do not match its {len(layers)} attention_layers "
                          f"(missing or extra: {', '.join(odd[:4])}{', …' if len(odd) > 4 else ''})")
    for index, layer in enumerate(layers):
        rows, cols = layer["grid"]
        expect(f"layer_attention.{index}", (steps, count, rows, cols),
               f"{steps} steps × {count} token maps of layer {layer['label']} ({rows}×{cols})")
        if heads:
            expect(f"head_attention.{index}", (steps, layer["heads"], count, rows, cols),
                   f"{steps} steps × {layer['heads']} heads × {count} token maps of layer {layer['label']}")
    grid = meta.get("self_attention_grid")
    if ("self_attention_maps" in tensors) != (grid is not None):
        raise _fail(path, "self_attention_maps and metadata self_attention_grid come together, one is missing")
    if grid is not None:
        if not (isinstance(grid, list) and len(grid) == 2 and all(isinstance(n, int) and n > 0 for n in grid)):
            raise _fail(path, f"metadata self_attention_grid should be [rows, cols], is {grid}")
        pixels = grid[0] * grid[1]
        expect("self_attention_maps", (steps, pixels, pixels),
               f"{steps} steps of {pixels}×{pixels} self-attention rows on the {grid[0]}×{grid[1]} grid")
    _check_joint(path, meta, tensors, expect)


def _check_joint(path: Path, meta: dict, tensors: dict[str, Tensor], expect: Callable) -> None:
    """A transformer's joint-attention record (SD3): the quadrant shares of meta["joint_layers"] and the words'
    text→image maps on meta["token_grid"]."""
    layers, grid = meta.get("joint_layers"), meta.get("token_grid")
    if not ("joint_attention" in tensors) == ("text_to_image" in tensors) == (layers is not None):
        raise _fail(path, "joint_attention, text_to_image and metadata joint_layers come together, one is missing")
    if layers is None:
        return
    if not (isinstance(layers, list) and layers and all(isinstance(name, str) for name in layers)):
        raise _fail(path, "metadata joint_layers should be a list of layer names")
    if not (isinstance(grid, list) and len(grid) == 2 and all(isinstance(n, int) and n > 0 for n in grid)):
        raise _fail(path, f"metadata token_grid should be [rows, cols], is {grid}")
    steps, count = tensors["timesteps"].shape[0], meta["tokens"]["num_tokens"]
    expect("joint_attention", (steps, len(layers), 4),
           f"{steps} steps × {len(layers)} joint layers × 4 quadrant shares")
    expect("text_to_image", (steps, count, *grid), f"{steps} steps × {count} token maps on the image tokens")


def check_trace_file(path: Path, header: dict, tensors: dict[str, Tensor]) -> dict:
    """The checked metadata of a trace file (header and tensors as safetensors read them)."""
    meta = check_header(path, header)
    check_tensors(path, meta, tensors)
    return meta
