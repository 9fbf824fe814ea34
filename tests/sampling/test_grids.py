"""The sampling grid (diffx/sampling/grids.py): built once, the same timesteps and σ diffusers' schedulers make,
image-to-image as a start index, and what a run will evaluate read off it without running it."""

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from diffx.errors import InvalidArgumentError
from diffx.sampling.grids import SAMPLERS, GridSpec, sampling_grid
from diffx.sampling.schedules import NoiseSchedule

SD15 = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "steps_offset": 1, "set_alpha_to_one": False}
SCHEDULE = NoiseSchedule.create("scaled_linear")


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_and_sigmas_are_diffusers(spacing):
    config = dict(SD15, timestep_spacing=spacing)
    for sampler, scheduler in (("ddim", DDIMScheduler), ("euler", EulerDiscreteScheduler),
                               ("dpmpp_2m", DPMSolverMultistepScheduler)):
        theirs = scheduler.from_config(config)
        theirs.set_timesteps(20)
        grid = sampling_grid(GridSpec(sampler, 20, spacing), SCHEDULE)
        assert torch.equal(grid.timesteps.float(), theirs.timesteps.float()), sampler
        if sampler == "euler":
            assert torch.allclose(grid.sigmas, theirs.sigmas.float(), rtol=1e-6), sampler


def test_ddim_lands_a_stride_below_and_ddpm_on_the_next_point():
    ddim = sampling_grid(GridSpec("ddim", 10, "trailing"), SCHEDULE)
    ddpm = sampling_grid(GridSpec("ddpm", 10, "trailing"), SCHEDULE)
    assert torch.equal(ddim.prev_timesteps, ddim.timesteps - 100)
    assert ddpm.prev_timesteps.tolist() == [*ddpm.timesteps[1:].tolist(), -1]
    assert ddim.sigmas[-1] == pytest.approx(float(SCHEDULE.sigmas[0]))  # DDIM stops at ᾱ_0 (t' < 0 reads t = 0)
    assert ddpm.sigmas[-1] == 0.0


def test_strength_starts_part_way_and_heun_evaluates_twice():
    grid = sampling_grid(GridSpec("heun", 10), SCHEDULE, strength=0.6)
    assert grid.start_index == 4 and grid.steps == 10
    calls = grid.model_timesteps()
    assert len(calls) == 2 * 6 - 1 and calls[0] == float(grid.timesteps[4]) and calls[1] == calls[2]


def test_init_noise_sigma():
    leading = sampling_grid(GridSpec("euler", 10, "leading"), SCHEDULE)
    trailing = sampling_grid(GridSpec("euler", 10, "trailing"), SCHEDULE)
    assert leading.init_noise_sigma == pytest.approx(float((leading.sigmas.max() ** 2 + 1) ** 0.5))
    assert trailing.init_noise_sigma == pytest.approx(float(trailing.sigmas.max()))
    assert sampling_grid(GridSpec("ddim", 10), SCHEDULE).init_noise_sigma == 1.0


@pytest.mark.parametrize("spec, message", [
    (GridSpec("plms", 10), ", ".join(SAMPLERS)),
    (GridSpec("ddim", 0), "steps must be between 1 and 1000"),
    (GridSpec("ddim", 10, karras=True), "Karras sigmas apply to"),
    (GridSpec("ddim", 10, "uniform"), "leading, trailing, linspace"),
])
def test_bad_settings(spec, message):
    with pytest.raises(InvalidArgumentError, match=message):
        sampling_grid(spec, SCHEDULE)
