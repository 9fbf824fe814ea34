"""diffx's own .safetensors reader: the tensors safetensors wrote, as views into a memory map of the file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffx.errors import CheckpointError
from diffx.weights.safetensors_map import header_shapes, map_safetensors


def test_every_dtype_reads_back_as_written(tmp_path: Path) -> None:
    tensors = {"f32": torch.randn(3, 4), "f16": torch.randn(5, dtype=torch.float16),
               "bf16": torch.randn(2, 2, dtype=torch.bfloat16), "fp8": torch.randn(7).to(torch.float8_e4m3fn),
               "i64": torch.arange(6).reshape(2, 3), "bool": torch.tensor([True, False]), "empty": torch.zeros(0, 3)}
    save_file(tensors, str(tmp_path / "a.safetensors"))
    read = map_safetensors(tmp_path / "a.safetensors")
    assert read.keys() == tensors.keys()
    for key, tensor in tensors.items():
        assert read[key].dtype == tensor.dtype and read[key].shape == tensor.shape, key
        assert torch.equal(read[key].view(torch.uint8), tensor.view(torch.uint8)) if tensor.numel() else True, key
    assert header_shapes(tmp_path / "a.safetensors") == {key: tuple(t.shape) for key, t in tensors.items()}


def test_tensors_are_views_of_the_map_and_writes_stay_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    save_file({"w": torch.ones(1024)}, str(path))
    weight = map_safetensors(path)["w"]
    assert not weight.untyped_storage().resizable()  # a buffer it does not own: the map
    weight.mul_(3)  # copy-on-write: the page is the process's own, the file unchanged
    assert map_safetensors(path)["w"].sum() == 1024


def write_raw(path: Path, header: dict, data: bytes) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_a_misaligned_tensor_is_copied(tmp_path: Path) -> None:
    """The format does not promise alignment: a float32 one byte into the data reads right."""
    values = torch.tensor([1.5, -2.0])
    header = {"u8": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
              "f32": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]}}
    pad = next(n for n in range(8) if (8 + len(json.dumps({**header, "__metadata__": {"p": " " * n}}))) % 8 == 0)
    padded = {**header, "__metadata__": {"p": " " * pad}}  # the data starts 8-aligned: the float32 at byte 1 is not
    read = map_safetensors(write_raw(tmp_path / "m.safetensors", padded, b"\x07" + values.numpy().tobytes()))
    assert torch.equal(read["f32"], values) and read["u8"].item() == 7


@pytest.mark.parametrize("content, message", [
    (b"\x01\x00", "shorter than its 8-byte header length"),
    (struct.pack("<Q", 4) + b"nope", "its header is not JSON"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
])
def test_a_damaged_header_is_one_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "bad.safetensors").write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        map_safetensors(tmp_path / "bad.safetensors")


def test_a_truncated_file_is_named_damaged(tmp_path: Path) -> None:
    header = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    with pytest.raises(CheckpointError, match="tensor w's bytes do not fit its shape or the file"):
        map_safetensors(write_raw(tmp_path / "t.safetensors", header, b"\x00" * 8))
