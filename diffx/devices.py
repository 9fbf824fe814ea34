"""Where a model runs and in what precision: "--device" and "--dtype" names to torch objects.

On the CPU, "--dtype auto" chooses between fp32 and the bf16 fast path (`diffx.models.fast_cpu`). bf16 pays
only where the CPU multiplies bf16 natively (x86: the AVX512-BF16 or AMX-BF16 instructions; arm64: the BF16
extension); elsewhere oneDNN emulates it, slower than fp32. And it pays mostly for a large model: on an
SD-size U-Net (860 M parameters) the fast path runs a step 2.1-3.7x faster than fp32 with ε̂ within ~1.2 % of
fp32's (`benchmarks/unet_speed.py`), while a model of a few million parameters (the embedded one) is bound
by per-op overheads, not arithmetic: 0.40 s a picture in fp32, 0.33 s on the fast path
(`benchmarks/fast_path_adherence.py`), too little to give up the fp32 pictures its golden images pin down.
So "auto" on the CPU is bf16 exactly when the CPU has native bf16 and the model's weights are at least
`FAST_PATH_MIN_BYTES` on disk; fp32 otherwise.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

from diffx.errors import InvalidArgumentError, check_choice, elide

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# CPU feature flags (as /proc/cpuinfo spells them) that mean native bf16 dot products.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# Checkpoints at least this large (an SD1.x U-Net alone is 1.7 GB in fp16) get the CPU fast path under "auto".
FAST_PATH_MIN_BYTES = 500 * 2**20


def resolve_device(name: str) -> torch.device:
    """"auto" (CUDA, else MPS, else CPU), "cpu", "cuda" (or "cuda:N") or "mps"; unavailable -> error.

    The whole string is checked: anything after a colon must be a device index (only CUDA has several)."""
    kind, _, index = name.partition(":")
    check_choice("device", kind, DEVICES)
    if _ and not (kind == "cuda" and index.isdigit() and index.isascii()):
        raise InvalidArgumentError(f"device {elide(name, 40)} is not a device name; use auto, cpu, cuda, cuda:N "
                                   "(N a GPU index, e.g. cuda:0) or mps")
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if kind == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (kind == "cuda" and not cuda) or (kind == "mps" and not mps):
        raise InvalidArgumentError(f"device {name!r} is not available on this machine; use --device cpu/auto")
    return torch.device(name)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (x86 `flags`, arm64 `Features`); empty where /proc/cpuinfo is missing."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    lines = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return frozenset(word for key, value in lines if key.strip() in ("flags", "Features") for word in value.split())


@functools.cache
def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 dot products natively (AVX512-BF16, AMX-BF16 or arm64 BF16)."""
    flags = cpu_flags()
    if platform.machine().lower() in ("x86_64", "amd64"):
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    return "bf16" in flags


def cpu_description() -> str:
    """One line on the CPU's vector unit and bf16 support, for `diffx models`."""
    capability = torch.backends.cpu.get_cpu_capability()
    native = sorted(set(BF16_FLAGS) & cpu_flags())
    if cpu_bf16_native():
        return (f"CPU: {capability}, native bf16 ({', '.join(native)}): --dtype auto runs models of "
                f"{FAST_PATH_MIN_BYTES // 2**20} MB and more in the bf16 fast path on the CPU, smaller ones in fp32")
    return f"CPU: {capability}, no native bf16: --dtype auto runs fp32 on the CPU (bf16 would be emulated, slower)"


def resolve_dtype(name: str, device: torch.device, model_bytes: int | None = None) -> torch.dtype:
    """"fp32", "fp16" (GPU only), "bf16", or "auto": fp16 on a GPU; on the CPU, bf16 (the fast path) when the
    CPU has native bf16 and the model is at least `FAST_PATH_MIN_BYTES` (`model_bytes`, unknown: small), else fp32.
    """
    check_choice("dtype", name, ("auto", *DTYPES))
    if name == "auto":
        if device.type != "cpu":
            return torch.float16
        large = model_bytes is not None and model_bytes >= FAST_PATH_MIN_BYTES
        return torch.bfloat16 if large and cpu_bf16_native() else torch.float32
    if name == "fp16" and device.type == "cpu":
        raise InvalidArgumentError("fp16 is not supported on the CPU (missing kernels); use bf16 or fp32")
    return DTYPES[name]


def model_bytes_on_disk(path: Path) -> int:
    """The size of a model's weights: a file's size, or the sum of a folder's weight files."""
    if path.is_file():
        return path.stat().st_size
    suffixes = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
    return sum(file.stat().st_size for file in path.rglob("*") if file.suffix in suffixes and file.is_file())
