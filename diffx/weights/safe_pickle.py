"""Read PyTorch `.ckpt`/`.pt`/`.bin` files without running any code from them.

A `torch.save` file is a zip archive: `<name>/data.pkl` (a pickle of the object tree) plus one entry
`<name>/data/<key>` per tensor storage (raw little-endian bytes). Unpickling is a small program that
may call any importable function, so a checkpoint from the internet can run `os.system(...)` when it
is opened with `pickle` or `torch.load(weights_only=False)`. `torch.load(weights_only=True)` is safe but
refuses the real `v1-5-pruned-emaonly.ckpt`, which also pickles PyTorch Lightning callback objects.

`SafeUnpickler` resolves globals from an explicit allowlist (the tensor rebuild functions, storage
types, dtypes, `OrderedDict`). Any other class becomes an *inert placeholder* that records its name
and swallows its arguments, so Lightning's bookkeeping loads as harmless husks. Globals from modules
that can touch the system (`os`, `subprocess`, `builtins.eval`, ...) stop the load with a
`CheckpointError`. Tensors are views into a private memory map of the file, so a 4 GB checkpoint is
not held twice in memory.
"""

from __future__ import annotations

import _compat_pickle
import collections
import mmap
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import torch

from diffx.errors import CheckpointError

# Modules whose functions could run commands, open files or import code. A pickle naming any of them
# is refused outright: no legitimate weight file needs them.
_DANGEROUS_MODULES = (
    "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "runpy", "importlib", "pickle", "_pickle",
    "marshal", "builtins", "codecs", "ctypes", "pty", "multiprocessing", "webbrowser", "code",
    "asyncio", "signal", "tempfile", "pathlib", "io", "_io", "operator", "functools", "types", "inspect",
    "urllib", "http", "requests", "torch.hub", "torch.jit", "torch.ops", "torch.package",
    "torch.serialization",
)
_SAFE_BUILTINS = {
    "set": set, "frozenset": frozenset, "slice": slice, "complex": complex, "bytearray": bytearray,
    "range": range,
}

# Legacy typed-storage classes name the element type of the raw bytes they describe.
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}

# Zip local file header: signature, version, flags, method, time, date, crc, sizes, then the two
# variable lengths (name, extra field) at byte 26; the entry's data follows the 30-byte header.
_LOCAL_HEADER = struct.Struct("<4s22xHH")


class _Storage(NamedTuple):
    """A tensor storage read from the archive: raw bytes and the dtype they hold."""

    untyped: torch.UntypedStorage
    dtype: torch.dtype


def _rebuild_tensor_v2(
    storage: _Storage, storage_offset: int, size: tuple, stride: tuple, *_: Any
) -> torch.Tensor:
    """`torch._utils._rebuild_tensor_v2`: a view of `storage` (offset and strides counted in elements)."""
    if not isinstance(storage, _Storage):
        raise CheckpointError("malformed checkpoint: a tensor does not point at a stored array")
    # `set_` does not check bounds: a corrupt or hostile file could otherwise read past its storage.
    if storage_offset < 0 or min(stride, default=0) < 0:
        raise CheckpointError("malformed checkpoint: negative tensor offset or stride")
    last = storage_offset + sum((n - 1) * step for n, step in zip(size, stride, strict=True))
    if min(size, default=1) > 0 and (last + 1) * storage.dtype.itemsize > storage.untyped.nbytes():
        raise CheckpointError("malformed checkpoint: a tensor reaches past the end of its stored data")
    return torch.empty((0,), dtype=storage.dtype).set_(storage.untyped, storage_offset, size, stride)


def _rebuild_tensor_v3(storage: _Storage, storage_offset: int, size: tuple, stride: tuple,
                       requires_grad: bool, backward_hooks: Any, dtype: torch.dtype, *_: Any) -> torch.Tensor:
    """`torch._utils._rebuild_tensor_v3`: like v2, with the dtype given explicitly."""
    return _rebuild_tensor_v2(_Storage(storage.untyped, dtype), storage_offset, size, stride)


def _rebuild_parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    """`torch._utils._rebuild_parameter`: we only want the numbers, so the Parameter wrapper is dropped."""
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: tuple, state: Any) -> Any:
    """`torch._tensor._rebuild_from_type_v2`: tensor subclasses load as plain tensors."""
    return func(*args)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    # Protocol 2 pickles a `bytes` object as _codecs.encode(text, "latin1").
    ("_codecs", "encode"): lambda text, encoding="utf-8": text.encode(encoding),
}


class InertObject:
    """Stands in for an object of a class diffx does not load (a Lightning callback, an optimizer...).

    Its class records the pickled name (`pickled_name`); constructing, `BUILD`ing or filling it never
    runs anything, so it is harmless whatever the checkpoint claims it to be.
    """

    pickled_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # a pickled dict subclass fills itself this way
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, item: Any) -> None:  # ... and a list subclass this way
        self.__dict__.setdefault("list", []).append(item)

    def extend(self, items: Any) -> None:
        for item in items:
            self.append(item)

    def __repr__(self) -> str:
        return f"<inert {self.pickled_name}>"


def _is_dangerous(module: str, name: str) -> bool:
    if module == "builtins" and name in _SAFE_BUILTINS:
        return False
    return any(module == bad or module.startswith(bad + ".") for bad in _DANGEROUS_MODULES)


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that only ever calls allowlisted functions (see the module docstring)."""

    def __init__(self, file: Any, path: Path, read_storage: Any):
        super().__init__(file)
        self.path = path
        self.read_storage = read_storage  # (key, dtype, numel) -> _Storage
        self.storages: dict[str, _Storage] = {}
        self.placeholders: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 2 files use Python 2 names (`__builtin__.exec`); translate them as pickle itself does.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module in ("torch", "torch.storage") and name in ("UntypedStorage", "TypedStorage"):
            return torch.uint8
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "builtins" and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if _is_dangerous(module, name):
            raise CheckpointError(
                f"refusing to load {self.path}: its pickle calls {module}.{name}, which could run code on "
                "this machine; this file may be malicious (load only checkpoints you trust, or .safetensors)"
            )
        key = (module, name)
        if key not in self.placeholders:
            self.placeholders[key] = type(name, (InertObject,), {"pickled_name": f"{module}.{name}"})
        return self.placeholders[key]

    def persistent_load(self, pid: Any) -> _Storage:
        # torch.save writes ('storage', storage_type, key, location, numel) for every storage.
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"malformed checkpoint {self.path}: unknown persistent id {pid!r:.80}")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"malformed checkpoint {self.path}: storage {key} has no known dtype")
        if key not in self.storages:
            self.storages[key] = self.read_storage(str(key), dtype, int(numel))
        return self.storages[key]


def load_torch_zip(path: Path) -> Any:
    """Unpickle the object tree of a `torch.save` zip archive, tensors backed by a memory map of the file."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":
            raise CheckpointError(
                f"{path} is a legacy (pre-PyTorch-1.6) pickle checkpoint, which diffx does not open; "
                "re-save it with a recent torch.save or convert it to .safetensors"
            )
        raise CheckpointError(f"{path} is not a checkpoint: neither a PyTorch zip archive nor safetensors")

    with open(path, "rb") as f:
        # Copy-on-write map: tensors share the page cache and stay writable without touching the file.
        file_map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    archive = zipfile.ZipFile(path)
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
        raise CheckpointError(f"{path} is a zip file but not a PyTorch checkpoint (no data.pkl inside)")
    prefix = pickles[0][: -len("data.pkl")]  # "archive/" (the folder name is whatever torch.save chose)
    if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder") != b"little":
        raise CheckpointError(f"{path} was saved on a big-endian machine; re-save it on a little-endian one")

    def read_storage(key: str, dtype: torch.dtype, numel: int) -> _Storage:
        nbytes = numel * dtype.itemsize
        try:
            info = archive.getinfo(f"{prefix}data/{key}")
        except KeyError:
            raise CheckpointError(f"{path} is truncated or corrupt: tensor data {key} is missing") from None
        if info.file_size < nbytes:
            raise CheckpointError(f"{path} is truncated or corrupt: tensor data {key} is too short")
        if nbytes == 0:
            return _Storage(torch.UntypedStorage(0), dtype)
        if info.compress_type == zipfile.ZIP_STORED:
            signature, name_length, extra_length = _LOCAL_HEADER.unpack_from(file_map, info.header_offset)
            if signature != b"PK\x03\x04":
                raise CheckpointError(f"{path} is corrupt: bad zip entry header for tensor data {key}")
            offset = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
            data = torch.frombuffer(file_map, dtype=torch.uint8, count=nbytes, offset=offset)
        else:  # compressed entries (rare; not written by torch.save) have to be inflated into memory
            data = torch.frombuffer(bytearray(archive.read(info)[:nbytes]), dtype=torch.uint8)
        return _Storage(data.untyped_storage(), dtype)

    with archive.open(pickles[0]) as pickle_file:
        unpickler = SafeUnpickler(pickle_file, path, read_storage)
        try:
            return unpickler.load()
        except CheckpointError:
            raise
        except Exception as error:
            raise CheckpointError(f"cannot read {path}: corrupt or unsupported pickle ({error})") from error
