"""Pictures of DDIM inversion: the round trip of one picture, the error against steps and guidance, and
the climb from z_0 to x_T as an animation (`diffx invert` draws these; `diffx.inversion` computes them).

The round-trip figure, top to bottom: the input, the VAE decode of its latent z_0, the x_T inversion
finds, the reconstruction DDIM draws from that x_T and the error map; then the reconstructions at every
guidance weight of the sweep, so the failure at large w is a picture; then PSNR against steps, one line
per w. x_T is a latent, not a picture: its first three channels are drawn as R, G, B on a fixed scale
(±2.5 → 0…255, grey = 0), so its size shows — x_T of a picture is not unit noise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from diffx.images import unit_range_to_uint8
from diffx.pipeline.inversion import RoundTrip, RoundTripSweep, round_trip
from diffx.render import caption_bar, colorbar, heatmap, legend_bar, make_grid
from diffx.render.grid import stack_pictures
from diffx.render.latents import NOISE_DISPLAY_SIGMAS
from diffx.render.plots import plot_round_trip_psnr
from diffx.sampling.samplers import StepCallback
from diffx.trace.record import Trace, trace_meta
from diffx.trace.tracer import TraceCollector
from diffx.views.steps import TRACE_RECORD_STEPS, denoise_frames, fit_panel, panel_size

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

ERROR_RANGE = 64.0  # the error map spans 0 … this many grey levels (of 255) of mean |difference| over RGB
ERROR_COLORMAP = "magma"
TARGET_PSNR = 30.0  # dB, drawn on the chart: the round trip the issue asks for at w = 1, 50 steps


def latent_picture(latent: torch.Tensor) -> np.ndarray:
    """A latent (C >= 3, h, w) as uint8 (h, w, 3): channels 1–3 as R, G, B, ±NOISE_DISPLAY_SIGMAS → 0…255."""
    return unit_range_to_uint8(latent.detach().float().cpu()[:3].permute(1, 2, 0) / NOISE_DISPLAY_SIGMAS)


def error_map(picture: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-pixel mean |picture − reference| over RGB (H, W, 3 uint8 each), coloured from 0 to ERROR_RANGE."""
    difference = np.abs(picture.astype(np.float32) - reference.astype(np.float32)).mean(axis=2)  # (H, W)
    return heatmap(difference, 0.0, ERROR_RANGE, ERROR_COLORMAP)


def round_trip_figure(trip: RoundTrip, sweep: RoundTripSweep | None = None, panel: int | None = None) -> Image.Image:
    """The round trip of one picture (see the module docstring), with the sweep's reconstructions and chart
    when a sweep is given."""
    settings = trip.inversion.settings
    size = panel_size(trip.image.shape[1], trip.image.shape[0], panel)
    x_T = trip.inversion.x_T[0]
    main = [(trip.image, "input picture"),
            (trip.encoded, f"VAE decode of z_0 ({trip.vae_psnr:.1f} dB vs input)"),
            (latent_picture(x_T), f"x_T (latent ch. 1–3 as RGB, ±{NOISE_DISPLAY_SIGMAS:g}) · std {x_T.std():.2f}"),
            (trip.reconstruction, f"DDIM from x_T: {trip.psnr:.1f} dB"),
            (error_map(trip.reconstruction, trip.encoded), "error |reconstruction − decode of z_0|")]
    cells = [[fit_panel(picture, size, smooth=index != 2) for index, (picture, _) in enumerate(main)]]
    labels = [[label for _, label in main]]
    row_labels = [f"w = {settings.guidance:g}, {settings.steps} steps"]
    if sweep is not None:
        steps = max(sweep.steps)
        trips = [sweep.trips[w, steps] for w in sweep.guidances]
        cells.append([fit_panel(t.reconstruction, size, smooth=True) for t in trips])
        labels.append([f"w = {w:g}: {t.psnr:.1f} dB" for w, t in zip(sweep.guidances, trips, strict=True)])
        row_labels.append(f"reconstruction at each w, {steps} steps")
        cells.append([fit_panel(error_map(t.reconstruction, t.encoded), size, smooth=True) for t in trips])
        labels.append([f"error at w = {w:g}" for w in sweep.guidances])
        row_labels.append("its error map (same scale)")
    prompt = f"“{settings.prompt}”" if settings.prompt else "empty prompt"
    grid = make_grid(cells, row_labels=row_labels, cell_labels=labels, cell_size=size,
                     title=f"DDIM inversion round trip ({prompt}): invert to x_T, then sample back with the same "
                           "prompt, steps and w; PSNR against the VAE decode of z_0")
    figure = legend_bar(grid, colorbar(64, 8, ERROR_COLORMAP), "error 0", f"{ERROR_RANGE:g} levels",
                        "error map: mean |difference| over R, G, B per pixel, in grey levels of 255")
    if sweep is None:
        return figure
    chart = plot_round_trip_psnr(sweep.steps, dict(zip(sweep.guidances, sweep.psnr().tolist(), strict=True)),
                                 target=TARGET_PSNR,
                                 title="round-trip PSNR against steps and guidance w\n(against the VAE decode of z_0)")
    return stack_pictures([figure, chart])


def traced_round_trip(model: StableDiffusion, image: Image.Image | np.ndarray, prompt: str = "", steps: int = 50,
                      guidance: float = 1.0, *, negative_prompt: str | None = None, spacing: str | None = None,
                      schedule: str | None = None, seed: int = 0, guidance_rescale: float = 0.0,
                      progress: StepCallback | None = None) -> tuple[RoundTrip, Trace]:
    """`inversion.round_trip` with a `Tracer` listening to the inversion: the trip and the trace of its climb."""
    collect = TraceCollector(TRACE_RECORD_STEPS)
    trip = round_trip(model, image, prompt, steps, guidance, negative_prompt=negative_prompt, spacing=spacing,
                      schedule=schedule, seed=seed, guidance_rescale=guidance_rescale, observe=collect,
                      progress=progress)
    [(run, tracer)] = collect.runs
    trace = tracer.finish(run, trace_meta(model, run), {"image": torch.from_numpy(trip.image.copy())})
    return trip, trace


def inversion_frames(trace: Trace, model: StableDiffusion | None = None, preview: str = "auto",
                     panel: int | None = None) -> list[Image.Image]:
    """One frame per inversion step: x_t and x̂0 (as `views.denoise_frames` draws them), captioned as a climb."""
    note = f"DDIM inversion z_0 → x_T, w = {trace.settings.guidance:g}: the noise grows, x̂0 should stay the input"
    return [caption_bar(frame, note) for frame in denoise_frames(trace, preview, model, panel)]
