"""lab/flow_figures.py: the velocity field is drawn the way particles move (−v̂), the flow's frames are one per step
and one size, and stacking puts diffusion's frame above the flow's."""

import numpy as np
import torch
from PIL import Image
from torch import nn

from diffx.lab.data import get_distribution
from diffx.lab.flow import flow_times, run_flow
from diffx.lab.flow_figures import FlowPanel, flow_frames, stack_frames, velocity_field
from diffx.lab.sampling import initial_noise


class ConstantVelocity(nn.Module):
    """v(x, t) = (1, 2) everywhere: every particle moves along −(1, 2) as t falls."""

    def forward(self, x, time):
        return torch.tensor([1.0, 2.0], dtype=x.dtype).expand_as(x)


def test_the_velocity_field_points_where_particles_go():
    starts, arrows, full = velocity_field(ConstantVelocity(), 0.5)
    assert starts.shape == arrows.shape and abs(full - 5**0.5) < 1e-5  # |v̂| everywhere
    directions = arrows / np.linalg.norm(arrows, axis=1, keepdims=True)
    np.testing.assert_allclose(directions, np.tile(-np.array([1, 2]) / 5**0.5, (len(arrows), 1)), atol=1e-5)


def test_one_frame_per_step_all_one_size():
    data = get_distribution("moons")
    x0, labels = data.sample(60, torch.Generator().manual_seed(0))
    noise = initial_noise(60, 1)
    run = run_flow(ConstantVelocity(), "flow_euler", flow_times(3), noise)
    torch.testing.assert_close(run.samples, noise - torch.tensor([1.0, 2.0]))  # Euler is exact for a constant v
    frames = flow_frames(ConstantVelocity(), data, [FlowPanel("flow Euler", run, (x0, noise))], labels, shift=1.0)
    assert len(frames) == 4 and len({frame.size for frame in frames}) == 1
    top = [Image.new("RGB", (300, 100), "white")] * 4
    stacked = stack_frames(top, frames)
    assert stacked[0].size == (max(300, frames[0].width), 100 + frames[0].height)
    assert stacked[0].getpixel((5, 5)) == (255, 255, 255)
