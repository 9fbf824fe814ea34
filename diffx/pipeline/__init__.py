"""Text → image, image → image, inpainting and DDIM inversion with classifier-free guidance.

- settings.py: `GenerationSettings` (what a caller writes) → `resolve_settings` → `ResolvedSettings` (checked, frozen)
- conditioning.py: prompt → tokens → the network's conditioning per CFG branch; prompt_weights.py: "(red:1.3)"
- denoiser.py: ε̂(x_t, t) with guidance, what every sampler calls; `grid_for`, the run's sampling grid
- observers.py: the one observer API (`ImageRun`, `Observer`, the `observe` factory every entry point takes)
- codec.py: pictures ↔ scaled latents through the VAE; inpainting.py: mask conditioning and latent blending
- families.py: what the pipeline needs of a kind of model (`ModelFamily`), and the registry of kinds
- generation.py: `generate`; inversion.py: `invert`, `reconstruct`, `round_trip`
"""

from diffx.pipeline.codec import decode_latents, decoder_gflops, encode_image
from diffx.pipeline.conditioning import Conditioning, PromptTruncatedWarning, encode_text, prompt_conditioning, tokenize
from diffx.pipeline.denoiser import grid_for, make_denoiser, rescale_guidance, schedule_for, settings_denoiser
from diffx.pipeline.families import FAMILIES, ModelFamily, family_of, register_family
from diffx.pipeline.generation import Generation, generate
from diffx.pipeline.inversion import (
    Inversion,
    RoundTrip,
    RoundTripSweep,
    invert,
    load_inversion,
    psnr,
    reconstruct,
    round_trip,
    round_trip_sweep,
    save_inversion,
)
from diffx.pipeline.observers import ImageRun, Observe, Observer, chain_callbacks
from diffx.pipeline.prompt_weights import WeightedPrompt, parse_weights, weighted_tokens
from diffx.pipeline.settings import GenerationSettings, ResolvedSettings, resolve_settings

__all__ = [
    "FAMILIES",
    "Conditioning",
    "Generation",
    "GenerationSettings",
    "ImageRun",
    "Inversion",
    "ModelFamily",
    "Observe",
    "Observer",
    "PromptTruncatedWarning",
    "ResolvedSettings",
    "RoundTrip",
    "RoundTripSweep",
    "WeightedPrompt",
    "chain_callbacks",
    "decode_latents",
    "decoder_gflops",
    "encode_image",
    "encode_text",
    "family_of",
    "generate",
    "grid_for",
    "invert",
    "load_inversion",
    "make_denoiser",
    "parse_weights",
    "prompt_conditioning",
    "psnr",
    "reconstruct",
    "register_family",
    "rescale_guidance",
    "resolve_settings",
    "round_trip",
    "round_trip_sweep",
    "save_inversion",
    "schedule_for",
    "settings_denoiser",
    "tokenize",
    "weighted_tokens",
]
