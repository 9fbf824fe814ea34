"""DDIM inversion by hand: climb from a picture's latent z_0 to the x_T that DDIM would draw it from.

    python examples/ddim_inversion.py "a yellow heart above a blue circle" out/

DDIM with η = 0 is a deterministic map x_T → z_0 (Song et al. 2021, eq. 12). Run backwards, each step lifts
the state from the level t' to the noisier level t with the noise the model predicts at t' (the one point it
has): x_t = √ᾱ_t x̂_0 + √(1 − ᾱ_t) ε̂. This script generates a picture, inverts it with
`diffx.ddim_inversion.invert_ddim`, samples back down from the x_T it found, and prints how close the trip
comes: without guidance (w = 1) close, with guidance the small error of each inverse step is amplified.
`diffx invert` (and `diffx.inversion.round_trip`) do the same with the pictures drawn.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from diffx.pipeline import GenerationSettings, decode_latents, encode_text, generate, grid_for, make_denoiser, psnr
from diffx.render import save_png
from diffx.sampling import invert_ddim, sample
from diffx.weights import load_model

STEPS = 20


@torch.no_grad()
def main(prompt: str, out_dir: Path) -> dict[float, float]:
    """PSNR (dB) of the round trip at each guidance weight w, against the decode of z_0."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_model()
    settings = GenerationSettings(prompt=prompt, sampler="ddim", steps=STEPS, seed=0).resolved(model)
    result = generate(model, settings)
    z0 = result.latents[:1]  # (1, 4, h, w): the picture's latent, exactly what DDIM ended on
    grid = grid_for(model, settings)  # DDIM's timesteps and σ, built once: inversion climbs it, sampling descends it
    context = encode_text(model, [model.tokenizer.encode(prompt)])  # (1, 77, width): the prompt
    empty = encode_text(model, [model.tokenizer.encode("")])  # the unconditional branch of CFG

    trips = {}
    for w in (1.0, 7.5):
        denoiser = make_denoiser(model, context, empty if w != 1.0 else None, w)  # ε̂(x, t) with CFG
        x_T = invert_ddim(denoiser, z0, grid)  # z_0 → x_T, climbing the DDIM grid
        back = sample(denoiser, x_T, grid)  # x_T → ẑ_0, the same grid down
        picture, reference = decode_latents(model, torch.cat([back, z0]))
        save_png(np.concatenate([reference, picture], axis=1), out_dir / f"round_trip_w{w:g}.png", force=True)
        trips[w] = psnr(picture, reference)
    return trips


if __name__ == "__main__":
    for w, db in main(sys.argv[1], Path(sys.argv[2])).items():
        print(f"w = {w:g}: round trip {db:.1f} dB")
