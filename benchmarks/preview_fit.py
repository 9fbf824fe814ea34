"""How well the model's linear latent preview shows its pictures: PSNR of the preview against the VAE decode.

The fast preview (`diffx.render.latents.latent_to_rgb_fast`: linear rgb = latentᵀ W + b, or a per-pixel
MLP) stands in for the VAE decoder wherever decoding every step costs too much. Its quality is measured
on the model's own samples: `--samples` generations from its world's evaluation prompts, each final latent
previewed and compared with its decode average-pooled to the latent grid (the preview's resolution).
Also reported: refits on the first half of those samples, scored on the other half — least squares
(`fit_latent_rgb_factors`, the best a linear preview can do for this VAE) and the per-pixel MLP
(`fit_latent_rgb_mlp`). Target for the embedded model: 20 dB.

Run from the repository root:  python -m benchmarks.preview_fit [--samples 40] [--model FOLDER]
The last line printed is `shipped_psnr_db=… linear_refit_psnr_db=… mlp_refit_psnr_db=… target_db=20`.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from diffx.embedded.quality import load_for_evaluation
from diffx.embedded.world_quality import model_world
from diffx.embedded.worlds import get_world
from diffx.paths import EMBEDDED_MODEL_DIR
from diffx.pipeline.codec import decode_latents
from diffx.pipeline.generation import generate
from diffx.pipeline.settings import GenerationSettings
from diffx.render import fit_latent_rgb_factors, fit_latent_rgb_mlp, latent_to_rgb_fast

TARGET_DB = 20.0


def psnr_db(latents: torch.Tensor, decodes: torch.Tensor, preview: dict) -> float:
    """Mean PSNR (dB, 8-bit) of the previews of `latents` (N, C, h, w) against `decodes` (N, 3, H, W) in [-1, 1]."""
    scores = []
    for latent, decode in zip(latents, decodes, strict=True):
        picture = latent_to_rgb_fast(latent, **preview).astype(np.float64)
        pooled = F.adaptive_avg_pool2d(decode[None].double(), latent.shape[-2:])[0].permute(1, 2, 0).numpy()
        target = (pooled.clip(-1, 1) + 1) * 127.5
        scores.append(10 * np.log10(255**2 / max(((picture - target) ** 2).mean(), 1e-12)))
    return float(np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--model", default=EMBEDDED_MODEL_DIR, help="model folder or training folder")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_for_evaluation(args.model)
    prompts = get_world(model_world(model, args.model)).eval_prompts(args.samples, 0)
    latents = torch.cat([generate(model, GenerationSettings(prompt=p, seed=i)).latents for i, p in enumerate(prompts)])
    decodes = torch.stack([torch.from_numpy(d).permute(2, 0, 1).float() / 127.5 - 1 for d in
                           decode_latents(model, latents)])
    vae = model.config.vae
    half = len(latents) // 2
    shipped = psnr_db(latents[half:], decodes[half:], vae.latent_preview())
    factors, bias = fit_latent_rgb_factors(latents[:half], decodes[:half])
    linear = psnr_db(latents[half:], decodes[half:], {"factors": factors, "bias": bias})
    mlp = psnr_db(latents[half:], decodes[half:], fit_latent_rgb_mlp(latents[:half], decodes[:half]))
    print(f"{model.config.name}: {len(latents) - half} held-out samples; shipped preview {shipped:.1f} dB, "
          f"refit on the other samples: linear {linear:.1f} dB, per-pixel MLP {mlp:.1f} dB "
          f"(target {TARGET_DB:g} dB)")
    print(f"shipped_psnr_db={shipped:.2f} linear_refit_psnr_db={linear:.2f} mlp_refit_psnr_db={mlp:.2f} "
          f"target_db={TARGET_DB:g}")


if __name__ == "__main__":
    main()
