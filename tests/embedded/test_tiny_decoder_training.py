"""Distilling the VAE decoder: the tiny decoder learns the map it is shown, `train_preview` checks everything before
any work, and the embedded model's shipped decoder draws what its VAE draws (PSNR on held-out runs)."""

import pytest
import torch

from diffx.embedded import tiny_decoder as distil
from diffx.embedded.tiny_decoder import PreviewTraining, fidelity, sampler_latents, train_tiny_decoder
from diffx.embedded.worlds import get_world
from diffx.errors import InvalidArgumentError, OutputPathError
from diffx.models.tiny_decoder import TinyDecoder, TinyDecoderConfig
from diffx.weights.load import load_model
from diffx.weights.tiny_decoder import TINY_DECODER_FILE

# The shipped decoder's PSNR against the VAE: 22.1 dB on train-preview's 12 held-out runs (its file's metadata),
# 24.1 dB on these two runs; an untrained or damaged decoder scores ~8 dB. The floor leaves a margin for float noise.
SHIPPED_PSNR_FLOOR_DB = 21.0


def test_the_decoder_learns_the_map_it_is_shown():
    """Pictures that are a fixed function of the latent (a colour per channel, 2x upsampled): training lifts the
    PSNR far above the untrained decoder's."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(64, 4, 6, 6, generator=generator)
    colours = torch.tensor([[0.8, -0.5, 0.2], [-0.3, 0.6, 0.1], [0.1, 0.2, -0.7], [0.4, 0.4, 0.4]])
    unit = torch.einsum("nchw,cr->nrhw", latents.tanh(), colours).clamp(-1, 1).repeat_interleave(2, -1) \
        .repeat_interleave(2, -2)
    pictures = ((unit + 1) * 127.5).round().to(torch.uint8)  # (64, 3, 12, 12)
    config = PreviewTraining(runs=1, steps=300, batch=16, crop=4, lr=1e-2, channels=(16,))
    torch.manual_seed(0)
    before = fidelity(TinyDecoder(TinyDecoderConfig(4, (16,))).eval(), latents, pictures)
    after = fidelity(train_tiny_decoder(latents, pictures, config), latents, pictures)
    assert after > before + 10, (before, after)


def test_sampler_latents_are_every_step_s_x0_with_the_vae_s_decode(tiny_model):
    latents, pictures = sampler_latents(tiny_model, get_world("shapes2"), runs=1, seed=0)
    assert latents.shape[0] == pictures.shape[0] == 25  # one run, 25 steps
    assert pictures.dtype == torch.uint8 and pictures.shape[-1] == 2 * latents.shape[-1]  # tiny()'s f2 VAE


def test_train_preview_checks_before_any_work(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(distil, "distil_preview_decoder", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(InvalidArgumentError, match="world"):
        distil.train_preview(tiny_model_dir, world="nowhere")
    (tiny_model_dir / TINY_DECODER_FILE).write_bytes(b"kept")
    try:
        with pytest.raises(OutputPathError, match="--force"):
            distil.train_preview(tiny_model_dir)
        assert (tiny_model_dir / TINY_DECODER_FILE).read_bytes() == b"kept"
    finally:
        (tiny_model_dir / TINY_DECODER_FILE).unlink()
    single = tmp_path / "model.safetensors"
    single.write_bytes((tiny_model_dir / "model.safetensors").read_bytes())
    with pytest.raises(InvalidArgumentError):
        distil.train_preview(single)
    with pytest.raises(InvalidArgumentError, match="steps"):
        PreviewTraining(steps=0)


def test_the_embedded_model_s_tiny_decoder_draws_what_its_vae_draws():
    model = load_model(None)
    assert model.tiny_decoder is not None, "data/shapes-world-2 has no tiny_decoder.safetensors"
    latents, pictures = sampler_latents(model, get_world("shapes2"), runs=2, seed=12345)
    assert fidelity(model.tiny_decoder, latents, pictures) >= SHIPPED_PSNR_FLOOR_DB


def test_widths_are_checked_against_the_model_s_vae_before_any_work(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(distil, "distil_preview_decoder", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(InvalidArgumentError, match="give 1 width for"):  # tiny()'s VAE is f2
        distil.train_preview(tiny_model_dir, config=PreviewTraining(channels=(8, 8)))
    with pytest.raises(InvalidArgumentError, match="widths must be"):
        PreviewTraining(channels=(0,))
