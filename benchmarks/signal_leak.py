"""Does the model read the layout from the signal its noise schedule leaves in x_T, instead of from the text?

SD's scaled-linear schedule ends at √ᾱ_T = 0.068, not 0: the most-noised training input still holds 6.8 % of
the picture (Lin et al. 2023, "Common diffusion noise schedules and sample steps are flawed", §3.1). On
small latents that is enough to see where an object lies: averaged over an object's few latent cells the
signal beats the noise (the reason noise schedules must shift with resolution, Hoogeboom et al. 2023, §3.1).
A model trained so learns to take each object's position from x_T and has no reason to learn position
words; sampling starts from pure noise, so its objects go wherever the seed's noise suggests and the prompt's
"in the top left" changes nothing. A zero-terminal-SNR model (`diffx train --zero-snr`) cannot do that.

This measures it. For `--n` one-object training-stream scenes (truth: the judge's reading of the clean
picture), the scene's latent is noised to t (`schedules.q_sample`), the U-Net predicts x̂0 with the empty
prompt (no text at all), and the judge reads the decoded x̂0: a hit when it shows an object in the scene's
grid cell. The control pairs each x̂0 with another scene's cell (a shifted list): what agreement chance gives.
t runs over the model's own last timestep T − 1 (what sampling starts from) and 950, 900, 800, 600.

Run from the repository root:  python -m benchmarks.signal_leak [--model FOLDER] [--n 72]
The last line printed is `leak_T=<rate> control_T=<rate> leak_900=<rate> …` (rates over the scenes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from diffx.embedded.pool import to_unit
from diffx.embedded.quality import load_for_evaluation
from diffx.embedded.shapes import TRAIN_STREAM
from diffx.embedded.world_quality import model_world
from diffx.embedded.worlds import World, get_world
from diffx.models.stable_diffusion import StableDiffusion
from diffx.paths import EMBEDDED_MODEL_DIR
from diffx.pipeline.codec import decode_latents
from diffx.pipeline.conditioning import encode_text, tokenize
from diffx.pipeline.denoiser import make_denoiser, schedule_for
from diffx.sampling.schedules import NoiseSchedule, q_sample, vp_scales, x0_from_eps

TIMESTEPS = (950, 900, 800, 600)  # besides the model's own T − 1


def one_object_scenes(world: World, model: StableDiffusion, n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """(n, 3, H, W) pictures of one-object scenes from the training stream, and the cell the judge reads in each."""
    rng = np.random.default_rng([TRAIN_STREAM, seed, 7])
    pictures, cells = [], []
    while len(cells) < n:
        picture = world.render(world.make_scene(rng), model.config.image_size)
        seen = world.analyse(picture).objects
        if len(seen) == 1:
            pictures.append(torch.from_numpy(picture).permute(2, 0, 1))
            cells.append(seen[0].position)
    return torch.stack(pictures), cells


@torch.no_grad()
def empty_prompt_x0(model: StableDiffusion, schedule: NoiseSchedule, latents: torch.Tensor, t: int, seed: int
                    ) -> list[np.ndarray]:
    """x̂0 (decoded pictures) of the latents noised to t on `schedule`, predicted with the empty prompt at
    guidance 1."""
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    step = torch.tensor(t)
    x_t = q_sample(schedule, latents, step, noise)  # (n, 4, h, w)
    context = encode_text(model, [tokenize(model, "")]).expand(len(latents), -1, -1)
    eps = make_denoiser(model, context, None, 1.0, schedule=schedule)(x_t, step)
    signal_scale, noise_scale = (float(s) for s in vp_scales(schedule, step))  # √ᾱ, √(1 − ᾱ)
    return decode_latents(model, x0_from_eps(eps, x_t, signal_scale, noise_scale))


def hit_rate(world: World, pictures: list[np.ndarray], cells: list[str]) -> float:
    """Share of pictures showing an object in the given cell."""
    return float(np.mean([any(o.position == cell for o in world.analyse(p).objects)
                          for p, cell in zip(pictures, cells, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=EMBEDDED_MODEL_DIR, help="model folder or training folder")
    parser.add_argument("--n", type=int, default=72, help="number of one-object scenes")
    parser.add_argument("--seed", type=int, default=0, help="scene and noise seed")
    args = parser.parse_args()
    model = load_for_evaluation(args.model)
    world = get_world(model_world(model, args.model))
    pictures, cells = one_object_scenes(world, model, args.n, args.seed)
    with torch.no_grad():
        latents = model.vae.encode(to_unit(pictures).to(model.device)).mean * model.config.vae.scaling_factor
    schedule = schedule_for(model, model.config.scheduler.beta_schedule)
    last = schedule.num_train_timesteps - 1
    others = cells[1:] + cells[:1]  # each x̂0 against the next scene's cell
    table = Table(title=f"position read from x_t with no text ({args.n} one-object scenes, {args.model})")
    for column in ("t", "√ᾱ_t", "x̂0 in the scene's cell", "control (another scene's cell)"):
        table.add_column(column, justify="right")
    figures = []
    for t in (last, *TIMESTEPS):
        x0 = empty_prompt_x0(model, schedule, latents, t, args.seed)
        leak, control = hit_rate(world, x0, cells), hit_rate(world, x0, others)
        table.add_row(str(t), f"{float(schedule.alphas_cumprod[t]) ** 0.5:.4f}", f"{leak:.3f}", f"{control:.3f}")
        name = "T" if t == last else str(t)
        figures += [f"leak_{name}={leak:.3f}"] + ([f"control_T={control:.3f}"] if t == last else [])
    Console().print(table)
    print(" ".join(figures))


if __name__ == "__main__":
    main()
