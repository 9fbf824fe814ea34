"""A .safetensors file's tensors as views into a memory map of the file: loading costs no copy.

The format is simple enough to read by hand (https://github.com/huggingface/safetensors, "Format"):

    8 bytes   N, the header's length (unsigned, little-endian)
    N bytes   a JSON object: name -> {"dtype": "F16", "shape": [...], "data_offsets": [begin, end]}
              (offsets into the data section), and an optional "__metadata__" of strings
    the rest  the data section: every tensor's bytes, little-endian, row-major

`safetensors`' own `safe_open(...).get_tensor` copies each tensor into new memory, so a loader that reads every
tensor and then hands them to a model holds the file twice at its peak. Here the file is mapped copy-on-write
(`mmap.ACCESS_COPY`: pages are read from disk when touched, shared with the page cache until written, and a
write never reaches the file) and each tensor is `torch.frombuffer` over its bytes — a view, no copy. The map
lives as long as any tensor does. A tensor whose offset is not a multiple of its element size (the format does
not promise alignment) is copied, as it must be.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import torch
from torch import Tensor

from diffx.errors import CheckpointError

# safetensors' dtype names -> torch's (the float8 kinds: SD3's fp8 T5 files).
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
          "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


def read_header(path: Path) -> tuple[dict[str, dict], int]:
    """The JSON header's tensor entries (without `__metadata__`) and where the data section starts."""
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path} is not a valid .safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER:
            raise CheckpointError(f"{path} is not a valid .safetensors file (its header claims {length} bytes)")
        try:
            header = json.loads(file.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path} is not a valid .safetensors file (its header is not JSON: {error})") \
                from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a valid .safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    return header, 8 + length


def _entry(path: Path, key: str, entry: object, data_size: int) -> tuple[torch.dtype, list[int], int, int]:
    """One header entry checked: (dtype, shape, begin, end) with the offsets inside the data section."""
    try:
        dtype, shape, (begin, end) = DTYPES[entry["dtype"]], entry["shape"], entry["data_offsets"]
        numel = 1
        for size in shape:
            numel *= int(size)
        fits = 0 <= begin <= end <= data_size and end - begin == numel * dtype.itemsize
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: tensor {key}'s header entry {str(entry)[:80]} is not one diffx reads "
                              f"(dtypes: {', '.join(DTYPES)}); is the file damaged?") from None
    if not fits:
        raise CheckpointError(f"{path}: tensor {key}'s bytes do not fit its shape or the file; the file is "
                              "damaged or truncated (re-download it)")
    return dtype, shape, begin, end


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, from the header alone (nothing of the data is read)."""
    header, start = read_header(path)
    size = path.stat().st_size
    return {key: tuple(_entry(path, key, entry, size - start)[1]) for key, entry in header.items()}


def map_safetensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of a .safetensors file, as views into a private memory map of it (see the module's docstring)."""
    header, start = read_header(path)
    size = path.stat().st_size
    if not header:
        return {}
    with path.open("rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)  # the map outlives the file object
    data = memoryview(mapped)[start:]
    tensors = {}
    for key, entry in header.items():
        dtype, shape, begin, end = _entry(path, key, entry, size - start)
        if begin == end:
            tensors[key] = torch.empty(shape, dtype=dtype)
        elif (start + begin) % dtype.itemsize:  # misaligned: a copy of the bytes is aligned
            tensors[key] = torch.frombuffer(bytearray(data[begin:end]), dtype=dtype).reshape(shape)
        else:
            tensors[key] = torch.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize,
                                            offset=begin).reshape(shape)
    return tensors
