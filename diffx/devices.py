"""Where a model runs and in what precision: "--device" and "--dtype" names to torch objects."""

import torch

from diffx.errors import InvalidArgumentError, check_choice

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """"auto" (CUDA, else MPS, else CPU), "cpu", "cuda" (or "cuda:N") or "mps"; unavailable -> error."""
    kind = check_choice("device", name.split(":")[0], DEVICES)
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if kind == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (kind == "cuda" and not cuda) or (kind == "mps" and not mps):
        raise InvalidArgumentError(f"device {name!r} is not available on this machine; use --device cpu/auto")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"fp32", "fp16" (GPU only), "bf16", or "auto" (fp16 on a GPU, fp32 on the CPU)."""
    check_choice("dtype", name, ("auto", *DTYPES))
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if name == "fp16" and device.type == "cpu":
        raise InvalidArgumentError("fp16 is not supported on the CPU (missing kernels); use bf16 or fp32")
    return DTYPES[name]
