"""`diffx finetune` (issue #37): a few steps of LoRA and textual inversion on the embedded model, the files they
write read back by diffx (`--lora`, `--embedding`, `diffx lora`) and the LoRA by diffusers' `load_lora_weights`,
whose picture equals diffx's within 1/255."""

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from diffx.cli import app
from diffx.embedded.concept import WorldConcept, held_out_prompts, parse_concept, training_examples
from diffx.embedded.finetune import FinetuneConfig, finetune
from diffx.embedded.finetune_files import save_result
from diffx.errors import InputImageError
from diffx.paths import EMBEDDED_MODEL_DIR
from diffx.pipeline.generation import generate
from diffx.pipeline.settings import GenerationSettings
from diffx.weights.embedding import load_embedding
from diffx.weights.load import load_model
from diffx.weights.lora_apply import apply_lora
from diffx.weights.lora_inspect import inspect_lora
from tests.pipeline.test_generation import (
    TOLERANCE,
    decoded_floats,
    diffusers_pipeline,
    tokenizer_folder,  # noqa: F401 (a fixture)
)

CONCEPT = "world:pink dotted hexagon"
PROMPT = "a <zig> above a blue square on a white background"


def few_steps(method: str, **options) -> FinetuneConfig:
    return FinetuneConfig(CONCEPT, method=method, steps=4, batch=2, pictures=4, **options)


@pytest.fixture(scope="module")
def trained_lora(tmp_path_factory):
    """The embedded model after 4 LoRA steps at 2.5x the default learning rate (an update large enough to see),
    and its file."""
    model = load_model(EMBEDDED_MODEL_DIR)
    result = finetune(model, few_steps("lora", lr=0.005))
    path = save_result(result, model, tmp_path_factory.mktemp("lora") / "zig.safetensors")
    return model, result, path


def test_world_concept_captions_name_it_by_the_token_only():
    concept = parse_concept(CONCEPT)
    assert concept == WorldConcept("hexagon", "pink", "dotted")
    pictures, captions = training_examples(concept, "<zig>", 6, seed=0, size=32)
    assert pictures.shape == (6, 3, 32, 32) and pictures.min() >= -1 and pictures.max() <= 1
    assert all("<zig>" in caption and "hexagon" not in caption.split("<zig>")[0][-12:] for caption in captions)
    held_out = held_out_prompts(concept, "<zig>", 5)
    assert all(prompt.replace("<zig>", "pink dotted hexagon") == words for prompt, words in held_out)


def test_a_folder_concept_is_its_pictures_resized_and_captioned_by_the_token(tmp_path):
    Image.new("RGB", (40, 30), (200, 40, 40)).save(tmp_path / "one.png")
    Image.new("RGB", (64, 64), (40, 40, 200)).save(tmp_path / "two.JPG")
    (tmp_path / "notes.txt").write_text("not a picture")
    concept = parse_concept(str(tmp_path))
    pictures, captions = training_examples(concept, "<zig>", 64, seed=0, size=32)
    assert pictures.shape == (2, 3, 32, 32) and captions == ["a <zig>", "a <zig>"]
    (tmp_path / "three.png").write_bytes(b"not a png")
    with pytest.raises(InputImageError):
        parse_concept(str(tmp_path))


def test_lora_file_is_kohya_and_diffx_reads_it_back(trained_lora):
    model, result, path = trained_lora
    with safe_open(path, framework="pt") as file:
        keys, metadata = set(file.keys()), file.metadata()
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight" in keys
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha" in keys
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_module"] == "networks.lora"
    report = inspect_lora(path, model)
    assert report.trigger_words[0][0] == "<zig>"
    fresh = load_model(EMBEDDED_MODEL_DIR)
    apply_lora(fresh, path)
    settings = GenerationSettings(prompt=PROMPT, steps=4, seed=1)
    trained, loaded = generate(model, settings), generate(fresh, settings)
    assert np.array_equal(trained.images[0], loaded.images[0])  # what was trained is what is loaded
    with result.base(model):
        base = generate(model, settings)
    assert np.abs(base.images[0].astype(int) - trained.images[0]).max() > 0  # the LoRA changed the picture


def test_diffusers_loads_the_lora_and_draws_diffx_picture(trained_lora, tokenizer_folder):  # noqa: F811
    """diffusers' pipeline built from the same base weights, `load_lora_weights` on the kohya file: its picture
    equals diffx's `--lora` one within 1/255 (DDIM, 6 steps, guidance 3, the model's zero-SNR v schedule), and
    the adapted U-Net's and text encoder's outputs are diffx's exactly."""
    model, result, path = trained_lora
    pipe = diffusers_pipeline(model, tokenizer_folder)
    pipe.load_lora_weights(str(path))
    pipe.unet.to(memory_format=torch.channels_last)  # as diffx holds convolution weights on the CPU
    ids = model.tokenizer([PROMPT, ""])
    x, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3)), torch.tensor([999, 500])
    with torch.no_grad():
        context = model.text_encoder(ids)
        assert torch.equal(context, pipe.text_encoder(ids)[0])
        assert torch.equal(model.unet(x, t, context), pipe.unet(x, t, encoder_hidden_states=context).sample)
    scheduler = dataclasses.asdict(model.config.scheduler)
    pipe.scheduler = DDIMScheduler(**{key: scheduler[key] for key in (
        "num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "timestep_spacing", "steps_offset",
        "prediction_type", "rescale_betas_zero_snr")}, clip_sample=False, set_alpha_to_one=False)
    size = model.config.image_size
    theirs = pipe(PROMPT, num_inference_steps=6, guidance_scale=3.0, height=size, width=size, output_type="np",
                  generator=torch.Generator().manual_seed(2)).images[0]
    ours = generate(model, GenerationSettings(prompt=PROMPT, steps=6, guidance=3.0, sampler="ddim", seed=2))
    pipe.unload_lora_weights()
    plain = pipe(PROMPT, num_inference_steps=6, guidance_scale=3.0, height=size, width=size, output_type="np",
                 generator=torch.Generator().manual_seed(2)).images[0]
    diff = np.abs(decoded_floats(model, ours.latents) - theirs).max()
    print(f"diffx --lora vs diffusers load_lora_weights: max |diff| {diff:.2e}; "
          f"the LoRA moves diffusers' picture by {np.abs(theirs - plain).max():.3f}")
    assert np.abs(theirs - plain).max() > 0.01  # the LoRA loaded, and matters
    assert diff <= TOLERANCE


def test_textual_inversion_writes_an_a1111_embedding_that_loads(tmp_path):
    model = load_model(EMBEDDED_MODEL_DIR)
    result = finetune(model, few_steps("textual-inversion"))
    path = save_result(result, model, tmp_path / "zig.safetensors")
    with safe_open(path, framework="pt") as file:
        vectors = file.get_tensor("emb_params")
    assert vectors.shape == (1, 64) and torch.equal(vectors, result.embedding.vectors[0])
    fresh = load_model(EMBEDDED_MODEL_DIR)
    assert load_embedding(fresh, path) == ["<zig>"]  # the word is the file's stem
    settings = GenerationSettings(prompt=PROMPT, steps=3, seed=1)
    assert np.array_equal(generate(model, settings).images[0], generate(fresh, settings).images[0])


def test_cli_finetune_writes_the_file_and_its_pictures(tmp_path, monkeypatch):
    """On the embedded model, kept quick: 4 training scenes, one prompt in the before/after grid."""
    monkeypatch.setattr("diffx.embedded.finetune_files.PICTURE_PROMPTS", 1)
    monkeypatch.setattr("diffx.embedded.finetune.training_examples",
                        lambda concept, token, count, seed, size: training_examples(concept, token, 4, seed, size))
    out = tmp_path / "zig.safetensors"
    result = CliRunner().invoke(app, ["finetune", "--concept", CONCEPT, "--steps", "2", "--judge", "0",
                                      "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and all((tmp_path / f"zig_{name}.png").is_file() for name in ("loss", "before_after",
                                                                                        "attention"))
    again = CliRunner().invoke(app, ["finetune", "--concept", CONCEPT, "--steps", "2", "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.stderr
