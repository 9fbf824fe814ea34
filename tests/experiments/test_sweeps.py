"""Experiments: the forward process on a picture, CFG sweeps and comparisons (tiny model)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from diffx.errors import InvalidArgumentError
from diffx.experiments import sweeps as experiments
from diffx.models.stable_diffusion import StableDiffusion
from diffx.paths import EMBEDDED_MODEL_DIR
from diffx.pipeline.codec import encode_image
from diffx.pipeline.denoiser import schedule_for
from diffx.pipeline.generation import generate
from diffx.render import latent_to_rgb_fast
from diffx.sampling.schedules import q_sample
from diffx.weights.config_schema import read_model_config
from tests.tiny import STEPS
from tests.tiny import tiny_settings as _settings


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


def test_noise_views_pixel_space():
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    result = experiments.noise_views(picture, schedules=("linear",), timesteps=(0, 999), panel=32, num_frames=5)
    assert len(result.frames) == 5 and len({f.size for f in result.frames}) == 1
    grid = np.asarray(result.grid).astype(int)
    # x_0 at t = 0 is almost the picture (noise scale √β_0 = 0.01): find it in the grid.
    rows, cols = np.nonzero(np.abs(grid[:, :, 0] - np.asarray(picture)[0, 0, 0]) <= 6)
    errors = [np.abs(grid[r:r + 32, c:c + 32] - np.asarray(picture)).mean()
              for r, c in zip(rows, cols, strict=True) if r + 32 <= grid.shape[0] and c + 32 <= grid.shape[1]]
    assert min(errors) < 2  # about 1.3 grey levels of noise
    assert isinstance(result.schedule_plot, Image.Image)
    with pytest.raises(InvalidArgumentError, match="needs a model"):
        experiments.noise_views(picture, latent_space=True)
    with pytest.raises(InvalidArgumentError, match="unknown schedule"):
        experiments.noise_views(picture, schedules=("quadratic",))


def test_noise_views_follow_the_scheduler_of_the_model_config_given():
    """The embedded model samples with trailing spacing on a zero-terminal-SNR schedule: its config alone (no
    weights) gives the plot its spacing and the rows its schedules; without one, SD's scheduler (leading)."""
    picture = Image.new("RGB", (16, 16), (200, 40, 40))
    config = read_model_config(EMBEDDED_MODEL_DIR / "config.json")
    ours = experiments.noise_views(picture, ("scaled_linear",), (999,), sampler="ddim", steps=25, num_frames=2,
                                   config=config)
    assert ours.visits[0] == 999 and ours.visits[-1] == 39  # trailing: what `diffx denoise` runs
    sd = experiments.noise_views(picture, ("scaled_linear",), (999,), sampler="ddim", steps=25, num_frames=2)
    assert sd.visits[0] == 961 and sd.visits[-1] == 1  # leading, steps_offset 1
    # x_999 is pure noise under zero terminal SNR (ᾱ_T ≈ 0), still a little picture under SD's schedule.
    assert not np.array_equal(np.asarray(ours.grid), np.asarray(sd.grid))


def test_noise_views_latent_space_has_preview_and_decode_rows(model):
    picture = Image.new("RGB", (32, 32), (200, 30, 30))
    pixel = experiments.noise_views(picture, schedules=("cosine",), timesteps=(0, 500), num_frames=2)
    latent = experiments.noise_views(picture, schedules=("cosine",), timesteps=(0, 500), latent_space=True, model=model,
                               num_frames=2)
    assert latent.grid.width >= pixel.grid.width  # longer row labels
    assert latent.grid.height > pixel.grid.height  # two rows per schedule
    with pytest.raises(InvalidArgumentError, match="multiples of 2"):
        experiments.noise_views(Image.new("RGB", (31, 31)), latent_space=True, model=model)


def test_latent_noise_row_is_not_saturated_where_the_plain_preview_is(monkeypatch):
    """On the embedded model, x_t in latent space is drawn as the scaled mixture of x_0's preview and ε: at
    t = 500 it clips few pixels, where the preview of the latent x_t itself clipped most of them."""
    from diffx.weights.load import load_model

    model = load_model()
    cells = []
    monkeypatch.setattr(experiments, "make_grid", lambda rows, **kw: (cells.append((rows, kw)), Image.new("RGB",
                                                                                                      (8, 8)))[1])
    picture = Image.new("RGB", (64, 64), (20, 160, 40))
    experiments.noise_views(picture, schedules=("scaled_linear",), timesteps=(500,), latent_space=True, model=model,
                            num_frames=2, panel=64)
    rows, labels = cells[0][0], cells[0][1]["row_labels"]
    assert labels == [f"scaled_linear · {experiments.LATENT_MIXTURE_LABEL}", "scaled_linear · VAE decode"]
    mixture = np.asarray(rows[0][1])
    assert ((mixture == 0) | (mixture == 255)).mean() <= 0.05
    x0 = encode_image(model, picture, torch.Generator().manual_seed(0))  # (1, 4, h, w)
    x_t = q_sample(schedule_for(model, "scaled_linear"), x0, torch.tensor([500]),
                   torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)))
    plain = latent_to_rgb_fast(x_t[0], **model.config.vae.latent_preview())
    assert ((plain == 0) | (plain == 255)).mean() > 0.2


def test_cfg_sweep_columns_are_plain_generations(model):
    sweep = experiments.cfg_sweep(model, _settings(), [1, 7.5], rows_steps=[1, 3], panel=32)
    alone = generate(model, _settings(guidance=7.5))
    assert np.array_equal(sweep.generations[1].images[0], alone.images[0])
    assert not np.array_equal(sweep.generations[0].images[0], sweep.generations[1].images[0])
    assert len(sweep.frames) == STEPS + 1 and len({f.size for f in sweep.frames}) == 1
    no_rows = experiments.cfg_sweep(model, _settings(steps=1), [1, 7.5], panel=32).grid
    assert sweep.grid.height > no_rows.height + 2 * 32  # two rows of x̂0
    with pytest.raises(InvalidArgumentError, match="guidance must be >= 0"):
        experiments.cfg_sweep(model, _settings(), [-1])


def test_parse_axis_types_and_errors():
    assert experiments.parse_axis("steps=5, 10") == ("steps", [5, 10])
    assert experiments.parse_axis("guidance=1,7.5") == ("guidance", [1.0, 7.5])
    assert experiments.parse_axis("karras=true,off") == ("karras", [True, False])
    with pytest.raises(InvalidArgumentError, match="unknown comparison axis"):
        experiments.parse_axis("colour=red")
    with pytest.raises(InvalidArgumentError, match="takes a whole number"):
        experiments.parse_axis("steps=five")
    with pytest.raises(InvalidArgumentError, match="no values"):
        experiments.parse_axis("steps=")


def test_compare_grid_and_cells(model):
    result = experiments.compare(model, _settings(), x=("sampler", ["ddim", "heun"]), y=("steps", [1, 2]), panel=32)
    assert [[g.settings[0].sampler for g in row] for row in result.generations] == [["ddim", "heun"]] * 2
    assert [[g.settings[0].steps for g in row] for row in result.generations] == [[1, 1], [2, 2]]
    assert result.grid.width > 2 * 32 and result.grid.height > 2 * 32
    with pytest.raises(InvalidArgumentError, match="both axes"):
        experiments.compare(model, _settings(), x=("steps", [1]), y=("steps", [2]))
    with pytest.raises(InvalidArgumentError, match="unknown sampler"):  # checked before any generation
        experiments.compare(model, _settings(), x=("sampler", ["ddim", "plms"]), y=None)


def test_compare_counts_the_unet_evaluations_guidance_runs(model):
    """Guidance (w ≠ 1) runs the U-Net on [uncond; cond] at every model call: two evaluations per call, counted as
    they run; w = 1 runs it once. Heun calls the model 2N − 1 times."""
    rows = []
    hook = model.unet.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    try:
        result = experiments.compare(model, _settings(sampler="heun"), x=("guidance", [1.0, 3.0]), y=None, panel=32)
    finally:
        hook.remove()
    calls = 2 * STEPS - 1
    assert result.model_calls == [[calls, calls]]
    assert result.unet_evaluations == [[calls, 2 * calls]]
    assert sum(rows) == sum(result.unet_evaluations[0])  # one image per cell: a batch row is one evaluation


def test_noise_views_latent_preview_uses_the_models_bias(model):
    """The fast preview row of `noise --latent` uses the model's fitted factors *and* bias (one reader)."""
    picture = Image.new("RGB", (32, 32), (200, 40, 40))
    biased = replace(model.config.vae, latent_rgb_factors=((0.0, 0.0, 0.0),) * 4, latent_rgb_bias=(0.5, -0.5, 0.0))
    shifted = StableDiffusion(**{**model.__dict__, "config": replace(model.config, vae=biased)})
    grid = np.asarray(experiments.noise_views(picture, schedules=("linear",), timesteps=(0,), latent_space=True,
                                              model=shifted, panel=32, num_frames=2).grid)
    preview_colours = {tuple(c) for c in grid.reshape(-1, 3)}
    assert (191, 64, 128) in preview_colours  # rgb = 0·latent + bias, in [-1, 1] → uint8


@pytest.mark.parametrize(("text", "says"), [("karras=maybe", "true/false value"), ("steps=a,b", "whole number"),
                                            ("guidance=nan,1", "finite"), ("guidance=1e400", "finite"),
                                            ("guidance=x", "takes a number")])
def test_parse_axis_names_the_expected_type_in_words(text, says):
    from diffx.errors import InvalidArgumentError
    from diffx.experiments.sweeps import parse_axis

    with pytest.raises(InvalidArgumentError, match=says):
        parse_axis(text)


def test_a_cell_counts_and_names_its_network_evaluations() -> None:
    counter = experiments.EvaluationCounter("MMDiT")
    eps = torch.zeros(1)
    counter.heard(eps, eps)  # guided: [uncond; cond], two evaluations
    counter.heard(None, eps)  # w = 1: cond alone
    assert (counter.calls, counter.unet) == (2, 3)
    assert counter.label() == "3 MMDiT evaluations\n= 2 model calls × 2"
