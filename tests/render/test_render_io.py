"""Atomic output files, GIF/PNG/MP4 writers, and reading input images and masks."""

import errno
import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

from diffx.errors import DiffxError, InputImageError, OutputPathError
from diffx.render import io as render_io
from diffx.render.io import load_image, load_mask, save_gif, save_mp4, save_png, write_atomic


def _leftovers(folder):
    return sorted(name for name in os.listdir(folder) if ".tmp" in name)


def _frames(n, size=(16, 12)):
    # Distinct solid colours: PIL merges identical consecutive GIF frames.
    width, height = size
    return [np.full((height, width, 3), (40 * k % 256, 200 - 30 * k, 90), np.uint8) for k in range(n)]


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


def test_creates_parent_folders_and_normal_permissions(tmp_path):
    target = tmp_path / "a" / "b" / "grid.png"
    save_png(np.zeros((4, 5, 3), np.uint8), target)
    assert Image.open(target).size == (5, 4)
    # mkstemp makes 0600 files; the output should get the umask's usual mode instead.
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_unwritable_folder_names_the_path(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")  # a file where a folder is needed: fails even when running as root
    with pytest.raises(OutputPathError, match="not_a_folder"):
        save_png(np.zeros((2, 2, 3), np.uint8), blocker / "out.png")


def test_output_path_that_is_a_folder(tmp_path):
    with pytest.raises(OutputPathError, match="folder"):
        save_png(np.zeros((2, 2, 3), np.uint8), tmp_path, force=True)


def test_gif_frames_size_and_final_hold(tmp_path):
    path = save_gif(_frames(5), tmp_path / "steps.gif", duration_ms=80, hold_last_ms=1200)
    gif = Image.open(path)
    assert gif.n_frames == 5
    assert gif.size == (16, 12)
    durations = []
    for k in range(gif.n_frames):
        gif.seek(k)
        durations.append(gif.info["duration"])
    assert durations == [80, 80, 80, 80, 1200]
    assert gif.info.get("loop") == 0


def test_gif_frame_colours_survive(tmp_path):
    frames = _frames(3)
    gif = Image.open(save_gif(frames, tmp_path / "c.gif"))
    gif.seek(2)
    assert np.array_equal(np.asarray(gif.convert("RGB"))[0, 0], frames[2][0, 0])


def test_gif_rejects_empty_and_mixed_sizes(tmp_path):
    with pytest.raises(DiffxError):
        save_gif([], tmp_path / "empty.gif")
    with pytest.raises(ValueError, match="same size"):
        save_gif([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)], tmp_path / "mixed.gif")
    assert _leftovers(tmp_path) == []


def test_mp4_without_encoder_says_how_to_install(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec_without_ffmpeg(name):
        return None if name == "imageio_ffmpeg" else real_find_spec(name)

    monkeypatch.setattr(render_io.importlib.util, "find_spec", find_spec_without_ffmpeg)
    with pytest.raises(DiffxError, match="pip install imageio-ffmpeg"):
        save_mp4(_frames(2), tmp_path / "a.mp4")
    assert not (tmp_path / "a.mp4").exists()


def test_mp4_with_encoder(tmp_path):
    # imageio-ffmpeg is a test dependency (pyproject's [test] extra), so this runs: no skip.
    path = save_mp4(_frames(4, size=(17, 11)), tmp_path / "a.mp4", fps=5)  # odd sides get padded
    import imageio.v2 as imageio

    with imageio.get_reader(path, format="FFMPEG") as reader:
        decoded = [frame for frame in reader]
    assert len(decoded) == 4
    assert decoded[0].shape == (12, 18, 3)


def test_load_image_converts_to_rgb_and_resizes(tmp_path):
    Image.new("L", (10, 6), 200).save(tmp_path / "grey.png")
    image = load_image(tmp_path / "grey.png")
    assert image.mode == "RGB" and image.size == (10, 6)
    assert load_image(tmp_path / "grey.png", size=(20, 12)).size == (20, 12)


def test_load_image_rejects_non_image_and_missing(tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not a picture")
    with pytest.raises(InputImageError, match="notes.png") as err:
        load_image(not_image)
    assert "\n" not in str(err.value)
    with pytest.raises(InputImageError, match="no image file"):
        load_image(tmp_path / "missing.png")


def test_mask_threshold_at_half(tmp_path):
    levels = np.array([[0, 127, 128, 255]], np.uint8)  # 127/255 < 0.5 <= 128/255
    Image.fromarray(levels).save(tmp_path / "mask.png")
    mask = load_mask(tmp_path / "mask.png", size=(4, 1))
    assert mask.tolist() == [[0.0, 0.0, 1.0, 1.0]]


def test_mask_size_mismatch(tmp_path):
    Image.new("L", (8, 8), 255).save(tmp_path / "mask.png")
    with pytest.raises(InputImageError, match="8x8 but the image is 16x16"):
        load_mask(tmp_path / "mask.png", size=(16, 16))
