"""The joint-attention explorer (diffx.views.joint_attention) on a tiny SD3's trace: both pictures written, their
sizes, refused for a U-Net's trace and before any work for an existing file."""

from __future__ import annotations

import pytest
from PIL import Image

from diffx.errors import InvalidArgumentError, OutputPathError
from diffx.pipeline.settings import GenerationSettings
from diffx.trace.record import load_trace
from diffx.trace.tracer import generate_traced
from diffx.views.joint_attention import quadrant_shares, write_joint_views
from tests.models.sd3_tiny import tiny_sd3


@pytest.fixture(scope="module")
def sd3_trace():
    model = tiny_sd3()
    return model, generate_traced(model, GenerationSettings(prompt="a red circle", seed=0, steps=3)).traces[0]


def test_explorer_writes_quadrants_and_words(sd3_trace, tmp_path) -> None:
    model, trace = sd3_trace
    paths = write_joint_views(trace, tmp_path / "joint.png", step=2, preview="vae", model=model)
    assert [p.name for p in paths] == ["joint.png", "joint_words.png"]
    with Image.open(paths[0]) as quadrants, Image.open(paths[1]) as words:
        assert quadrants.width >= 4 * 200 and words.width > words.height  # four quadrants; words in columns
    assert quadrant_shares(trace).shape == (4, 2, 3)  # quadrants × blocks × steps


def test_explorer_refuses_what_it_cannot_draw(sd3_trace, tiny_trace_file, tmp_path) -> None:
    _, trace = sd3_trace
    with pytest.raises(InvalidArgumentError, match="no joint attention"):
        write_joint_views(load_trace(tiny_trace_file), tmp_path / "x.png")  # a U-Net's
    (tmp_path / "x_words.png").write_bytes(b"taken")
    with pytest.raises(OutputPathError):
        write_joint_views(trace, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(InvalidArgumentError):
        write_joint_views(trace, tmp_path / "y.png", step=9)
