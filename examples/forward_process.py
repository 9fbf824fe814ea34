"""The forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (DDPM eq. 4) on a picture, per β schedule.

    python examples/forward_process.py out/

Draws a shapes-world scene, noises it with the three β schedules, and saves the grid and the
schedule curves; prints how much signal √ᾱ_t is left at t = 500 for each schedule.
"""

import sys
from pathlib import Path

import numpy as np

from diffx import experiments
from diffx.embedded.shapes import make_scene, render
from diffx.render import save_png
from diffx.sampling import BETA_SCHEDULES, NoiseSchedule


def main(out_dir: Path) -> dict[str, float]:
    picture = render(make_scene(np.random.default_rng(7)), size=64)
    noise = experiments.noise_views(picture, timesteps=(0, 100, 250, 500, 750, 999))
    save_png(noise.grid, out_dir / "forward_process.png", force=True)
    save_png(noise.schedule_plot, out_dir / "schedules.png", force=True)
    return {name: float(NoiseSchedule.create(name).sqrt_alphas_cumprod[500]) for name in BETA_SCHEDULES}


if __name__ == "__main__":
    for name, signal in main(Path(sys.argv[1])).items():
        print(f"{name:>14s}: sqrt(alpha_bar_500) = {signal:.3f}")
