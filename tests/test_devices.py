"""--device / --dtype names to torch objects (diffx/devices.py)."""

import pytest
import torch

from diffx.devices import resolve_device, resolve_dtype
from diffx.errors import InvalidArgumentError


def test_device_and_dtype_choices():
    cpu = resolve_device("cpu")
    assert cpu == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    assert resolve_dtype("fp32", cpu) == torch.float32 and resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("auto", cpu) == torch.float32
    with pytest.raises(InvalidArgumentError, match="fp16 is not supported on the CPU.*bf16"):
        resolve_dtype("fp16", cpu)
    with pytest.raises(InvalidArgumentError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(InvalidArgumentError, match="unknown dtype"):
        resolve_dtype("fp8", cpu)
    if not torch.cuda.is_available():
        with pytest.raises(InvalidArgumentError, match="'cuda' is not available"):
            resolve_device("cuda")
