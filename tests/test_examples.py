"""Every script in examples/ runs (on a tiny random model via DIFFX_MODEL) and returns what it promises."""

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> dict:
    return runpy.run_path(str(EXAMPLES / name), run_name="example")


@pytest.fixture(autouse=True)
def tiny_model(monkeypatch, tiny_model_dir):
    monkeypatch.setenv("DIFFX_MODEL", str(tiny_model_dir))
    monkeypatch.setattr(sys, "argv", ["example"])


def test_text_to_image(tmp_path):
    paths = load("text_to_image.py")["main"]("a red circle", tmp_path)
    assert [p.name for p in paths] == ["seed0.png", "seed1.png", "seed2.png"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_trace_attention(tmp_path):
    peaks = load("trace_attention.py")["main"]("a yellow triangle", tmp_path)
    assert list(peaks) == ["a", "yellow", "triangle"]
    assert all(isinstance(row, int) and isinstance(col, int) for row, col in peaks.values())
    assert {"trace.gif", "attention.png", "trace.safetensors"} <= {p.name for p in tmp_path.iterdir()}


def test_forward_process(tmp_path):
    signal = load("forward_process.py")["main"](tmp_path)
    # At t = 500 the linear (DDPM) schedule has destroyed the most signal, the cosine one the least.
    assert signal["linear"] < signal["scaled_linear"] < signal["cosine"]
    assert (tmp_path / "forward_process.png").exists() and (tmp_path / "schedules.png").exists()


def test_sampler_loop(tmp_path):
    moves = load("sampler_loop.py")["main"]("a blue circle", tmp_path)
    assert len(moves["ddim"]) == 19 and len(moves["euler"]) == 19
    assert (tmp_path / "ddim.png").exists() and (tmp_path / "euler.png").exists()


def test_load_checkpoint(tmp_path, tiny_model_dir):
    path = load("load_checkpoint.py")["main"](str(tiny_model_dir / "model.safetensors"), tmp_path, steps=2)
    assert path.exists()


def test_ddim_inversion(tmp_path):
    trips = load("ddim_inversion.py")["main"]("a red circle", tmp_path)
    assert set(trips) == {1.0, 7.5} and all(db > 0 for db in trips.values())
    assert (tmp_path / "round_trip_w1.png").exists() and (tmp_path / "round_trip_w7.5.png").exists()
