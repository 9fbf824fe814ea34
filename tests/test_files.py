"""Atomic output files and the up-front output checks (diffx/files.py)."""

import errno
import os

import pytest

from diffx.errors import InvalidArgumentError, OutputPathError
from diffx.files import animation_format, atomic_output, check_outputs, companion_path, write_atomic


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


def test_picture_format_by_suffix_and_unknown_refused(tmp_path):
    from diffx.files import picture_format

    assert [picture_format(f"a{s}") for s in (".png", ".JPG", ".jpeg", ".webp")] == ["PNG", "JPEG", "JPEG", "WEBP"]
    with pytest.raises(InvalidArgumentError, match=r"\.png, \.jpg or \.webp"):
        check_outputs([], picture=tmp_path / "a.bmp")
    assert not list(tmp_path.iterdir())


def test_mp4_without_ffmpeg_is_refused_up_front(tmp_path, monkeypatch):
    monkeypatch.setattr("diffx.files.mp4_available", lambda: False)
    with pytest.raises(OutputPathError, match="imageio-ffmpeg"):
        check_outputs([], animation=tmp_path / "a.mp4")


def test_save_png_writes_the_format_the_suffix_names(tmp_path):
    import numpy as np
    from PIL import Image

    from diffx.render import save_png

    picture = np.zeros((8, 8, 3), np.uint8)
    for suffix, name in ((".png", "PNG"), (".jpg", "JPEG"), (".webp", "WEBP")):
        with Image.open(save_png(picture, tmp_path / f"a{suffix}")) as written:
            assert written.format == name


def test_a_file_that_appears_while_writing_is_not_overwritten(tmp_path):
    """Two writers without --force racing for one name: the exclusive create refuses the second, keeping the first's
    bytes and leaving no temporary file."""
    target = tmp_path / "out.png"
    with pytest.raises(OutputPathError, match="already exists"):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"mine")
            target.write_bytes(b"theirs")  # another writer finished first, after our up-front check
    assert target.read_bytes() == b"theirs" and sorted(tmp_path.iterdir()) == [target]



def test_two_outputs_on_one_file_are_refused_up_front(tmp_path):
    out = tmp_path / "out.png"
    with pytest.raises(OutputPathError, match="two outputs are both"):
        check_outputs([companion_path(out, "attention"), tmp_path / "out_attention.png"], picture=out)
    with pytest.raises(OutputPathError, match="two outputs are both"):
        check_outputs([str(out)], picture=tmp_path / "." / "out.png")
    assert not list(tmp_path.iterdir())
