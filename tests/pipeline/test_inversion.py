"""DDIM inversion against diffusers' DDIMInverseScheduler step for step, the round trip where theory
says it is exact or converges, inversion files, and bad input.

The parity runs diffusers' inversion loop (as its StableDiffusionDiffEditPipeline.invert does: the U-Net
at each timestep of the inverse scheduler's grid, then `step`) on the same ε-model diffx uses: a tiny
random-weight U-Net behind diffx's classifier-free-guidance denoiser, on an 8×8 latent.
"""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler

from diffx.errors import InvalidArgumentError, OutputPathError
from diffx.models.configs import tiny
from diffx.models.stable_diffusion import build
from diffx.pipeline.conditioning import encode_text, tokenize
from diffx.pipeline.denoiser import make_denoiser
from diffx.pipeline.inversion import (
    PSNR_CAP,
    check_sweep,
    invert,
    load_inversion,
    psnr,
    reconstruct,
    round_trip,
    save_inversion,
)
from diffx.sampling.ddim_inversion import invert_ddim
from diffx.sampling.grids import GridSpec, sampling_grid
from diffx.sampling.samplers import StepRecord, sample_ddim
from diffx.sampling.schedules import NoiseSchedule

SD15 = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "set_alpha_to_one": False, "clip_sample": False}
TOLERANCE = 1e-5
SIDE = 16  # pixels: the tiny VAE halves it, an 8×8 latent


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build(tiny()).eval()


@pytest.fixture(scope="module")
def picture():
    """A 16×16 RGB picture with structure (a gradient and a square), uint8."""
    ramp = np.linspace(0, 255, SIDE, dtype=np.float32)
    image = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (SIDE, 1)), np.full((SIDE, SIDE), 90.0)], -1)
    image[4:10, 5:11] = (230, 25, 25)
    return image.astype(np.uint8)


def diffusers_inversion(eps_model, latent, steps, spacing):
    """diffusers' loop: (timesteps, records, x_T) with DDIMInverseScheduler from SD1.5's config."""
    scheduler = DDIMInverseScheduler.from_config(
        dict(SD15, timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0))
    scheduler.set_timesteps(steps)
    records, x = [], latent
    for t in scheduler.timesteps:
        eps = eps_model(x, torch.tensor(float(t)))
        out = scheduler.step(eps, int(t), x)
        records.append({"x": x, "eps_pred": eps, "x0_pred": out.pred_original_sample, "x_next": out.prev_sample})
        x = out.prev_sample
    return [int(t) for t in scheduler.timesteps], records, x


@pytest.mark.parametrize(("spacing", "guidance", "steps"), [("leading", 1.0, 10), ("trailing", 3.0, 7)])
def test_matches_diffusers_inverse_scheduler(model, picture, spacing, guidance, steps):
    records: list[StepRecord] = []
    inversion = invert(model, picture, "a red square", steps, guidance, negative_prompt="blurry", spacing=spacing,
                       progress=records.append)
    denoiser = make_denoiser(model, encode_text(model, [tokenize(model, "a red square")]),
                             encode_text(model, [tokenize(model, "blurry")]) if guidance != 1 else None, guidance)
    with torch.no_grad():
        timesteps, reference, x_T = diffusers_inversion(denoiser, inversion.latent, steps, spacing)

    assert [int(r.timestep) for r in records] == timesteps == inversion.timesteps
    worst = 0.0
    for record, expected in zip(records, reference, strict=True):
        for name, value in expected.items():
            worst = max(worst, (getattr(record, name) - value).abs().max().item())
    worst = max(worst, (inversion.x_T - x_T).abs().max().item())
    assert worst <= TOLERANCE, f"max abs diff {worst:.2e}"
    # The trajectory is z_0 then every state; the records chain.
    assert torch.equal(inversion.trajectory[0], inversion.latent[0])
    assert torch.equal(inversion.trajectory[-1], inversion.x_T[0])
    for record, following in zip(records, records[1:], strict=False):
        assert torch.equal(record.x_next, following.state)
    assert [r.index for r in records] == list(range(steps)) and records[0].num_steps == steps


def test_round_trip_exact_when_eps_ignores_x():
    """Theory: the inverse step uses ε_θ(x_{t'}, t) for ε_θ(x_t, t); when ε does not depend on x they are the
    same and the round trip is exact, at any step count."""
    schedule = NoiseSchedule.create("scaled_linear")
    pattern = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))

    def eps_of_t(x, t):
        return pattern * torch.cos(t / 1000)

    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    grid = sampling_grid(GridSpec("ddim", 10), schedule)
    back = sample_ddim(eps_of_t, invert_ddim(eps_of_t, z0, grid), grid)
    assert (back - z0).abs().max() < 1e-4


def test_round_trip_converges_like_one_over_steps():
    """Theory: each inverse step errs by O(1/N²), the trip by O(1/N). With the exact ε of Gaussian data
    x_0 ~ N(0, s² I), ε*(x_t) = √(1 − ᾱ) x_t / (ᾱ s² + 1 − ᾱ), the error shrinks ~5× from 100 to 500 steps and is
    about 1% at 500; a wrong inverse (ε read at the target level instead) would not converge."""
    schedule = NoiseSchedule.create("scaled_linear")
    abar = schedule.alphas_cumprod

    def gaussian_eps(x, t, s2=0.25):
        a = abar[int(t)]
        return (1 - a) ** 0.5 * x / (a * s2 + 1 - a)

    z0 = 0.5 * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    grids = {n: sampling_grid(GridSpec("ddim", n), schedule) for n in (10, 100, 500)}
    errors = {n: (sample_ddim(gaussian_eps, invert_ddim(gaussian_eps, z0, grid), grid) - z0).abs().max()
              for n, grid in grids.items()}
    assert errors[10] > errors[100] > errors[500]
    assert 3.5 < errors[100] / errors[500] < 6.5
    assert errors[500] < 0.02


def test_round_trip_api(model, picture):
    trip = round_trip(model, picture, "a red square", steps=4, guidance=1.0)
    assert trip.reconstruction.shape == trip.encoded.shape == picture.shape
    again = reconstruct(model, trip.inversion)
    assert torch.equal(again, trip.reconstructed_latent)  # deterministic: the same x_T gives the same ẑ_0
    assert trip.latent_error == pytest.approx(float((again - trip.inversion.latent).abs().max()))
    assert trip.psnr == psnr(trip.reconstruction, trip.encoded)


def test_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    assert psnr(a, a) == PSNR_CAP
    assert psnr(a + 1, a) == pytest.approx(20 * math.log10(255))  # MSE 1
    assert psnr(a + 16, a) == pytest.approx(20 * math.log10(255 / 16))


def test_inversion_file_round_trip(model, picture, tmp_path):
    inversion = invert(model, picture, "a red square", steps=3)
    path = save_inversion(inversion, tmp_path / "x_T.pt")
    loaded = load_inversion(path)
    assert torch.equal(loaded.x_T, inversion.x_T) and torch.equal(loaded.latent, inversion.latent)
    assert loaded.settings == inversion.settings and loaded.timesteps == inversion.timesteps
    assert torch.equal(reconstruct(model, loaded), reconstruct(model, inversion))
    with pytest.raises(OutputPathError, match="--force"):
        save_inversion(inversion, path)


@pytest.mark.parametrize(("payload", "message"), [
    (b"not a torch file", "cannot read"),
    ({"format": "something/else"}, "is not a diffx-inversion/1"),
    ({"format": "diffx-inversion/1", "x_T": torch.zeros(4, 8, 8), "latent": torch.zeros(1, 4, 8, 8)}, "x_T is not"),
    ({"format": "diffx-inversion/1", "x_T": torch.full((1, 4, 8, 8), math.nan), "latent": torch.zeros(1, 4, 8, 8)},
     "NaN"),
    ({"format": "diffx-inversion/1", "x_T": torch.zeros(1, 4, 8, 8), "latent": torch.zeros(1, 4, 4, 4)}, "differ"),
    ({"format": "diffx-inversion/1", "x_T": torch.zeros(1, 4, 8, 8), "latent": torch.zeros(1, 4, 8, 8),
      "settings": '{"colour": 1}'}, "settings"),
])
def test_bad_inversion_files(tmp_path, payload, message):
    path = tmp_path / "bad.pt"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        torch.save(payload, path)
    with pytest.raises(InvalidArgumentError, match=message):
        load_inversion(path)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steps": 0}, "steps must be at least 1"),
    ({"guidance": math.nan}, "finite"),
    ({"guidance": -1.0}, "guidance must be >= 0"),
    ({"spacing": "sideways"}, "spacing"),
    ({"guidance_rescale": 1.5}, "guidance_rescale must be between 0 and 1"),
    ({"guidance_rescale": math.nan}, "guidance_rescale must be a finite number"),
])
def test_bad_arguments(model, picture, kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message) as refused:
        invert(model, picture, **kwargs)
    assert "\n" not in str(refused.value)


def test_guidance_rescale_moves_x_T_only_under_guidance(model, picture):
    """φ rescales the guided ε̂ (Lin et al. 2023), so it changes x_T at w > 1; at w = 1 ε̂ is ε_c and φ does nothing."""
    plain, rescaled = (invert(model, picture, "a red square", 3, 5.0, guidance_rescale=phi) for phi in (0.0, 0.7))
    assert rescaled.settings.guidance_rescale == 0.7
    assert not torch.allclose(plain.x_T, rescaled.x_T)
    unguided = [invert(model, picture, "a red square", 3, guidance_rescale=phi).x_T for phi in (0.0, 0.7)]
    assert torch.equal(*unguided)


def test_bad_picture_size(model, picture):
    with pytest.raises(InvalidArgumentError, match="multiple of 4"):
        invert(model, picture[:14, :14], steps=2)


@pytest.mark.parametrize(("steps", "guidances", "message"), [
    ([], [1.0], "at least one"), ([0], [1.0], "out of range"), ([10], [math.inf], "finite"), ([10], [-2.0], ">= 0")])
def test_bad_sweeps(steps, guidances, message):
    with pytest.raises(InvalidArgumentError, match=message):
        check_sweep(steps, guidances, 1000)
