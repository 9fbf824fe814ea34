"""SD3 single files against diffusers: Stability-layout files written by the inverse of diffusers' converters
(tests/weights/sd3_single_files.py) from a random-weight reference pipeline of tests/pipeline/sd3_models.py (NARROW:
SD3's 64-wide heads and real VAE at a few heads — the file layout does not depend on the width; the real widths'
numbers are tests/pipeline/test_sd3_pipeline.py's),
loaded by diffx, give the pictures StableDiffusion3Pipeline gives with the same weights, within 1/255 — the file
with CLIPs and T5 in fp16, with CLIPs and no T5, with T5 in fp8 (upcast), MMDiT + VAE with the CLIPs beside it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from diffx.errors import CheckpointError
from diffx.models.sd3 import StableDiffusion3
from diffx.weights.discovery import resolve_model_source
from diffx.weights.load import describe_architecture, load_model
from diffx.weights.sd3_load import sd3_config_from_diffusers
from tests.pipeline.sd3_models import NARROW, sd3_pipeline
from tests.pipeline.test_sd3_pipeline import TOLERANCE, run_both
from tests.weights.sd3_single_files import T5, round_weights, rounded, single_file_tensors, write_single_file


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    """The reference pipeline (its weights rounded to fp16, the numbers an fp16 file holds), its folder, and the
    whole model in Stability's layout."""
    folder = tmp_path_factory.mktemp("sd3-single") / "sd3-random"
    pipeline = sd3_pipeline(folder, sizes=NARROW)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        round_weights(getattr(pipeline, name), torch.float16)
    return folder, pipeline, single_file_tensors(pipeline, sd3_config_from_diffusers(folder))


def load_with_note(path: Path) -> tuple[StableDiffusion3, str]:
    notes = []
    model = load_model(path, note=notes.append)
    assert isinstance(model, StableDiffusion3) and len(notes) == 1
    return model, notes[0]


@contextlib.contextmanager
def without_t5(pipeline) -> Iterator[None]:
    """The pipeline with no T5 for the duration (diffusers' 256 zero rows); put back after."""
    saved = pipeline.text_encoder_3, pipeline.tokenizer_3
    pipeline.text_encoder_3 = pipeline.tokenizer_3 = None
    try:
        yield
    finally:
        pipeline.text_encoder_3, pipeline.tokenizer_3 = saved


@pytest.mark.parametrize("t5_dtype", [torch.float16, torch.float8_e4m3fn], ids=["t5xxlfp16", "t5xxlfp8"])
def test_file_with_clips_and_t5_equals_diffusers(reference, tmp_path: Path, t5_dtype: torch.dtype) -> None:
    folder, pipeline, tensors = reference
    once = {key: tensor for key, tensor in tensors.items() if key != T5 + "encoder.embed_tokens.weight"}
    path = write_single_file(tmp_path / "sd3_medium_incl_clips_t5.safetensors", once, t5_dtype=t5_dtype)
    (tmp_path / "tokenizer_3").symlink_to(folder / "tokenizer_3")
    model, note = load_with_note(path)
    assert model.config.mmdit.depth == 2 and model.config.t5 is not None
    assert "MMDiT + VAE + CLIP-L + bigG + T5" in note and "tokenizer from tokenizer_3/tokenizer.json" in note
    assert ("fp8 weights upcast to float32" in note) == (t5_dtype == torch.float8_e4m3fn)
    with rounded(pipeline.text_encoder_3, t5_dtype):  # diffusers reads the numbers the file holds
        ours, theirs = run_both(model, pipeline)
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_file_with_clips_runs_without_t5(reference, tmp_path: Path) -> None:
    _, pipeline, tensors = reference
    model, note = load_with_note(write_single_file(tmp_path / "sd3_medium_incl_clips.safetensors", tensors,
                                                   parts=("clips",)))
    assert model.config.t5 is None and model.t5_tokenizer is None and "runs without T5" in note
    with without_t5(pipeline):
        ours, theirs = run_both(model, pipeline)
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_t5_without_its_tokenizer_runs_without_t5(reference, tmp_path: Path) -> None:
    """No tokenizer.json beside the file: T5 is left out, and the note says so (never silently)."""
    model, note = load_with_note(write_single_file(tmp_path / "sd3_incl_t5.safetensors", reference[2]))
    assert model.config.t5 is None and not hasattr(model.text_encoder, "t5xxl")
    assert "T5 weights but no T5 tokenizer (tokenizer_3/tokenizer.json or t5xxl/tokenizer.json" in note


def test_mmdit_and_vae_take_the_clips_beside_the_file(reference, tmp_path: Path) -> None:
    folder, pipeline, tensors = reference
    path = write_single_file(tmp_path / "sd3_medium.safetensors", tensors, parts=())
    with pytest.raises(CheckpointError, match="no CLIP text encoders; put the diffusers text_encoder/ and "
                                              "text_encoder_2/ folders beside it"):
        load_model(path)
    for name in ("text_encoder", "text_encoder_2"):  # the rounded weights, as the file's
        getattr(pipeline, name).save_pretrained(tmp_path / name)
    for name in ("tokenizer", "tokenizer_2"):
        (tmp_path / name).symlink_to(folder / name)
    model, note = load_with_note(path)
    assert "the file holds MMDiT + VAE)" in note and "CLIP-L and bigG from text_encoder/" in note
    with without_t5(pipeline):
        ours, theirs = run_both(model, pipeline)
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_the_file_is_a_memory_map(reference, tmp_path: Path) -> None:
    """Loaded at the file's dtype, the MMDiT's weights are the file's bytes, not copies."""
    path = write_single_file(tmp_path / "sd3.safetensors", reference[2], parts=("clips",), dtype=torch.float32)
    model = load_model(path)
    weight = model.transformer.x_embedder.proj.weight
    assert not weight.untyped_storage().resizable()  # a view of a buffer (the map), not memory torch allocated
    assert os.path.getsize(path) > weight.numel() * 4
    assert describe_architecture(resolve_model_source(path)).startswith(  # `diffx models`: from the header alone
        "SD3 / SD3.5 (a non-standard MMDiT: 2 blocks × 128 wide; the file holds MMDiT + VAE + CLIP-L + bigG)")
