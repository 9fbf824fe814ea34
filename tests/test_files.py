"""Atomic output files and the up-front output checks (diffx/files.py)."""

import errno
import os

import pytest

from diffx.errors import InvalidArgumentError, OutputPathError
from diffx.files import animation_format, check_outputs, companion_path, write_atomic


def _leftovers(folder):
    return sorted(name for name in os.listdir(folder) if ".tmp" in name)


def test_refuses_overwrite_without_force_and_keeps_bytes(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"original")
    with pytest.raises(OutputPathError, match="--force"):
        write_atomic(target, lambda tmp: tmp.write_bytes(b"new"), force=False)
    assert target.read_bytes() == b"original"
    assert _leftovers(tmp_path) == []


def test_force_overwrites(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"original")
    write_atomic(target, lambda tmp: tmp.write_bytes(b"new"), force=True)
    assert target.read_bytes() == b"new"


def test_failing_write_leaves_no_file_and_no_temp(tmp_path):
    def failing_writer(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_atomic(tmp_path / "out.png", failing_writer)
    assert os.listdir(tmp_path) == []


def test_failing_overwrite_keeps_original(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"original")
    with pytest.raises(ValueError):
        write_atomic(target, lambda tmp: (_ for _ in ()).throw(ValueError("bad")), force=True)
    assert target.read_bytes() == b"original"
    assert _leftovers(tmp_path) == []


def test_os_error_while_writing_becomes_output_path_error(tmp_path):
    def disk_full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputPathError, match="out.gif.*No space left"):
        write_atomic(tmp_path / "out.gif", disk_full)
    assert os.listdir(tmp_path) == []


def test_check_outputs(tmp_path):
    existing = tmp_path / "a.png"
    existing.write_bytes(b"x")
    check_outputs([tmp_path / "new" / "deeper" / "b.png", None])
    check_outputs([existing], force=True)
    with pytest.raises(OutputPathError, match="--force"):
        check_outputs([existing])
    with pytest.raises(OutputPathError, match="is a folder"):
        check_outputs([tmp_path])
    with pytest.raises(OutputPathError, match="cannot write"):
        check_outputs([existing / "c.png"])  # "folder" is a file


def test_companion_and_animation_names():
    assert companion_path("runs/out.gif", "attention").as_posix() == "runs/out_attention.png"
    assert animation_format("a.GIF") == ".gif" and animation_format("b.mp4") == ".mp4"
    with pytest.raises(InvalidArgumentError, match="unknown animation format"):
        animation_format("c.png")
