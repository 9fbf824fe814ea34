"""The ε / v / x̂0 lesson: three names for one prediction, drawn side by side for the same steps.

A denoiser's output can be read as the noise ε̂, the clean image x̂0 or the velocity v̂ (Salimans & Ho
2022, sec. 4): x_t = √ᾱ x̂0 + √(1 − ᾱ) ε̂ and v̂ = √ᾱ ε̂ − √(1 − ᾱ) x̂0, so any one of them and x_t give
the other two (the paper's α_t, σ_t are √ᾱ_t, √(1 − ᾱ_t) here: in diffx, σ is always √((1 − ᾱ)/ᾱ), the
noise level the trace captions print). An ε-model outputs ε̂, a v-model (SD2-768) v̂; diffx turns either
into ε̂ in the denoiser (`schedules.eps_from_prediction`) and this view derives the rest. What to notice:
early (ᾱ ≈ 0) v̂ ≈ −x̂0, late (ᾱ ≈ 1) v̂ ≈ ε̂ — v moves from predicting the picture to predicting the
noise, which keeps its error bounded at both ends where ε alone (x̂0 = (x_t − √(1 − ᾱ) ε̂)/√ᾱ) blows up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from PIL import Image

from diffx.errors import InvalidArgumentError
from diffx.render import caption_bar, make_grid, visualize_noise
from diffx.render.latents import NOISE_DISPLAY_SIGMAS
from diffx.sampling.schedules import v_from_eps
from diffx.trace.record import Trace
from diffx.views.steps import (
    X0_LABELS,
    fit_panel,
    is_flow,
    prompt_title,
    resolve_preview,
    step_caption,
    step_indices,
    trace_panel_size,
    x0_pictures,
    xt_label,
    xt_pictures,
)

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

PREDICTED = {"epsilon": "ε", "v_prediction": "v", "flow": "v"}
NOISE_LABEL = f"latents, channels 1–3 as RGB, each over ±{NOISE_DISPLAY_SIGMAS:g} standard deviations"
# The one line that says what each symbol is: σ (the captions' noise level) is not the noise scale √(1−ᾱ).
LEGEND = ("σ = √((1−ᾱ)/ᾱ); x_t = √ᾱ x̂0 + √(1−ᾱ) ε̂ and v̂ = √ᾱ ε̂ − √(1−ᾱ) x̂0: "
          "early v̂ ≈ −x̂0, late v̂ ≈ ε̂")
# Rectified flow (SD3): one straight line from the picture (s = 0) to the noise (s = 1), v̂ its direction.
FLOW_LEGEND = "s = the share of noise; x_s = (1−s) x̂0 + s ε̂ and v̂ = ε̂ − x̂0: the same v̂ all along one straight line"


def default_steps(count: int) -> list[int]:
    """The first, middle and last step (1-based): where v̂ looks like −x̂0, in between, and like ε̂."""
    return sorted({1, (count + 1) // 2, count})


def prediction_view(trace: Trace, steps: Sequence[int] | None = None, preview: str = "auto",
                    model: StableDiffusion | None = None, panel: int | None = None) -> Image.Image:
    """One row per step (1-based; default `default_steps`): x_t, x̂0, ε̂ and v̂ of the same model evaluation.

    The panel of what the model output says so ("ε̂: the model's output"); the others give the formula that
    derives them. ε̂ and v̂ are latents, each channel standardised and shown over ±2.5 standard deviations
    (`visualize_noise`). Rows are labelled as the trace's frames are (`step_caption`: its σ = √((1−ᾱ)/ᾱ)),
    with the scales √ᾱ and √(1−ᾱ) that mix x_t; the caption (LEGEND) says which is which.
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
    flow = is_flow(trace)
    for row, i in enumerate(indices):
        alpha_cumprod = float(tensors["alphas_cumprod"][i])
        signal_scale, noise_scale = alpha_cumprod**0.5, (1 - alpha_cumprod) ** 0.5
        eps = tensors["eps"][i].float()
        if flow:  # the flow velocity the network output: the line's direction, noise end minus picture end
            v = eps - tensors["x0"][i].float()
        else:
            v = v_from_eps(eps, tensors["latents"][i].float(), signal_scale, noise_scale)
        smooth = preview != "fast"  # decoded pictures scale smoothly; latent grids keep their squares
        rows.append([fit_panel(xt[row], size, smooth), fit_panel(x0[row], size, smooth),
                     fit_panel(visualize_noise(eps), size), fit_panel(visualize_noise(v), size)])
        labels.append([xt_label(trace), X0_LABELS[preview], *_prediction_labels(output, flow)])
        row_labels.append(step_caption(trace, i) if flow else
                          f"{step_caption(trace, i)} · √ᾱ={signal_scale:.3f} · √(1−ᾱ)={noise_scale:.3f}")
    grid = make_grid(rows, row_labels=row_labels, cell_labels=labels, cell_size=size,
                     title=f"{prompt_title(trace)} · the model predicts {output} · ε̂, v̂: {NOISE_LABEL}")
    return caption_bar(grid, FLOW_LEGEND if flow else LEGEND)


def _prediction_labels(output: str, flow: bool) -> list[str]:
    """The ε̂ and v̂ panels' labels: which one the model output, and the formula of the other."""
    if flow:
        return ["ε̂ = x_s + (1−s) v̂", "v̂: the model's output (the flow velocity)"]
    return ["ε̂: the model's output" if output == "ε" else "ε̂ = √(1−ᾱ) x_t + √ᾱ v̂",
            "v̂: the model's output" if output == "v" else "v̂ = √ᾱ ε̂ − √(1−ᾱ) x̂0"]

