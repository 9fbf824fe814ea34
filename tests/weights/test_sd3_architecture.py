"""SD3 / SD3.5 single files recognised from their tensors' names and shapes: the full-size layouts, built on the meta
device (no data), give back their presets; a file of another family is never taken for SD3, nor SD3 for one."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from diffx.errors import CheckpointError
from diffx.models.configs import PRESETS
from diffx.models.mmdit import MMDiTConfig, sd3_medium, sd35_large, sd35_medium
from diffx.models.sd3 import SD3Config, build_sd3, clip_g, clip_l
from diffx.models.stable_diffusion import build_without_weights
from diffx.models.t5 import T5Config
from diffx.weights.architecture import recognise
from diffx.weights.sd3_architecture import is_sd3_layout, recognise_sd3


def shapes_of(config: SD3Config, parts: tuple[str, ...] = ("clip", "t5")) -> dict[str, tuple[int, ...]]:
    """A single file's tensor shapes for `config`, holding the MMDiT and VAE and the encoders `parts` names."""
    with torch.device("meta"):
        state = build_sd3(config, weights=False).original_state_dict()
    return {key: tuple(tensor.shape) for key, tensor in state.items()
            if not (key.startswith("text_encoders.clip") and "clip" not in parts)
            and not (key.startswith("text_encoders.t5xxl") and "t5" not in parts)}


def test_full_sd3_medium_with_clips_and_t5_is_recognised_from_its_shapes() -> None:
    """sd3_medium_incl_clips_t5xxlfp16: the 2 B MMDiT, CLIP-L, bigG, T5-XXL — all their sizes from the shapes."""
    recognised = recognise_sd3(shapes_of(SD3Config(name="sd3")))
    config = recognised.config
    assert config.mmdit == sd3_medium() and config.t5 == T5Config()
    assert config.clip_l == clip_l() and config.clip_g == clip_g()
    assert recognised.has_clips and recognised.has_t5
    summary = recognised.summary()
    assert summary.startswith("SD3 / SD3.5 (the sd3-medium MMDiT; the file holds MMDiT + VAE + CLIP-L + bigG + T5, "
                              "T5 24 layers × 4096)")
    assert "64-wide heads" in summary and "CLIP-L quick-GELU" in summary


@pytest.mark.parametrize("preset", [sd3_medium, sd35_medium, sd35_large])
def test_each_mmdit_preset_is_recognised_without_text_encoders(preset) -> None:
    """sd3_medium.safetensors / SD3.5 files of MMDiT + VAE: QK-norm, MMDiT-X's attn2 blocks, the 384² table."""
    recognised = recognise_sd3(shapes_of(SD3Config(name="x", mmdit=preset(), t5=None), parts=()))
    assert recognised.config.mmdit == preset() and recognised.config.t5 is None
    assert not recognised.has_clips and not recognised.has_t5
    assert "the file holds MMDiT + VAE)" in recognised.summary()


def test_a_non_standard_mmdit_is_recognised_and_said_so() -> None:
    mmdit = MMDiTConfig(name="mmdit", depth=3, heads=2, pos_embed_max_size=32, qk_norm=True,
                        dual_attention_layers=(0, 2))
    recognised = recognise_sd3(shapes_of(SD3Config(name="x", mmdit=mmdit, t5=None), parts=("clip",)))
    assert recognised.config.mmdit == mmdit
    assert "a non-standard MMDiT: 3 blocks × 128 wide, QK-norm, attn2 in blocks [0, 2]" in recognised.summary()


def test_one_clip_without_the_other_is_refused() -> None:
    shapes = {key: shape for key, shape in shapes_of(SD3Config(name="x", t5=None)).items()
              if not key.startswith("text_encoders.clip_g")}
    with pytest.raises(CheckpointError, match="holds text_encoders.clip_l without text_encoders.clip_g"):
        recognise_sd3(shapes)


def test_a_missing_tensor_is_named() -> None:
    shapes = dict(shapes_of(SD3Config(name="x", t5=None), parts=()))
    del shapes["model.diffusion_model.pos_embed"]
    with pytest.raises(CheckpointError, match="lacks model.diffusion_model.pos_embed"):
        recognise_sd3(shapes)


def test_other_families_are_not_sd3_and_sd3_is_not_them() -> None:
    for name in ("sd15", "sd21-v", "sdxl-base"):
        with torch.device("meta"):
            keys = build_without_weights(PRESETS[name]()).original_state_dict().keys()
        assert not is_sd3_layout(keys), name
    sd3 = shapes_of(dataclasses.replace(SD3Config(name="x"), t5=None), parts=())
    assert is_sd3_layout(sd3.keys())
    with pytest.raises(CheckpointError, match="an SD3 / SD3.5 model"):
        recognise(sd3)
