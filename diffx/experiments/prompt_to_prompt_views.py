"""Pictures of attention edits: prompt-to-prompt's three runs side by side (`edit_picture`, `edit_frames`),
and what word weights do to the text encoder's output (`weights_view`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from matplotlib.figure import Figure
from PIL import Image

from diffx.experiments.prompt_to_prompt import SELF_MAX_QUERIES, Edit
from diffx.models.tokenizer import CONTEXT_LENGTH
from diffx.pipeline.conditioning import encode_text, tokenize
from diffx.pipeline.generation import generate
from diffx.pipeline.prompt_weights import WeightedPrompt, escape_weights
from diffx.pipeline.settings import GenerationSettings
from diffx.render import caption_bar, make_grid
from diffx.render.plots import figure_to_image
from diffx.views.steps import (
    X0_LABELS,
    fit_panel,
    panel_size,
    resolve_preview,
    step_caption,
    trace_panel_size,
    x0_pictures,
)

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion


def _steps(count: int, total: int) -> str:
    return "no step" if count == 0 else f"step 1 of {total}" if count == 1 else f"steps 1–{count} of {total}"


KIND_NAMES = {"same": "same prompt", "swap": "word swap", "refine": "refinement"}
COLUMN_LABELS = ["source", "edit without injection", "edit with injection"]


def edit_title(edit: Edit) -> tuple[str, str]:
    """The title (the kind of edit, what was injected for how many model evaluations) and the line under it
    (sampler, steps, guidance, seed; re-weighted words)."""
    injected = f"source cross-attention injected for {_steps(edit.cross_steps, edit.num_steps)} (τ = {edit.tau:g})"
    if edit.self_steps:
        side = int(SELF_MAX_QUERIES ** 0.5)
        injected += f", self-attention (≤ {side}×{side}) for {_steps(edit.self_steps, edit.num_steps)}"
    settings = edit.source.settings[0]
    details = f"{settings.sampler}, {settings.steps} steps, guidance {settings.guidance:g}, seed {settings.seed}"
    tokens = edit.injected.traces[0].tokens
    factors = {}
    for index, word in enumerate(tokens.words):
        positions = tokens.word_positions(index)
        if positions and float(edit.scales[positions[0]]) != 1.0:
            factors[word] = float(edit.scales[positions[0]])
    if factors:
        details += " · attention re-weighted: " + ", ".join(f"“{w}” ×{c:g}" for w, c in factors.items())
    return f"prompt-to-prompt, {KIND_NAMES[edit.token_map.kind]}: {injected}", details


def _edit_grid(edit: Edit, pictures: list, size: tuple[int, int]) -> Image.Image:
    """Three panels with their column labels, each run's prompt under it, and the title."""
    title, details = edit_title(edit)
    prompts = [f"“{run.traces[0].settings.prompt}”" for run in (edit.source, edit.plain, edit.injected)]
    return make_grid([pictures], col_labels=COLUMN_LABELS, cell_labels=[prompts], title=title,
                     x_axis_title=details, cell_size=size)


def edit_picture(edit: Edit, panel: int | None = None) -> Image.Image:
    """The source, the edit without injection and the edit with injection, side by side, labelled."""
    size = trace_panel_size(edit.source.traces[0], panel)
    return _edit_grid(edit, [fit_panel(run.images[0], size, smooth=True)
                             for run in (edit.source, edit.plain, edit.injected)], size)


def edit_frames(edit: Edit, preview: str = "auto", model: StableDiffusion | None = None,
                panel: int | None = None) -> list[Image.Image]:
    """One frame per model evaluation: x̂0 of the three runs side by side, captioned with the step and
    whether the source's attention is being injected; then the results."""
    traces = [run.traces[0] for run in (edit.source, edit.plain, edit.injected)]
    size = trace_panel_size(traces[0], panel)
    preview = resolve_preview(preview, traces[0], model)
    indices = list(range(edit.num_steps))
    x0 = [[fit_panel(p, size, smooth=preview != "fast") for p in x0_pictures(trace, indices, preview, model)]
          for trace in traces]
    frames = []
    for i in indices:
        state = "injecting the source's attention" if i < edit.cross_steps else "the edit on its own maps"
        grid = _edit_grid(edit, [pictures[i] for pictures in x0], size)
        frames.append(caption_bar(grid, f"{X0_LABELS[preview]}, {step_caption(traces[0], i)} · {state}"))
    frames.append(caption_bar(edit_picture(edit, panel), "result"))  # the same layout: the same frame size
    return frames


@dataclass
class WeightsView:
    """What word weights do: the clean prompt's tokens, ‖e'_i − e_i‖ per position, the chart and pictures."""

    tokens: WeightedPrompt
    change: torch.Tensor  # (77,) L2 norm of the change of each position's context vector
    mean_factor: float  # mean(e) / mean(w e): what every vector is multiplied by to restore the mean
    picture: Image.Image


def embedding_change(model: StableDiffusion, prompt: str) -> tuple[WeightedPrompt, torch.Tensor, float]:
    """The prompt's tokens, ‖e'_i − e_i‖ (77,) of its weighted context against the same prompt unweighted,
    and the mean-restoring factor mean(e) / mean(w e)."""
    tokens = tokenize(model, prompt)
    unweighted = replace(tokens, weights=[1.0] * CONTEXT_LENGTH)
    contexts = encode_text(model, [tokens, unweighted]).float()  # (2, 77, width)
    scaled = contexts[1] * torch.tensor(tokens.weights, device=contexts.device)[:, None]  # before the rescale
    return tokens, (contexts[0] - contexts[1]).norm(dim=-1).cpu(), float(contexts[1].mean() / scaled.mean())


def _chart(tokens: WeightedPrompt, change: torch.Tensor, mean_factor: float, width_px: int) -> Image.Image:
    """Bars of ‖Δe‖ for the start token, each prompt token, the end token and the mean over the padding."""
    count = tokens.num_tokens
    labels = ["⟨start⟩", *(t.replace("</w>", "") for t in tokens.tokens[1:count - 1]), "⟨end⟩"]
    values = change[:count].tolist()
    weights = tokens.weights[:count]
    if count < CONTEXT_LENGTH:
        labels.append(f"⟨padding ×{CONTEXT_LENGTH - count}⟩\n(mean)")
        values.append(float(change[count:].mean()))
        weights.append(1.0)
    colours = ["#7f8c8d" if w == 1 else "#34495e" for w in weights]  # weighted tokens dark; weights written on top
    figure = Figure(figsize=(width_px / 100, 3.4), dpi=100, layout="constrained")
    ax = figure.subplots()
    bars = ax.bar(range(len(values)), values, color=colours)
    for bar, weight in zip(bars, weights, strict=True):
        ax.annotate(f"×{weight:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=8)
    ax.set_xticks(range(len(values)), labels, fontsize=8, rotation=30 if len(values) > 8 else 0)
    ax.set_ylabel("‖e′ − e‖  (L2 over channels)")
    ax.set_title(f"text-encoder output change per token: “{tokens.written}”\n"
                 f"each token's vector × its weight (on the bar), then all × {mean_factor:.4f} (mean restored)",
                 fontsize=9)
    ax.margins(y=0.15)
    return figure_to_image(figure)


def weights_view(model: StableDiffusion, settings: GenerationSettings, panel: int | None = None) -> WeightsView:
    """`settings.prompt`'s word weights: the chart of ‖e'_i − e_i‖ per token above the picture generated
    without and with the weights (same seed)."""
    tokens, change, mean_factor = embedding_change(model, settings.prompt)
    plain = generate(model, replace(settings, prompt=escape_weights(tokens.prompt))).images[0]
    weighted = generate(model, settings).images[0]
    size = panel_size(weighted.shape[1], weighted.shape[0], panel)
    pictures = make_grid([[fit_panel(plain, size, smooth=True), fit_panel(weighted, size, smooth=True)]],
                         col_labels=[f"without weights: “{tokens.prompt}”", f"with weights: “{tokens.written}”"],
                         cell_size=size)
    chart = _chart(tokens, change, mean_factor, max(pictures.width, 640))
    canvas = Image.new("RGB", (max(chart.width, pictures.width), chart.height + pictures.height), "white")
    canvas.paste(chart, (0, 0))
    canvas.paste(pictures, ((canvas.width - pictures.width) // 2, chart.height))
    return WeightsView(tokens=tokens, change=change, mean_factor=mean_factor, picture=canvas)
