"""The architecture read from a checkpoint's tensors (`diffx.architecture`): every preset, non-standard
SD1.x sizes, the families diffx recognises but does not run, and files that fit nothing.

Independent witnesses: diffusers' `infer_diffusers_model_type` names the same family from the same keys,
and diffusers' LDM converter plus a strict `UNet2DConditionModel(**config)` load accept the inferred
configuration for a size no preset has.
"""

import dataclasses

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, infer_diffusers_model_type
from safetensors.torch import save_file
from typer.testing import CliRunner

from diffx.cli import app
from diffx.errors import CheckpointError
from diffx.models.configs import PRESETS, ModelConfig, TextEncoderConfig, UNetConfig, VAEConfig, tiny
from diffx.models.stable_diffusion import build, build_without_weights
from diffx.weights.architecture import recognise
from diffx.weights.load import load_model
from tests.models.ldm_configs import diffusers_unet_config

UNET = "model.diffusion_model."


def shapes_of(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    return {key: tuple(t.shape) for key, t in build_without_weights(config).original_state_dict().items()}


def write_single_file(config: ModelConfig, path, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    tensors = {key: t.detach().contiguous() for key, t in build(config).original_state_dict().items()}
    save_file(tensors, path)
    return tensors


def odd_size() -> ModelConfig:
    """An SD1.x-family model of a size no preset has, with the conventions the weights cannot show (8 heads
    in the U-Net, 64-wide CLIP heads, 32 groups) so that inference must give back exactly this config."""
    return ModelConfig(
        name="sd1-inferred",
        text_encoder=TextEncoderConfig(vocab_size=1000, max_position_embeddings=77, hidden_size=128,
                                       intermediate_size=256, num_hidden_layers=3, num_attention_heads=2),
        unet=UNetConfig(model_channels=64, channel_mult=(1, 2, 3), num_res_blocks=2, attention_levels=(1, 2),
                        num_heads=8, transformer_depth=2, context_dim=128, norm_num_groups=32),
        vae=VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=4, norm_num_groups=32),
        image_size=128)


PRESET_FAMILIES = {"sd21-v": "SD2.x", "sd21-base": "SD2.x", "sd2-inpainting": "SD2.x inpainting",
                   "sdxl-base": "SDXL base"}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_is_recognised_from_its_shapes(preset):
    """Full-size presets on the meta device (shapes only, no memory). SD2's 512-base and 768-v have the same
    tensors: what an LDM .yaml beside the file says (v or not) tells them apart."""
    config = PRESETS[preset]()
    hint = config.scheduler.prediction_type == "v_prediction" if preset.startswith("sd21") else None
    recognised = recognise(shapes_of(config), hint)
    family = PRESET_FAMILIES.get(preset, "SD1.x")
    assert (recognised.family, recognised.preset, recognised.config) == (family, preset, config)
    assert recognised.summary() == f"{family} (the {preset} preset)"


def test_sd15_is_what_diffusers_calls_v1_and_inpainting():
    assert infer_diffusers_model_type(shapes_as_tensors(PRESETS["sd15"]())) == "v1"
    assert infer_diffusers_model_type(shapes_as_tensors(PRESETS["sd15-inpainting"]())) == "inpainting"


def shapes_as_tensors(config: ModelConfig) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return build(config).original_state_dict()


def test_a_non_standard_size_loads_from_a_single_file(tmp_path):
    config = odd_size()
    tensors = write_single_file(config, tmp_path / "odd.safetensors")
    notes = []
    model = load_model(tmp_path / "odd.safetensors", note=notes.append)
    assert model.config == config
    assert all(torch.equal(model.original_state_dict()[key], tensor) for key, tensor in tensors.items())
    assert notes == ["odd.safetensors: recognised SD1.x, non-standard size: U-Net 64 ch × (1, 2, 3), 2 blocks/level, "
                     "4 in, attention at levels [1, 2], depth 2, context 128; CLIP 128 wide × 3 layers; VAE f2, 32 ch, "
                     "4 latent channels; assumed (not stored in the weights): 8 U-Net heads, 32 U-Net groups, "
                     "2 CLIP heads, 32 VAE groups; the U-Net's one set of weights (the file has no EMA copy); "
                     "predicts epsilon"]


def test_diffusers_converter_accepts_the_inferred_unet():
    """diffusers' LDM → diffusers converter, driven by the inferred config, fills a UNet2DConditionModel exactly."""
    truth = odd_size()
    truth.unet = dataclasses.replace(truth.unet, in_channels=9)  # an inpainting U-Net of that size
    original = shapes_as_tensors(truth)
    recognised = recognise({key: tuple(t.shape) for key, t in original.items()})
    assert recognised.config.unet == truth.unet and recognised.config.name == "sd1-inpainting-inferred"
    unet_config = diffusers_unet_config(recognised.config, original)
    with torch.device("meta"):
        reference = UNet2DConditionModel(**unet_config)
    converted = convert_ldm_unet_checkpoint(original, unet_config)
    expected = {key: tuple(t.shape) for key, t in reference.state_dict().items()}
    assert {key: tuple(t.shape) for key, t in converted.items()} == expected


@pytest.mark.parametrize("keys, family, diffusers_type", [
    ({"conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,),
      UNET + "input_blocks.0.0.weight": (384, 4, 3, 3)}, "SDXL refiner", "xl_refiner"),
    ({"cond_stage_model.model.ln_final.weight": (1024,), UNET + "input_blocks.0.0.weight": (320, 7, 3, 3),
      UNET + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024)}, "SD2.x x4 upscaler", "v2"),
])
def test_other_families_are_recognised_and_refused_in_one_line(tmp_path, keys, family, diffusers_type):
    tensors = {key: torch.zeros(shape) for key, shape in keys.items()}
    assert infer_diffusers_model_type(tensors) == diffusers_type  # diffusers reads the same family
    with pytest.raises(CheckpointError, match=f"^recognised {family.replace('(', '.').replace(')', '.')}; diffx "
                                              "cannot run this family yet"):
        recognise({key: tuple(shape) for key, shape in keys.items()})
    path = tmp_path / "other.safetensors"
    save_file(tensors, path)
    result = CliRunner().invoke(app, ["denoise", "--model", str(path), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: recognised {family}; diffx cannot run")
    assert not (tmp_path / "x.png").exists()


def test_an_sd1_file_that_fits_no_configuration_names_the_closest_and_what_did_not_fit():
    shapes = shapes_of(tiny())
    broken = {**shapes, UNET + "input_blocks.1.1.proj_out.weight": (32, 32, 3, 3)}  # a 3x3 proj_out
    with pytest.raises(CheckpointError, match=r"looks like SD1.x \(closest: SD1.x, non-standard size: U-Net 32 ch .*\)"
                                              r" but did not fit: 1 mis-shaped \(model.diffusion_model.input_blocks.1"
                                              r".1.proj_out.weight \(32, 32, 3, 3\) != \(32, 32, 1, 1\)\)"):
        recognise(broken)
    uneven = {key: shape for key, shape in shapes.items() if not key.startswith(UNET + "input_blocks.3.")}
    with pytest.raises(CheckpointError, match=r"did not fit: the U-Net's levels have \[1, 0\] residual blocks"):
        recognise(uneven)
    no_vae = {key: shape for key, shape in shapes.items() if not key.startswith("first_stage_model.")}
    with pytest.raises(CheckpointError, match=r"did not fit: the VAE encoder's conv_in .* is missing"):
        recognise(no_vae)


def test_models_column_says_what_each_file_is(tmp_path):
    """`describe_architecture` reads only shapes (a .safetensors header, a .ckpt's memory map)."""
    from diffx.views.tables import models_table
    from diffx.weights.discovery import ModelSource
    from diffx.weights.load import describe_architecture, read_shapes
    from tests.views.test_tables import _render

    tensors = write_single_file(tiny(), tmp_path / "tiny.safetensors")
    assert read_shapes(tmp_path / "tiny.safetensors") == {key: tuple(t.shape) for key, t in tensors.items()}
    torch.save({"state_dict": {key: torch.zeros(shape, dtype=torch.float16) for key, shape in
                               shapes_of(odd_size()).items()}}, tmp_path / "odd.ckpt")
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(2)}, tmp_path / "xl.safetensors")
    sources = [ModelSource(tmp_path / name, "single-file", "checkpoint file")
               for name in ("tiny.safetensors", "odd.ckpt", "xl.safetensors")]
    described = [describe_architecture(source) for source in sources]
    assert described[0] == "SD1.x (the tiny preset)"
    assert described[1].startswith("SD1.x, non-standard size: U-Net 64 ch × (1, 2, 3)")
    assert described[2] == ("looks like SDXL base but did not fit: the U-Net's conv_in "
                            "(model.diffusion_model.input_blocks.0.0.weight) is missing")
    text = _render(models_table(sources, described))
    assert "architecture" in text and "the tiny preset" in text
