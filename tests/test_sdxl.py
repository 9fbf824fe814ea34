"""SDXL base end to end: a single file written from diffusers/transformers models, a diffusers folder, and a whole
text-to-image run against diffusers' StableDiffusionXLPipeline.

The models are random and tiny but SDXL-shaped (`tests.models.sdxl_models.tiny_sdxl`: two text encoders read at
their penultimate blocks, bigG's projected pooled output, no attention at the top U-Net level, transformer depths
1 and 2, 64-wide heads, Linear projections, `label_emb` over pooled + six size ids, SDXL's VAE scaling factor):
SDXL's real widths are covered by tests/models/test_sdxl_models.py; here each run must take seconds on 2 cores.
The single file is written by the inverse of diffusers' own converters (`convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint`;
tests/models/inverse_conversion.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from diffusers import (
    DDIMScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
    infer_diffusers_model_type,
)
from safetensors.torch import save_file

from diffx.errors import CheckpointError
from diffx.models.configs import ModelConfig, sdxl_base
from diffx.models.sdxl import SDXL_PREFIX, micro_conditioning
from diffx.models.stable_diffusion import StableDiffusion, build_without_weights
from diffx.pipeline.generation import generate
from diffx.pipeline.inversion import invert
from diffx.pipeline.settings import GenerationSettings
from diffx.trace.tracer import TraceOptions, generate_traced
from diffx.weights.architecture import recognise
from diffx.weights.load import load_model
from tests.models import inverse_conversion
from tests.models.inverse_conversion import invert_converters, write_diffusers_folder
from tests.models.sdxl_models import tiny_sdxl
from tests.models.test_sdxl_models import clip_config
from tests.models.tokenizer_files import write_vocab_folder
from tests.pipeline.test_generation import PROMPT, SIZE, assert_same_image, box_mask, decoded_floats, random_picture

BIG_G = SDXL_PREFIX + "embedders.1.model."
# stabilityai/stable-diffusion-xl-base-1.0's scheduler_config.json (EulerDiscreteScheduler), read by DDIM here.
SDXL_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "num_train_timesteps": 1000, "set_alpha_to_one": False, "steps_offset": 1, "clip_sample": False,
                  "prediction_type": "epsilon", "timestep_spacing": "leading"}


def reference_models(config: ModelConfig, seed: int = 0) -> dict[str, torch.nn.Module]:
    """diffusers' U-Net and VAE and transformers' two text encoders, SDXL-shaped as `config`, random weights."""
    return inverse_conversion.reference_models(config, lambda: {
        "text_encoder": transformers.CLIPTextModel(clip_config(config.text_encoder, projection=False)),
        "text_encoder_2": transformers.CLIPTextModelWithProjection(clip_config(config.text_encoder_2,
                                                                               projection=True))}, seed)


def original_single_file(config: ModelConfig, models: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The diffusers models' tensors in SDXL's single-file layout, with bigG's `logit_scale` as real files have."""
    with torch.device("meta"):
        shapes = {key: t.shape for key, t in build_without_weights(config).original_state_dict().items()}
    shapes[BIG_G + "logit_scale"] = torch.Size([])
    return invert_converters(shapes, models, {
        "unet": lambda template: convert_ldm_unet_checkpoint(template, dict(models["unet"].config)),
        "vae": lambda template: convert_ldm_vae_checkpoint(template, dict(models["vae"].config)),
        "text_encoder": convert_ldm_clip_checkpoint,
        "text_encoder_2": lambda template: convert_open_clip_checkpoint(models["text_encoder_2"], template,
                                                                        prefix=BIG_G),
    })


@pytest.fixture(scope="module")
def sdxl_file(tmp_path_factory) -> tuple[Path, dict[str, torch.nn.Module], dict[str, torch.Tensor]]:
    models = reference_models(tiny_sdxl())
    tensors = original_single_file(tiny_sdxl(), models)
    save_file(tensors, path := tmp_path_factory.mktemp("sdxl") / "tiny-sdxl.safetensors")
    return path, models, tensors


def test_sdxl_base_preset_is_what_diffusers_calls_xl_base():
    with torch.device("meta"):
        tensors = build_without_weights(sdxl_base()).original_state_dict()
    assert infer_diffusers_model_type(tensors) == "xl_base"


def test_the_refiner_is_refused_in_one_line():
    keys = {"conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,),
            "model.diffusion_model.input_blocks.0.0.weight": (384, 4, 3, 3)}
    with pytest.raises(CheckpointError, match=r"^recognised SDXL refiner; diffx cannot run this family yet"):
        recognise(keys)


def test_single_file_from_diffusers_loads_and_matches(sdxl_file):
    path, models, tensors = sdxl_file
    notes = []
    model = load_model(path, note=notes.append)
    assert model.config == tiny_sdxl()
    assert notes[0].startswith("tiny-sdxl.safetensors: recognised SDXL base, non-standard size: U-Net 64 ch × "
                               "(1, 2, 2), 1 blocks/level, 4 in, attention at levels [1, 2], depth (0, 1, 2), "
                               "context 192; CLIP 64 wide × 2 layers + OpenCLIP 128 wide × 3 layers")
    assert "VAE scaling factor 0.13025" in notes[0]
    loaded = model.original_state_dict()
    assert set(tensors) - set(loaded) == {BIG_G + "logit_scale"}
    assert all(torch.equal(loaded[key], tensors[key]) for key in loaded)

    ids = model.tokenizer([PROMPT, ""])
    ids_2 = model.tokenizer.padded_with("!")([PROMPT, ""])
    generator = torch.Generator().manual_seed(2)
    x, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([999, 10])
    time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 2, dtype=torch.float32)
    with torch.inference_mode():
        context, pooled = model.text_encoder.encode(ids)
        theirs_l = models["text_encoder"](input_ids=ids, output_hidden_states=True).hidden_states[-2]
        theirs_g = models["text_encoder_2"](input_ids=ids_2, output_hidden_states=True)
        y = micro_conditioning(pooled, (SIZE, SIZE), (0, 0), (SIZE, SIZE))
        diffs = {
            "context": (context - torch.cat([theirs_l, theirs_g.hidden_states[-2]], dim=-1)).abs().max(),
            "pooled": (pooled - theirs_g.text_embeds).abs().max(),
            "U-Net": (model.unet(x, t, context, y) - models["unet"](
                x, t, encoder_hidden_states=context,
                added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample).abs().max(),
        }
    print("SDXL single file vs diffusers/transformers:", {name: f"{float(d):.2e}" for name, d in diffs.items()})
    assert all(d <= 1e-4 for d in diffs.values()), diffs


def sdxl_folder(folder: Path, models: dict[str, torch.nn.Module]) -> Path:
    return write_diffusers_folder(
        folder, models, {"tokenizer": None, "tokenizer_2": "!"},
        {"_class_name": "EulerDiscreteScheduler", **SDXL_SCHEDULER},
        {"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True})


def test_diffusers_folder_loads_the_same_model(sdxl_file, tmp_path):
    path, models, _ = sdxl_file
    from_file = load_model(path)
    from_folder = load_model(sdxl_folder(tmp_path / "sdxl", models))
    assert from_folder.config.text_encoder == from_file.config.text_encoder
    assert from_folder.config.text_encoder_2 == from_file.config.text_encoder_2
    assert from_folder.config.unet == from_file.config.unet
    assert from_folder.config.force_zeros_for_empty_prompt and from_folder.config.default_guidance == 5.0
    in_folder = from_folder.original_state_dict()
    assert all(torch.equal(tensor, in_folder[key]) for key, tensor in from_file.original_state_dict().items())


def diffusers_sdxl_pipeline(models: dict[str, torch.nn.Module], folder: Path) -> StableDiffusionXLPipeline:
    tokenizers = {name: transformers.CLIPTokenizer.from_pretrained(write_vocab_folder(folder / name),
                                                                   model_max_length=77, pad_token=pad)
                  for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!"))}
    pipe = StableDiffusionXLPipeline(**models, **tokenizers, scheduler=DDIMScheduler.from_config(SDXL_SCHEDULER),
                                     add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("negative_prompt", [None, "", "blurry"], ids=["none-zeros", "empty-encoded", "negative"])
def test_text_to_image_matches_stable_diffusion_xl_pipeline(sdxl_file, tmp_path, negative_prompt):
    """The file loaded by diffx vs diffusers' SDXL pipeline on the models it was written from: DDIM, CFG 5, 4 steps,
    32 px, the same seed; without a negative prompt (None: diffusers' `force_zeros_for_empty_prompt`, zeros for the
    unconditional context and pooled embedding), with "" given (encoded: diffusers 0.42's `encode_prompt` zeros
    only `negative_prompt is None`) and with a text (both encoders run on them)."""
    path, models, _ = sdxl_file
    model: StableDiffusion = load_model(path)
    settings = GenerationSettings(prompt=PROMPT, negative_prompt=negative_prompt, steps=4, guidance=5.0,
                                  sampler="ddim", height=SIZE, width=SIZE, seed=5)
    ours = generate(model, settings)
    pipe = diffusers_sdxl_pipeline(models, tmp_path)
    assert pipe.config.force_zeros_for_empty_prompt
    theirs = pipe(prompt=PROMPT, negative_prompt=negative_prompt, num_inference_steps=4, guidance_scale=5.0,
                  height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(5), output_type="np").images[0]
    assert_same_image(model, ours, theirs)
    diff = np.abs(decoded_floats(model, ours.latents) - theirs).max()
    print(f"SDXL DDIM text-to-image ({negative_prompt=}): max |diffx - diffusers| = {diff:.2e} (floats)")
    if not negative_prompt:  # zeros and the encoded "" give different pictures: each case tells them apart
        other = generate(model, replace(settings, negative_prompt="" if negative_prompt is None else None))
        assert np.abs(other.images[0] / 255.0 - theirs).max() > 5 / 255


@pytest.mark.parametrize("pipeline_class, strength", [(StableDiffusionXLImg2ImgPipeline, 0.6),
                                                      (StableDiffusionXLInpaintPipeline, 1.0),
                                                      (StableDiffusionXLInpaintPipeline, 0.6)],
                         ids=["img2img", "inpaint", "inpaint-0.6"])
def test_image_to_image_and_inpainting_match_diffusers_sdxl_pipelines(sdxl_file, tmp_path, pipeline_class, strength):
    """SDEdit and (latent-blending) inpainting on SDXL vs diffusers' SDXL img2img and inpaint pipelines (base: no
    aesthetic score; size ids from the picture): DDIM, CFG 5, the same seed — the VAE posterior sample, then the
    noise, as diffusers draws them."""
    path, models, _ = sdxl_file
    model: StableDiffusion = load_model(path)
    inpaint = pipeline_class is StableDiffusionXLInpaintPipeline
    picture, mask = random_picture(0), box_mask() if inpaint else None
    settings = GenerationSettings(prompt=PROMPT, steps=5, guidance=5.0, sampler="ddim", strength=strength,
                                  height=SIZE, width=SIZE, seed=3)
    ours = generate(model, settings, init_image=picture, mask=mask)
    text_to_image = diffusers_sdxl_pipeline(models, tmp_path)
    pipe = pipeline_class(**text_to_image.components, requires_aesthetics_score=False)
    pipe.set_progress_bar_config(disable=True)
    extra = {"mask_image": mask, "height": SIZE, "width": SIZE} if inpaint else {}
    theirs = pipe(prompt=PROMPT, image=picture, strength=strength, num_inference_steps=5, guidance_scale=5.0,
                  generator=torch.Generator().manual_seed(3), output_type="np", **extra).images[0]
    assert_same_image(model, ours, theirs)


def test_trace_records_cross_attention_of_every_transformer_block(sdxl_file):
    """Tracing works on SDXL: one cross-attention map per transformer block (depths 1 and 2 here, none at the top
    level), over the 77 tokens; the traced picture is the untraced one."""
    path, _, _ = sdxl_file
    model = load_model(path)
    settings = GenerationSettings(prompt=PROMPT, steps=2, guidance=5.0, sampler="ddim", height=SIZE, width=SIZE)
    traced = generate_traced(model, settings, options=TraceOptions(attention_detail="layers"))
    blocks = [name for name, module in model.unet.named_modules() if name.endswith("attn2")]
    assert len(blocks) == 1 * 1 + 1 * 2 + 2 + 2 * 1 + 2 * 2  # encoder, middle, decoder (depth 1 and 2 levels)
    trace = traced.traces[0]
    assert {layer["name"] for layer in trace.attention_layers} == set(blocks)
    assert trace.tensors["attention"].shape[:2] == (2, trace.tokens.num_tokens)
    assert np.array_equal(traced.images[0], generate(model, settings).images[0])


def test_ddim_inversion_climbs_with_the_size_conditioning(sdxl_file):
    """DDIM inversion climbs with the denoiser `generate` samples with, SDXL's pooled embedding and size ids
    included (without them the U-Net refuses to run), and with guidance its unconditional branch. Random weights
    give no smooth ODE, so only the shapes and that guidance changes the climb are checked here; the round trip's
    accuracy is measured on the embedded model (tests/pipeline/test_inversion.py)."""
    path, _, _ = sdxl_file
    model = load_model(path)
    picture = generate(model, GenerationSettings(prompt=PROMPT, steps=2, sampler="ddim", height=SIZE,
                                                 width=SIZE)).images[0]
    side = SIZE // model.config.vae.downsample_factor
    unguided = invert(model, picture, PROMPT, steps=3, guidance=1.0).x_T
    guided = invert(model, picture, PROMPT, steps=3, guidance=5.0).x_T
    assert unguided.shape == guided.shape == (1, 4, side, side)
    assert torch.isfinite(guided).all() and not torch.allclose(unguided, guided)
