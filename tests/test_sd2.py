"""SD2.x end to end: a single file written from diffusers/transformers models, a diffusers folder, and a whole
v-prediction text-to-image run, against diffusers' StableDiffusionPipeline.

The models are random and small but SD2-shaped (OpenCLIP layout with a skipped last block and "!" padding,
64-wide U-Net heads, Linear proj_in/out, fp32 attention, v-prediction): SD2.1's full widths are covered by
tests/models/test_sd2_models.py; here each run must take seconds on 2 cores. The single file is written by
the *inverse* of diffusers' own LDM converters (`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`,
`convert_open_clip_checkpoint`; tests/models/inverse_conversion.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors.torch import save_file

from diffx.models.configs import ModelConfig, SchedulerConfig
from diffx.models.open_clip import OPEN_CLIP_PREFIX
from diffx.models.stable_diffusion import StableDiffusion, build_without_weights
from diffx.pipeline.generation import generate
from diffx.pipeline.settings import GenerationSettings
from diffx.weights.load import load_model
from tests.models import inverse_conversion
from tests.models.inverse_conversion import invert_converters, write_diffusers_folder
from tests.models.sd2_models import small_sd2
from tests.models.tokenizer_files import write_vocab_folder
from tests.pipeline.test_generation import PROMPT, SIZE, assert_same_image

# SD2's scheduler_config.json (stabilityai/stable-diffusion-2-1), for DDIM.
SD2_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                 "num_train_timesteps": 1000, "set_alpha_to_one": False, "steps_offset": 1, "clip_sample": False,
                 "prediction_type": "v_prediction", "timestep_spacing": "leading"}
# Its model_index.json, without the safety checker and feature extractor: the components `from_single_file` loads.
SD2_INDEX = {"_class_name": "StableDiffusionPipeline", "requires_safety_checker": False,
             **{name: [library, cls] for name, library, cls in (
                 ("unet", "diffusers", "UNet2DConditionModel"), ("vae", "diffusers", "AutoencoderKL"),
                 ("scheduler", "diffusers", "DDIMScheduler"), ("text_encoder", "transformers", "CLIPTextModel"),
                 ("tokenizer", "transformers", "CLIPTokenizer"), ("safety_checker", None, None),
                 ("feature_extractor", None, None), ("image_encoder", None, None))}}


def reference_models(config: ModelConfig, seed: int = 0) -> dict[str, torch.nn.Module]:
    """diffusers' U-Net and VAE and transformers' CLIPTextModel (as diffusers converts SD2's), random weights."""
    text = config.text_encoder
    return inverse_conversion.reference_models(config, lambda: {
        "text_encoder": transformers.CLIPTextModel(transformers.CLIPTextConfig(
            vocab_size=text.vocab_size, hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
            num_hidden_layers=text.num_hidden_layers - text.skipped_layers, hidden_act="gelu",
            num_attention_heads=text.num_attention_heads))}, seed)


def original_single_file(config: ModelConfig, models: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The diffusers models' tensors in SD2's single-file layout, by the inverse of diffusers' converters."""
    with torch.device("meta"):
        shapes = {key: t.shape for key, t in build_without_weights(config).original_state_dict().items()}
    width = config.text_encoder.hidden_size
    shapes[OPEN_CLIP_PREFIX + "text_projection"] = torch.Size([width, width])
    shapes[OPEN_CLIP_PREFIX + "logit_scale"] = torch.Size([])
    used = config.text_encoder.num_hidden_layers - config.text_encoder.skipped_layers
    # The converter leaves out SD2's unused block 23 by name; this smaller model's is block `used`.
    skipped = f"{OPEN_CLIP_PREFIX}transformer.resblocks.{used}."
    return invert_converters(shapes, models, {
        "unet": lambda template: convert_ldm_unet_checkpoint(template, dict(models["unet"].config)),
        "vae": lambda template: convert_ldm_vae_checkpoint(template, dict(models["vae"].config)),
        "text_encoder": lambda template: convert_open_clip_checkpoint(models["text_encoder"], {
            key: t for key, t in template.items() if not key.startswith(skipped)}),
    })


@pytest.fixture(scope="module")
def sd2_file(tmp_path_factory) -> tuple[Path, dict[str, torch.nn.Module], dict[str, torch.Tensor]]:
    config = small_sd2()
    models = reference_models(config)
    tensors = original_single_file(config, models)
    path = tmp_path_factory.mktemp("sd2") / "small-sd2.safetensors"
    save_file(tensors, path)
    return path, models, tensors


def test_single_file_from_diffusers_loads_and_matches(sd2_file):
    path, models, tensors = sd2_file
    notes = []
    model = load_model(path, note=notes.append)
    assert model.config == small_sd2()
    assert notes[0].startswith("small-sd2.safetensors: recognised SD2.x, non-standard size: U-Net 64 ch × (1, 2)")
    assert "assumed (not stored in the weights): 64-wide U-Net heads" in notes[0] and "768-v" in notes[0]
    assert notes[0].endswith("predicts v_prediction")
    loaded = model.original_state_dict()
    assert set(tensors) - set(loaded) == {OPEN_CLIP_PREFIX + "text_projection", OPEN_CLIP_PREFIX + "logit_scale"}
    assert all(torch.equal(loaded[key], tensors[key]) for key in loaded)
    assert model.tokenizer(["a cat"])[0, -1] == 0  # padded with "!"

    generator = torch.Generator().manual_seed(2)
    ids = model.tokenizer([PROMPT, ""])
    x, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([999, 10])
    image = torch.rand(1, 3, 16, 16, generator=generator) * 2 - 1
    with torch.inference_mode():
        context = model.text_encoder(ids)
        their_context = models["text_encoder"](input_ids=ids).last_hidden_state
        diffs = {
            "text encoder": (context - their_context).abs().max(),
            "U-Net": (model.unet(x, t, context) - models["unet"](x, t, encoder_hidden_states=context).sample
                      ).abs().max(),
            "VAE decode": (model.vae.decode(x[:1]) - models["vae"].decode(x[:1]).sample).abs().max(),
            "VAE encode": (model.vae.encode(image).mean - models["vae"].encode(image).latent_dist.mean).abs().max(),
        }
    print("SD2 single file vs diffusers:", {name: f"{float(d):.2e}" for name, d in diffs.items()})
    assert all(d <= 1e-4 for d in diffs.values()), diffs


def sd2_folder(folder: Path, models: dict[str, torch.nn.Module]) -> Path:
    return write_diffusers_folder(folder, models, {"tokenizer": "!"}, {"_class_name": "DDIMScheduler", **SD2_SCHEDULER},
                                  SD2_INDEX)


def test_diffusers_folder_loads_the_same_model(sd2_file, tmp_path):
    path, models, _ = sd2_file
    from_file = load_model(path)
    from_folder = load_model(sd2_folder(tmp_path / "sd2", models))
    config = from_folder.config
    assert (config.text_encoder.layout, config.text_encoder.num_hidden_layers, config.text_encoder.skipped_layers,
            config.text_encoder.pad_token) == ("open_clip", 2, 0, "!")  # diffusers dropped the unused block
    assert config.unet == from_file.config.unet and config.scheduler.prediction_type == "v_prediction"
    in_folder = from_folder.original_state_dict()
    assert all(torch.equal(tensor, in_folder[key]) for key, tensor in from_file.original_state_dict().items()
               if ".resblocks.2." not in key)
    ids = from_file.tokenizer([PROMPT])
    with torch.inference_mode():
        assert torch.equal(from_folder.text_encoder(ids), from_file.text_encoder(ids))


def diffusers_sd2_pipeline(models: dict[str, torch.nn.Module], tokenizer_folder: Path) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline(
        vae=models["vae"], text_encoder=models["text_encoder"], unet=models["unet"],
        tokenizer=transformers.CLIPTokenizer.from_pretrained(tokenizer_folder, model_max_length=77, pad_token="!"),
        scheduler=DDIMScheduler.from_config(SD2_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_v_prediction_text_to_image_matches_stable_diffusion_pipeline(sd2_file, tmp_path):
    """The file loaded by diffx vs diffusers' pipeline on the models it was written from: DDIM, v-prediction,
    CFG 7.5 with the empty negative prompt (padded with "!"), 4 steps, 32 px, the same seed."""
    path, models, _ = sd2_file
    model: StableDiffusion = load_model(path)
    settings = GenerationSettings(prompt=PROMPT, steps=4, guidance=7.5, sampler="ddim", height=SIZE, width=SIZE,
                                  seed=5)
    ours = generate(model, settings)
    pipe = diffusers_sd2_pipeline(models, write_vocab_folder(tmp_path / "tokenizer"))
    assert pipe.tokenizer.pad_token_id == 0
    theirs = pipe(prompt=PROMPT, num_inference_steps=4, guidance_scale=7.5, height=SIZE, width=SIZE,
                  generator=torch.Generator().manual_seed(5), output_type="np").images[0]
    assert_same_image(model, ours, theirs)
    diff = np.abs(ours.images[0] / 255.0 - theirs).max()
    print(f"SD2 v-prediction DDIM text-to-image: max |diffx - diffusers| = {diff:.2e} (uint8 vs float)")


@pytest.mark.filterwarnings("ignore:`prediction_type` is deprecated:FutureWarning")  # diffusers' own, for 1.0
def test_prediction_type_epsilon_loads_the_file_as_from_single_file_does(sd2_file, tmp_path):
    """`load_model(..., prediction_type="epsilon")` on the SD2-shaped file of no preset's size, which is recognised
    as 768-v (v) without a .yaml: ε, and, as for a .yaml saying so, 512-base's 64-latent size and attention not
    upcast to fp32. diffusers' `from_single_file(..., prediction_type="epsilon")` on the same file loads the same
    weights with a scheduler predicting ε, and draws the same picture (DDIM, CFG 7.5, 4 steps, the same seed) once
    its scheduler's β are SD's: with `prediction_type` and no LDM .yaml, its legacy scheduler path
    (`single_file_utils._legacy_load_scheduler`) sets beta_start 0.02 and beta_end 0.085."""
    path, models, _ = sd2_file
    notes = []
    model = load_model(path, prediction_type="Epsilon", note=notes.append)
    expected = small_sd2()
    assert model.config == replace(expected, unet=replace(expected.unet, upcast_attention=False),
                                   scheduler=SchedulerConfig(prediction_type="epsilon"), image_size=64 * 2)
    assert notes[0].endswith("; predicts epsilon (as given)") and "768-v" not in notes[0], notes
    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(sd2_folder(tmp_path / "sd2", models)), prediction_type="epsilon",
        local_files_only=True, safety_checker=None, requires_safety_checker=False)
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert all(torch.equal(tensor, models["unet"].state_dict()[key]) for key, tensor in pipe.unet.state_dict().items())
    assert (pipe.scheduler.config.beta_start, pipe.scheduler.config.beta_end) == (0.02, 0.085)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, beta_start=0.00085, beta_end=0.012)
    pipe.tokenizer.model_max_length = 77
    pipe.set_progress_bar_config(disable=True)
    settings = GenerationSettings(prompt=PROMPT, steps=4, guidance=7.5, sampler="ddim", height=SIZE, width=SIZE,
                                  seed=5)
    ours = generate(model, settings)
    theirs = pipe(prompt=PROMPT, num_inference_steps=4, guidance_scale=7.5, height=SIZE, width=SIZE,
                  generator=torch.Generator().manual_seed(5), output_type="np").images[0]
    assert_same_image(model, ours, theirs)
    # The override matters: the file as recognised (v) draws another picture.
    assert np.abs(generate(load_model(path), settings).images[0] / 255.0 - theirs).max() > 5 / 255
