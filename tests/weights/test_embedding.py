"""Textual inversion: diffx's `load_embedding` against diffusers' `load_textual_inversion` on transformers' CLIP
holding the same random weights (an SD1.5-width text encoder of 2 blocks; a tiny SDXL's two encoders), and each
bad file refused in one line."""

from dataclasses import replace

import pytest
import torch
from diffusers.loaders import TextualInversionLoaderMixin
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

from diffx.errors import CheckpointError, InvalidArgumentError
from diffx.models.configs import TextEncoderConfig, tiny
from diffx.models.stable_diffusion import StableDiffusion, build
from diffx.weights.embedding import EmbeddingSpec, load_embedding, read_vectors
from tests.models.sdxl_models import tiny_sdxl
from tests.models.test_clip import random_text_encoder, reference_config
from tests.models.tokenizer_files import write_vocab_folder

SD15_TEXT = TextEncoderConfig(num_hidden_layers=2)  # SD1.5's CLIP ViT-L width, 2 of its 12 blocks


class _Loader(TextualInversionLoaderMixin):
    """The pipeline diffusers' loader expects: a tokenizer, a text encoder, nothing offloaded."""

    def __init__(self, tokenizer, text_encoder):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.components: dict = {}
        self.hf_device_map = None


def sd15_text_model() -> StableDiffusion:
    """A diffx model whose text encoder is SD1.5's width (2 blocks) with random weights, LayerNorms included."""
    torch.manual_seed(0)
    model = build(replace(tiny(), text_encoder=SD15_TEXT)).eval()
    model.text_encoder = random_text_encoder(SD15_TEXT)
    return model


@pytest.fixture(scope="module")
def vocab_folder(tmp_path_factory):
    return write_vocab_folder(tmp_path_factory.mktemp("tokenizer"))


@pytest.mark.parametrize("count", [1, 3])
def test_the_prompt_encodes_as_diffusers_load_textual_inversion_encodes_it(tmp_path, vocab_folder, count):
    vectors = torch.randn(count, 768, generator=torch.Generator().manual_seed(count))
    if count == 1:  # A1111's .pt: the word is given (the web UI's is the file name)
        path = tmp_path / "cat-toy.pt"
        torch.save({"string_to_param": {"*": vectors}, "name": "cat-toy"}, path)
    else:  # diffusers' learned_embeds: the word is the file's key
        path = tmp_path / "learned_embeds.safetensors"
        save_file({"<cat-toy>": vectors}, path)
    ours = sd15_text_model()
    theirs = CLIPTextModel(reference_config(SD15_TEXT)).eval()
    # transformers >= 5.6 keeps CLIPTextModel's modules at the top level; diffx's keep `text_model.`.
    theirs.load_state_dict({key.removeprefix("text_model."): v for key, v in ours.text_encoder.state_dict().items()})
    tokenizer = CLIPTokenizer(str(vocab_folder / "vocab.json"), str(vocab_folder / "merges.txt"))
    loader = _Loader(tokenizer, theirs)
    loader.load_textual_inversion(str(path), token="<cat-toy>")

    tokens = load_embedding(ours, path, "<cat-toy>" if count == 1 else None)

    assert tokens == ["<cat-toy>", *(f"<cat-toy>_{i}" for i in range(1, count))]
    prompt = "a photo of a <cat-toy> on a table"
    ids = ours.tokenizer([prompt])
    reference_ids = tokenizer(loader.maybe_convert_prompt(prompt, tokenizer), padding="max_length", max_length=77,
                              return_tensors="pt").input_ids
    assert ids.tolist() == reference_ids.tolist() and 49408 + count - 1 in ids[0].tolist()
    with torch.inference_mode():
        hidden = ours.text_encoder(ids)
        reference = theirs(input_ids=reference_ids).last_hidden_state
    print(f"{count}-vector embedding: max |diff| {(hidden - reference).abs().max():.2e}")
    torch.testing.assert_close(hidden, reference, atol=1e-5, rtol=0)


def test_an_sdxl_embedding_grows_both_encoders_and_the_pooled_output_stays_at_the_end_token(tmp_path):
    torch.manual_seed(0)
    model = build(tiny_sdxl()).eval()
    widths = [model.config.text_encoder.hidden_size, model.config.text_encoder_2.hidden_size]
    clip_l, clip_g = torch.randn(2, widths[0]), torch.randn(2, widths[1])
    save_file({"clip_l": clip_l, "clip_g": clip_g}, tmp_path / "style.safetensors")
    with torch.inference_mode():
        plain = model.text_encoder.encode(model.tokenizer(["a cat"]))[1]

    assert load_embedding(model, tmp_path / "style.safetensors") == ["<style>", "<style>_1"]

    ids = model.tokenizer(["a cat <style>"])
    first, second = (e.weight for e in (model.text_encoder.embedders[0].transformer.text_model.embeddings
                                        .token_embedding, model.text_encoder.embedders[1].model.token_embedding))
    assert torch.equal(first[ids[0, 3:5]], clip_l) and torch.equal(second[ids[0, 3:5]], clip_g)
    with torch.inference_mode():
        pooled = model.text_encoder.encode(model.tokenizer(["a cat", "a cat <style>", "a cat <style> red"]))[1]
    torch.testing.assert_close(pooled[0], plain[0])  # the old words read as before
    # The pooled feature is the end token's: taken at the largest id (`<style>_1`, as open_clip's argmax would),
    # the causal encoder's feature there could not see the word after it.
    assert not torch.allclose(pooled[1], pooled[2])


def test_diffx_tokens_shows_the_new_tokens(tmp_path):
    from typer.testing import CliRunner

    from diffx.cli import app

    torch.save({"string_to_param": {"*": torch.randn(2, 768)}, "name": "x"}, tmp_path / "toy.pt")
    result = CliRunner().invoke(app, ["tokens", "a <toy> cat", "--embedding", str(tmp_path / "toy.pt")])
    assert result.exit_code == 0, result.output
    assert "<toy>_1" in result.output and "49409" in result.output


def bad_files(tmp_path):
    """(file, refusal) pairs: each a wrong embedding, refused before the model changes."""
    save_file({"emb_params": torch.randn(1, 1024)}, tmp_path / "sd2.safetensors")  # SD2's width on SD1.5
    save_file({"emb_params": torch.full((1, 768), float("nan"))}, tmp_path / "nan.safetensors")
    save_file({"emb_params": torch.zeros(0, 768)}, tmp_path / "empty.safetensors")
    save_file({"a": torch.randn(768), "b": torch.randn(768)}, tmp_path / "two.safetensors")
    save_file({"cat</w>": torch.randn(768)}, tmp_path / "known.safetensors")  # a token the vocabulary has
    return [("sd2.safetensors", "width 1024"), ("nan.safetensors", "NaN"), ("empty.safetensors", "empty"),
            ("two.safetensors", "not a textual inversion"), ("known.safetensors", "already in the tokenizer")]


def test_a_wrong_embedding_is_refused_in_one_line_and_the_model_is_unchanged(tmp_path):
    model = sd15_text_model()
    table = model.text_encoder.text_model.embeddings.token_embedding
    for name, refusal in bad_files(tmp_path):
        with pytest.raises(CheckpointError, match=refusal) as error:
            load_embedding(model, tmp_path / name)
        assert "\n" not in str(error.value) and len(str(error.value)) <= 300
    assert table.weight.shape == (49408, 768) and not model.tokenizer.added


def test_specs_parse_the_token_and_refuse_bad_ones(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"")
    assert EmbeddingSpec.parse(f"{tmp_path / 'x.pt'}:<mine>") == EmbeddingSpec(tmp_path / "x.pt", "<mine>")
    assert EmbeddingSpec.parse(str(tmp_path / "x.pt")).token is None
    for text in [f"{tmp_path / 'x.pt'}:a b", str(tmp_path / "x.png"), str(tmp_path / "missing.pt")]:
        with pytest.raises(InvalidArgumentError):
            EmbeddingSpec.parse(text)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        read_vectors(EmbeddingSpec(tmp_path / "x.pt"))


def test_denoise_takes_embeddings_and_names_each_in_a_note(tmp_path, monkeypatch, tiny_model_dir):
    from typer.testing import CliRunner

    from diffx.cli import app

    monkeypatch.chdir(tmp_path)
    save_file({"emb_params": torch.randn(2, 32)}, tmp_path / "style.safetensors")  # the tiny model's width
    args = ["denoise", "--prompt", "a <s> circle", "--steps", "2", "--size", "32", "--device", "cpu", "--model",
            str(tiny_model_dir), "--embedding", "style.safetensors:<s>"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "embedding style.safetensors: <s> reads as <s> <s>_1" in result.output
    result = CliRunner().invoke(app, [*args, "--embedding", "style.safetensors:<s>", "--out", "again.png"])
    assert result.exit_code == 2 and "already in the tokenizer" in result.output  # the same word twice


def test_an_sdxl_embedding_encodes_as_diffusers_load_textual_inversion_encodes_it(tmp_path):
    from diffx.weights.load import load_model
    from tests.test_sdxl import diffusers_sdxl_pipeline, original_single_file, reference_models

    models = reference_models(tiny_sdxl())
    save_file(original_single_file(tiny_sdxl(), models), tmp_path / "sdxl.safetensors")
    ours = load_model(tmp_path / "sdxl.safetensors")
    generator = torch.Generator().manual_seed(3)
    clip_l, clip_g = (torch.randn(3, width, generator=generator) for width in (64, 128))  # tiny SDXL's widths
    save_file({"clip_l": clip_l, "clip_g": clip_g}, tmp_path / "style.safetensors")
    pipe = diffusers_sdxl_pipeline(models, tmp_path)
    pipe.load_textual_inversion(clip_l, token="<style>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(clip_g, token="<style>", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)

    # SDXL's bigG config says eos_token_id 2, so transformers pools at the largest id: an added token's, not the end
    # token's (transformers#24650, diffusers#10754). diffx pools at the end token; so does transformers told the id.
    for module in pipe.text_encoder_2.modules():
        if hasattr(module, "eos_token_id"):
            module.eos_token_id = 49407

    load_embedding(ours, tmp_path / "style.safetensors")

    prompt = "a <style> cat on a table"
    with torch.inference_mode():
        context, pooled = ours.text_encoder.encode(ours.tokenizer([prompt]))
        reference, _, reference_pooled, _ = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1,
                                                               do_classifier_free_guidance=False)
    diffs = [(context - reference).abs().max().item(), (pooled - reference_pooled).abs().max().item()]
    print(f"SDXL 3-vector embedding: context max |diff| {diffs[0]:.2e}, pooled {diffs[1]:.2e}")
    assert max(diffs) <= 1e-5
