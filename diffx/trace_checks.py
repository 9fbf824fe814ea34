"""Checks for trace files and the models that read them: a model's identity (`model_identity`), whether a
trace was made by a given model (`model_mismatch`), and the validation of a trace file's header, metadata
schema and tensor shapes (`check_trace_file`) before anything reads them. Every problem is one line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from diffx.errors import TraceFileError

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

TRACE_VERSION = 3
TRACE_FORMAT = f"diffx-trace/{TRACE_VERSION}"  # /2: preview as {"factors", "bias"}; /3: version, model identity
SAMPLES_PER_TENSOR = 8
RERECORD = "re-record it with `diffx trace --save-trace`"
LATENT_KEYS = ("latents", "eps", "eps_uncond", "eps_cond", "x0")
KNOWN_TENSORS = {"timesteps", "sigmas", "alphas_cumprod", *LATENT_KEYS, "attention", "negative_attention",
                 "self_attention", "final_latent", "image", "decoded_x0", "decoded_steps"}


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
                flat = tensor.detach().reshape(-1)
                index = torch.linspace(0, flat.numel() - 1, SAMPLES_PER_TENSOR, device=flat.device).long()
                samples.append(flat[index].to(torch.float16))
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
        older = number.isdigit() and int(number) < TRACE_VERSION
        raise TraceFileError(f"{path} was written by {'an older' if older else 'another'} diffx (format {fmt}, this "
                             f"diffx reads {TRACE_FORMAT}); {RERECORD}")
    try:
        meta = json.loads(header.get("diffx_trace", ""))
    except json.JSONDecodeError as error:
        raise _fail(path, f"its diffx_trace metadata is not JSON ({error})") from error
    if not isinstance(meta, dict):
        raise _fail(path, "its diffx_trace metadata is not a JSON object")
    if meta.get("version") != TRACE_VERSION:
        raise _fail(path, f"its metadata has version {meta.get('version')!r}, expected {TRACE_VERSION}")
    _require(path, meta, {"mode": str, "prompt": str, "negative_prompt": str, "tokens": dict,
                          "negative_tokens": dict, "model": dict, "settings": dict}, "metadata")
    for key in ("tokens", "negative_tokens"):
        _check_tokens(path, meta[key], key)
    _require(path, meta["model"], {"name": str, "config": dict, "identity": dict}, "metadata model")
    _require(path, meta["model"]["identity"], {"name": str, "config_hash": str, "weights_hash": str},
             "metadata model identity")
    return meta


def _require(path: Path, data: dict, fields: dict[str, type], where: str) -> None:
    for key, kind in fields.items():
        if not isinstance(data.get(key), kind):
            got = "missing" if key not in data else f"a {type(data[key]).__name__}"
            raise _fail(path, f"{where} field {key!r} should be a {kind.__name__}, is {got}")


def _check_tokens(path: Path, tokens: dict, key: str) -> None:
    _require(path, tokens, {"words": list, "tokens": list, "ids": list, "word_ids": list, "num_tokens": int}, key)
    count = tokens["num_tokens"]
    if count < 1 or any(len(tokens[field]) != count for field in ("tokens", "ids", "word_ids")):
        raise _fail(path, f"{key}: num_tokens is {count} but tokens/ids/word_ids hold "
                          f"{len(tokens['tokens'])}/{len(tokens['ids'])}/{len(tokens['word_ids'])}")
    words = len(tokens["words"])
    if any(w is not None and (not isinstance(w, int) or not 0 <= w < words) for w in tokens["word_ids"]):
        raise _fail(path, f"{key}: a word id is not one of the {words} words")


def check_tensors(path: Path, meta: dict, tensors: dict[str, Tensor]) -> None:
    """Every tensor's presence, dtype and shape against the others and the metadata (see `Trace`)."""
    unknown = sorted(set(tensors) - KNOWN_TENSORS)
    if unknown:
        raise _fail(path, f"unexpected tensors {', '.join(unknown)}")
    for key in ("timesteps", "sigmas", "alphas_cumprod"):
        if key not in tensors or tensors[key].ndim != 1:
            raise _fail(path, f"{key} should be a 1-D tensor (one value per step)")
    steps = tensors["timesteps"].shape[0]
    if steps < 1:
        raise _fail(path, "it holds no steps")

    def expect(key: str, shape: tuple[int | None, ...], what: str) -> None:
        actual = tuple(tensors[key].shape)
        if len(actual) != len(shape) or any(want not in (None, got) for want, got in zip(shape, actual, strict=True)):
            wanted = "(" + ", ".join("·" if want is None else str(want) for want in shape) + ")"
            raise _fail(path, f"tensor {key} has shape {actual}, expected {wanted}: {what}")

    for key in ("sigmas", "alphas_cumprod"):
        expect(key, (steps,), f"one value per step, as timesteps has {steps}")
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
    for key in ("timesteps", "sigmas", "alphas_cumprod", *LATENT_KEYS, "attention", "negative_attention",
                "self_attention", "final_latent"):
        if key in tensors and not tensors[key].is_floating_point():
            raise _fail(path, f"tensor {key} is {tensors[key].dtype}, expected floating point")


def check_trace_file(path: Path, header: dict, tensors: dict[str, Tensor]) -> dict:
    """The checked metadata of a trace file (header and tensors as safetensors read them)."""
    meta = check_header(path, header)
    check_tensors(path, meta, tensors)
    return meta
