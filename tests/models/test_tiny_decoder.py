"""The tiny preview decoder's shape contract and its config as file metadata."""

import pytest
import torch

from diffx.models.tiny_decoder import TinyDecoder, TinyDecoderConfig, check_tiny_decoder


def test_an_f8_decoder_maps_a_latent_to_a_picture_eight_times_larger():
    decoder = TinyDecoder(TinyDecoderConfig(4, (16, 12, 8))).eval()
    with torch.no_grad():
        picture = decoder(torch.randn(2, 4, 16, 12))
    assert picture.shape == (2, 3, 128, 96)
    assert decoder.config.downsample_factor == 8


def test_the_soft_clamp_bounds_what_a_wild_early_latent_does():
    """x̂0 of the first steps can be far out of range: the input is squashed to ±3 first, so a latent of 1e6
    decodes to the same picture as one of 1e3."""
    torch.manual_seed(0)
    decoder = TinyDecoder(TinyDecoderConfig(4, (8, 8))).eval()
    z = torch.randn(1, 4, 4, 4).sign()
    with torch.no_grad():
        assert torch.allclose(decoder(z * 1e3), decoder(z * 1e6))


def test_the_config_round_trips_through_metadata_and_bad_metadata_is_refused():
    config = TinyDecoderConfig(4, (64, 48, 32))
    assert TinyDecoderConfig.from_metadata(config.as_metadata()) == config
    for bad in ({"channels": "64,x", "latent_channels": "4"}, {"channels": "", "latent_channels": "4"},
                {"channels": "64,0", "latent_channels": "4"}, {"latent_channels": "4"}):
        with pytest.raises((ValueError, KeyError)):
            TinyDecoderConfig.from_metadata(bad)


def test_a_decoder_for_another_vae_is_refused():
    check_tiny_decoder(TinyDecoderConfig(4, (8, 8, 8)), 4, 8)
    with pytest.raises(ValueError, match="×4"):
        check_tiny_decoder(TinyDecoderConfig(4, (8, 8)), 4, 8)
    with pytest.raises(ValueError, match="16-channel"):
        check_tiny_decoder(TinyDecoderConfig(16, (8, 8, 8)), 4, 8)
