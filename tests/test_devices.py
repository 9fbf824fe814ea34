"""--device / --dtype names to torch objects (diffx/devices.py)."""

from unittest import mock

import pytest
import torch

from diffx import devices
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


def test_cpu_flags_read_x86_and_arm_spellings(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n\nFeatures\t: fp asimd bf16\n")
    assert {"avx512_bf16", "avx512f", "bf16", "asimd"} <= devices.cpu_flags(cpuinfo)
    assert devices.cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize("machine, flags, native", [
    ("x86_64", {"avx512f", "avx512_bf16"}, True), ("x86_64", {"amx_bf16"}, True),
    ("x86_64", {"avx512f", "avx2"}, False), ("aarch64", {"asimd", "bf16"}, True), ("arm64", {"asimd"}, False),
])
def test_native_bf16_detection(machine, flags, native):
    devices.cpu_bf16_native.cache_clear()
    try:
        with mock.patch("platform.machine", return_value=machine), \
                mock.patch.object(devices, "cpu_flags", return_value=frozenset(flags)):
            assert devices.cpu_bf16_native() is native
            assert ("no native bf16" in devices.cpu_description()) is not native
    finally:
        devices.cpu_bf16_native.cache_clear()


@pytest.mark.parametrize("native", [True, False])
def test_dtype_auto_picks_the_fast_path_only_for_large_models_on_native_bf16(native):
    cpu, large = torch.device("cpu"), devices.FAST_PATH_MIN_BYTES
    with mock.patch.object(devices, "cpu_bf16_native", return_value=native):
        assert resolve_dtype("auto", cpu, large) == (torch.bfloat16 if native else torch.float32)
        assert resolve_dtype("auto", cpu, large - 1) == torch.float32  # the embedded model: fp32 (and goldens)
        assert resolve_dtype("auto", cpu) == torch.float32  # size unknown: fp32
        assert resolve_dtype("fp32", cpu, large) == torch.float32  # an explicit choice wins
        assert resolve_dtype("auto", torch.device("cuda"), large) == torch.float16


def test_model_bytes_on_disk(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "model.ckpt").write_bytes(b"x" * 50)
    (tmp_path / "config.json").write_text("{}")
    assert devices.model_bytes_on_disk(tmp_path) == 150
    assert devices.model_bytes_on_disk(tmp_path / "model.ckpt") == 50


@pytest.mark.parametrize("name", ["cpu:abc", "cpu:0", "cuda:x", "cuda:", "mps:1", "auto:0", "cuda:１"])
def test_the_whole_device_string_is_checked(name):
    with pytest.raises(InvalidArgumentError, match="is not a device name; use auto, cpu, cuda, cuda:N"):
        resolve_device(name)
