"""The ε / v / x̂0 lesson: three names for one prediction, drawn side by side for the same steps.

A denoiser's output can be read as the noise ε̂, the clean image x̂0 or the velocity v̂ (Salimans & Ho
2022, sec. 4). With α = √ᾱ_t and σ = √(1 − ᾱ_t), x_t = α x̂0 + σ ε̂ and v̂ = α ε̂ − σ x̂0: any one of
them and x_t give the other two. An ε-model outputs ε̂, a v-model (SD2-768) v̂; diffx turns either into
ε̂ in the denoiser (`schedules.eps_from_prediction`) and this view derives the rest. What to notice:
early (σ ≈ 1, α ≈ 0) v̂ ≈ −x̂0, late (α ≈ 1) v̂ ≈ ε̂ — v moves from predicting the picture to predicting
the noise, which keeps its error bounded at both ends where ε alone (x̂0 = (x_t − σ ε̂)/α) blows up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from PIL import Image

from diffx.errors import InvalidArgumentError
from diffx.render import caption_bar, make_grid, visualize_noise
from diffx.sampling.schedules import v_from_eps
from diffx.trace.record import Trace
from diffx.views.steps import (
    X0_LABELS,
    fit_panel,
    format_timestep,
    prompt_title,
    resolve_preview,
    step_indices,
    trace_panel_size,
    x0_pictures,
    xt_label,
    xt_pictures,
)

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

PREDICTED = {"epsilon": "ε", "v_prediction": "v"}
NOISE_LABEL = "latents, channels 1–3 as RGB, each over ±3σ"


def default_steps(count: int) -> list[int]:
    """The first, middle and last step (1-based): where v̂ looks like −x̂0, in between, and like ε̂."""
    return sorted({1, (count + 1) // 2, count})


def prediction_view(trace: Trace, steps: Sequence[int] | None = None, preview: str = "auto",
                    model: StableDiffusion | None = None, panel: int | None = None) -> Image.Image:
    """One row per step (1-based; default `default_steps`): x_t, x̂0, ε̂ and v̂ of the same model evaluation.

    The panel of what the model output says so ("ε̂: the model's output"); the others give the formula that
    derives them. ε̂ and v̂ are latents, each channel standardised and shown over ±3σ (`visualize_noise`).
    """
    if not {"latents", "eps", "x0"} <= trace.tensors.keys():
        raise InvalidArgumentError("the ε/v/x̂0 view needs a trace that recorded latents, eps and x0")
    indices = step_indices(trace.num_steps, list(steps) if steps else default_steps(trace.num_steps))
    preview = resolve_preview(preview, trace, model)
    size = trace_panel_size(trace, panel)
    x0 = x0_pictures(trace, indices, preview, model)
    xt = xt_pictures(trace, indices, x0)
    prediction = trace.meta.get("prediction_type", "epsilon")
    output = PREDICTED.get(prediction, prediction)
    tensors = trace.tensors
    rows, labels, row_labels = [], [], []
    for row, i in enumerate(indices):
        alpha_cumprod = float(tensors["alphas_cumprod"][i])
        alpha, sigma = alpha_cumprod**0.5, (1 - alpha_cumprod) ** 0.5
        eps = tensors["eps"][i].float()
        v = v_from_eps(eps, tensors["latents"][i].float(), alpha, sigma)
        smooth = preview == "vae"  # decoded pictures scale smoothly; latent grids keep their squares
        rows.append([fit_panel(xt[row], size, smooth), fit_panel(x0[row], size, smooth),
                     fit_panel(visualize_noise(eps), size), fit_panel(visualize_noise(v), size)])
        labels.append([xt_label(trace), X0_LABELS[preview],
                       "ε̂: the model's output" if output == "ε" else "ε̂ = σ x_t + α v̂",
                       "v̂: the model's output" if output == "v" else "v̂ = α ε̂ − σ x̂0"])
        row_labels.append(f"step {i + 1}/{trace.num_steps} · t={format_timestep(float(tensors['timesteps'][i]))}"
                          f" · α={alpha:.3f} σ={sigma:.3f}")
    grid = make_grid(rows, row_labels=row_labels, cell_labels=labels, cell_size=size,
                     title=f"{prompt_title(trace)} · the model predicts {output} · ε̂, v̂: {NOISE_LABEL}")
    return caption_bar(grid, "x_t = α x̂0 + σ ε̂ and v̂ = α ε̂ − σ x̂0 with α = √ᾱ_t, σ = √(1 − ᾱ_t): "
                             "early v̂ ≈ −x̂0, late v̂ ≈ ε̂")

