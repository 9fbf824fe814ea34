"""The VAE against diffusers' AutoencoderKL holding the same (random) weights, mapped by its LDM converter."""

import pytest
import torch

from diffx.models.attention import AttentionLayer, observe_attention
from diffx.models.configs import ModelConfig, sd15, shapes_world, tiny
from diffx.models.vae import AutoencoderKL, DiagonalGaussian
from tests.models.ldm_configs import reference_vae


def max_abs_diffs_to_diffusers(model_config: ModelConfig, image_size: int, seed: int = 0) -> dict[str, float]:
    """Build both VAEs with the same random weights; max |ours - theirs| of posterior, sample, KL, decode."""
    torch.manual_seed(seed)
    ours = AutoencoderKL(model_config.vae).eval()
    theirs = reference_vae(model_config, ours.state_dict())
    image = torch.rand(2, 3, image_size, image_size) * 2 - 1
    latent_size = image_size // model_config.vae.downsample_factor
    z = torch.randn(2, model_config.vae.embed_dim, latent_size, latent_size)
    with torch.inference_mode():
        posterior_ours = ours.encode(image)
        posterior_theirs = theirs.encode(image).latent_dist
        decoded_ours, decoded_theirs = ours.decode(z), theirs.decode(z).sample
        sample_ours = posterior_ours.sample(torch.Generator().manual_seed(7))
        sample_theirs = posterior_theirs.sample(torch.Generator().manual_seed(7))
        kl_ours, kl_theirs = posterior_ours.kl(), posterior_theirs.kl()
    assert posterior_ours.mean.shape == (2, model_config.vae.embed_dim, latent_size, latent_size)
    assert decoded_ours.shape == image.shape
    assert decoded_theirs.abs().max() > 1e-2 and posterior_theirs.mean.abs().max() > 1e-2  # not vacuous

    def diff(a: torch.Tensor, b: torch.Tensor) -> float:
        return (a - b).abs().max().item()

    return {
        "mean": diff(posterior_ours.mean, posterior_theirs.mean),
        "logvar": diff(posterior_ours.logvar, posterior_theirs.logvar),
        "sample": diff(sample_ours, sample_theirs),
        "kl_relative": diff(kl_ours, kl_theirs) / kl_theirs.abs().max().item(),  # a sum of C*H*W terms
        "decode": diff(decoded_ours, decoded_theirs),
    }


@pytest.mark.parametrize("make_config", [tiny, shapes_world], ids=lambda f: f.__name__)
def test_small_vaes_match_diffusers(make_config):
    diffs = max_abs_diffs_to_diffusers(make_config(), image_size=32)
    assert max(diffs.values()) <= 1e-5, diffs


@pytest.mark.slow
def test_sd15_vae_matches_diffusers():
    diffs = max_abs_diffs_to_diffusers(sd15(), image_size=64)
    print("SD1.5 VAE max abs diffs vs diffusers:", {k: f"{v:.3g}" for k, v in diffs.items()})
    assert max(diffs.values()) <= 1e-4, diffs


def test_posterior_clamps_logvar_and_reparameterises():
    mean = torch.zeros(1, 4, 2, 2)
    posterior = DiagonalGaussian(mean, torch.full_like(mean, 100.0))
    assert torch.all(posterior.logvar == 20.0)  # clamped as LDM, so exp() stays finite
    posterior = DiagonalGaussian(mean + 3.0, torch.full_like(mean, 2 * torch.log(torch.tensor(0.5))))
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(posterior.sample(torch.Generator().manual_seed(1)), 3.0 + 0.5 * noise)
    # KL(N(3, 0.25) || N(0, 1)) = 0.5 * (9 + 0.25 - 1 - log 0.25) per element, 16 elements
    expected_kl = 16 * 0.5 * (9 + 0.25 - 1 - torch.log(torch.tensor(0.25)))
    torch.testing.assert_close(posterior.kl(), expected_kl.reshape(1))


def test_mid_attention_goes_through_the_shared_attention():
    class Recorder:
        def __init__(self):
            self.seen: dict[str, tuple[int, ...]] = {}

        def wants(self, layer: AttentionLayer) -> bool:
            return True

        def observe(self, layer: AttentionLayer, probs: torch.Tensor) -> None:
            self.seen[layer.layer_name] = tuple(probs.shape)

    vae = AutoencoderKL(tiny().vae).eval()
    with torch.inference_mode(), observe_attention(Recorder()) as recorder:
        vae.decode(vae.encode(torch.zeros(1, 3, 16, 16)).mean)
    # single head over the 8x8 latent pixels
    assert recorder.seen == {"encoder.mid.attn_1": (1, 1, 64, 64), "decoder.mid.attn_1": (1, 1, 64, 64)}


def test_bf16_decode_stays_close_to_fp32():
    torch.manual_seed(0)
    vae = AutoencoderKL(tiny().vae).eval()
    z = torch.randn(1, 4, 8, 8)
    with torch.inference_mode():
        image_fp32 = vae.decode(z)
        image_bf16 = vae.to(torch.bfloat16).decode(z.bfloat16())
    assert image_bf16.dtype == torch.bfloat16
    assert ((image_bf16.float() - image_fp32).norm() / image_fp32.norm()) < 3e-2
