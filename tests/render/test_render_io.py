"""Atomic output files, GIF/PNG/MP4 writers, and reading input images and masks."""

import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

from diffx.errors import DiffxError, InvalidArgumentError, OutputPathError
from diffx.render import io as render_io
from diffx.render.io import save_animation, save_gif, save_mp4, save_png


def _frames(n, size=(16, 12)):
    # Distinct solid colours: PIL merges identical consecutive GIF frames.
    width, height = size
    return [np.full((height, width, 3), (40 * k % 256, 200 - 30 * k, 90), np.uint8) for k in range(n)]


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
    assert not [name for name in os.listdir(tmp_path) if ".tmp" in name]


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


def test_save_animation(tmp_path):
    frames = _frames(3)
    path = save_animation(frames, tmp_path / "a.gif", frame_ms=50)
    with Image.open(path) as gif:
        assert gif.n_frames == 3 and gif.info["duration"] == 50
    with pytest.raises(InvalidArgumentError, match="unknown animation format"):
        save_animation(frames, tmp_path / "a.png")
    with pytest.raises(InvalidArgumentError, match="positive"):
        save_animation(frames, tmp_path / "b.gif", frame_ms=0)


def test_gif_frames_share_one_palette(tmp_path):
    # A smooth background (more colours than a GIF palette holds) under a moving square: with one palette
    # for all frames the background decodes to the same colours in every frame, so only the square changes.
    ramp = np.linspace(0, 255, 64, dtype=np.float32)
    background = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), -1)
    frames = []
    for k in range(6):
        frame = background.astype(np.uint8).copy()
        frame[4:12, 8 * k:8 * k + 8] = (255, 0, 0)
        frames.append(frame)
    gif = Image.open(save_gif(frames, tmp_path / "moving.gif"))
    decoded = []
    for index in range(gif.n_frames):
        gif.seek(index)
        decoded.append(np.asarray(gif.convert("RGB")).astype(int))
    assert len(decoded) == 6
    still = np.ones((64, 64), bool)
    still[4:12] = False
    assert all(np.array_equal(d[still], decoded[0][still]) for d in decoded)
    assert np.abs(decoded[0][still] - background[still]).mean() < 8  # 4096 colours in 256: close
