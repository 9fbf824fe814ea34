"""Samplers are plain functions over a denoiser: write the classifier-free-guidance denoiser yourself.

    python examples/sampler_loop.py "a blue circle" out/

Runs DDIM and Euler on the same noise with a hand-written ε̂ = ε_u + w (ε_c − ε_u), printing how far
the predicted x̂0 moves at every step, then decodes both results.
"""

import sys
from pathlib import Path

import torch

from diffx.pipeline import decode_latents, encode_text, schedule_for, tokenize
from diffx.render import save_png
from diffx.sampling import GridSpec, StepRecord, sample, sampling_grid
from diffx.weights import load_model


def main(prompt: str, out_dir: Path, guidance: float = 5.0) -> dict[str, list[float]]:
    model = load_model()
    cond = encode_text(model, [tokenize(model, prompt)])  # (1, 77, width)
    uncond = encode_text(model, [tokenize(model, "")])

    def eps_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps_uncond, eps_cond = model.unet(torch.cat([x_t, x_t]), t, torch.cat([uncond, cond])).chunk(2)
        return eps_uncond + guidance * (eps_cond - eps_uncond)

    side = model.config.image_size // model.config.vae.downsample_factor
    noise = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(0))
    schedule = schedule_for(model, model.config.scheduler.beta_schedule)
    moves: dict[str, list[float]] = {}
    for sampler in ("ddim", "euler"):
        previous: list[torch.Tensor] = []
        moves[sampler] = []

        def watch(record: StepRecord, previous: list = previous, sampler: str = sampler) -> None:
            if previous:
                moves[sampler].append(float((record.x0_pred - previous[-1]).abs().mean()))
            previous.append(record.x0_pred)

        with torch.no_grad():
            grid = sampling_grid(GridSpec(sampler, steps=20), schedule)  # the timesteps and σ it will visit
            latent = sample(eps_model, noise, grid, callback=watch)
            save_png(decode_latents(model, latent)[0], out_dir / f"{sampler}.png", force=True)
    return moves


if __name__ == "__main__":
    for sampler, steps in main(sys.argv[1], Path(sys.argv[2])).items():
        print(sampler, " ".join(f"{move:.3f}" for move in steps))
