"""Matplotlib charts (noise schedules, training loss, inversion round trips) rendered off-screen to PIL images.

Figures are drawn on the Agg canvas directly (no pyplot), so nothing needs a display and no global
matplotlib state is touched.
"""

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from diffx.errors import InvalidArgumentError
from diffx.sampling.schedules import log_snr


def figure_to_image(figure: Figure) -> Image.Image:
    """Rasterize a matplotlib figure to an RGB PIL image."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")


def schedule_curves(alphas_cumprod: torch.Tensor) -> dict[str, np.ndarray]:
    """The four views of a schedule, each indexed by t (DDPM eq. 4: x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε).

    ᾱ_t, the signal scale √ᾱ_t, the noise scale √(1-ᾱ_t), and log-SNR = log(ᾱ_t / (1-ᾱ_t))
    (Kingma et al. 2021, "Variational Diffusion Models"). ᾱ is clipped away from 0 and 1 so the
    log-SNR of a zero-terminal-SNR schedule stays finite on the plot.
    """
    abar = alphas_cumprod.detach().double().cpu().numpy()
    return {
        "ᾱ_t": abar,
        "√ᾱ_t  (signal scale)": np.sqrt(abar),
        "√(1−ᾱ_t)  (noise scale)": np.sqrt(1 - abar),
        "log-SNR = log(ᾱ_t / (1−ᾱ_t))": log_snr(abar),
    }


def plot_schedules(
    schedules: Mapping[str, torch.Tensor],
    marked_timesteps: Sequence[int] | None = None,
    title: str | None = None,
) -> Image.Image:
    """Plot ᾱ_t, √ᾱ_t, √(1−ᾱ_t) and log-SNR against t, one line per schedule (name -> alphas_cumprod).

    `marked_timesteps` (the timesteps a sampler visits) are drawn as dots on every curve and as
    ticks along the bottom of each panel.
    """
    if not schedules:
        raise InvalidArgumentError("no schedules to plot; give at least one schedule name")
    figure = Figure(figsize=(10, 7), dpi=100, layout="constrained")
    axes = figure.subplots(2, 2, sharex=True).ravel()
    for name, alphas_cumprod in schedules.items():
        curves = schedule_curves(alphas_cumprod)
        timesteps = np.arange(len(alphas_cumprod))
        for ax, (panel_title, values) in zip(axes, curves.items(), strict=True):
            (line,) = ax.plot(timesteps, values, label=name, linewidth=1.6)
            if marked_timesteps is not None:
                marked = np.asarray([t for t in marked_timesteps if 0 <= t < len(values)], dtype=int)
                ax.plot(marked, values[marked], "o", color=line.get_color(), markersize=3.5)
            ax.set_title(panel_title)
    for ax in axes:
        if marked_timesteps is not None:
            # Rug of ticks at the bottom edge (axes coordinates in y), the same on every panel.
            ax.plot(
                marked_timesteps,
                np.zeros(len(marked_timesteps)),
                "|",
                color="0.3",
                markersize=10,
                transform=ax.get_xaxis_transform(),
                clip_on=False,
            )
        ax.grid(alpha=0.3)
    for ax in axes[2:]:
        ax.set_xlabel("timestep t")
    axes[0].legend()
    if title:
        figure.suptitle(title)
    return figure_to_image(figure)


def ema_smooth(values: np.ndarray, smoothing: float) -> np.ndarray:
    """Exponential moving average with bias correction (as in Adam / TensorBoard), so the start of
    the curve is not pulled towards 0: s_k = m_k / (1 - smoothing^(k+1))."""
    smoothed, average = np.empty(len(values)), 0.0
    for k, value in enumerate(values):
        average = smoothing * average + (1 - smoothing) * value
        smoothed[k] = average / (1 - smoothing ** (k + 1))
    return smoothed


def plot_loss_curve(
    steps: Sequence[int],
    losses: Sequence[float],
    smoothing: float = 0.9,
    title: str = "training loss",
    ylabel: str = "loss",
) -> Image.Image:
    """Plot raw losses (faint) and their EMA-smoothed curve; the y axis is logarithmic when all
    losses are positive (diffusion MSE losses fall over orders of magnitude)."""
    if len(steps) != len(losses) or len(steps) == 0:
        raise InvalidArgumentError(
            f"need as many losses as steps (got {len(losses)} and {len(steps)}), at least one"
        )
    if not 0.0 <= smoothing < 1.0:
        raise InvalidArgumentError(f"smoothing must be in [0, 1), got {smoothing}")
    losses = np.asarray(losses, dtype=np.float64)
    figure = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    ax = figure.subplots()
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss")
    ax.plot(steps, ema_smooth(losses, smoothing), color="tab:blue", linewidth=2, label=f"EMA {smoothing}")
    if np.all(losses > 0):
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return figure_to_image(figure)


def plot_round_trip_psnr(steps: Sequence[int], psnr_by_guidance: Mapping[float, Sequence[float]],
                         target: float | None = None, title: str = "DDIM inversion round trip") -> Image.Image:
    """PSNR (dB) of a round trip (invert, then sample back) against the number of steps, one line per
    guidance weight w; `target` (e.g. 30 dB) as a dashed line. Higher is better."""
    if not steps or not psnr_by_guidance:
        raise InvalidArgumentError("nothing to plot; give at least one step count and one guidance weight")
    figure = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    ax = figure.subplots()
    colours = matplotlib.colormaps["plasma"](np.linspace(0.0, 0.85, len(psnr_by_guidance)))
    for colour, (w, values) in zip(colours, psnr_by_guidance.items(), strict=True):
        ax.plot(steps, values, "o-", color=colour, linewidth=1.8, label=f"w = {w:g}")
    if target is not None:
        ax.axhline(target, color="0.4", linestyle="--", linewidth=1)
        ax.annotate(f"{target:g} dB", (1.0, target), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                    fontsize=8, color="0.3")
    ax.set_xticks(list(steps))
    ax.set(xlabel="DDIM steps (inversion and sampling)", ylabel="PSNR (dB), higher = closer", title=title)
    ax.grid(alpha=0.3)
    ax.legend(title="guidance", fontsize=8)
    return figure_to_image(figure)


def plot_guidance_tradeoff(guidances: Sequence[float], adherence: Mapping[str, Sequence[float]],
                           diversity: Sequence[float], saturation: Sequence[float] | None = None,
                           default: float | None = None, title: str = "guidance: fidelity against diversity"
                           ) -> Image.Image:
    """Two panels against the guidance weight w: adherence (one line per name, e.g. one object, 2-3 objects,
    all) on the left; diversity (and, on a second axis, saturation) on the right. `default` (the model's
    default w) is a dotted vertical line on both. Ho & Salimans 2022, fig. 1: fidelity rises with w,
    diversity falls."""
    if not guidances or not adherence or len(diversity) != len(guidances) or \
            any(len(values) != len(guidances) for values in adherence.values()):
        raise InvalidArgumentError("need one adherence value per guidance weight for every line, one diversity "
                                   f"value per weight, at least one weight (got {len(guidances)} weights)")
    figure = Figure(figsize=(10, 3.8), dpi=100, layout="constrained")
    left, right = figure.subplots(1, 2)
    for name, values in adherence.items():
        left.plot(guidances, values, "o-", linewidth=1.8, label=name)
    left.set(xlabel="guidance w", ylabel="share of prompts, all attributes right", ylim=(-0.02, 1.02),
             title="prompt adherence (judge)")
    left.legend(fontsize=8)
    right.plot(guidances, diversity, "o-", color="tab:green", linewidth=1.8, label="diversity")
    right.set(xlabel="guidance w", ylabel="normalised entropy of open attributes", ylim=(-0.02, 1.02),
              title="diversity of under-specified prompts")
    if saturation is not None:
        twin = right.twinx()
        twin.plot(guidances, saturation, "s--", color="tab:red", linewidth=1.2, label="saturation")
        twin.set_ylabel("share of pixels beyond the palette's chroma", color="tab:red")
        right.legend(handles=[*right.get_lines(), *twin.get_lines()], fontsize=8)
    for ax in (left, right):
        if default is not None:
            ax.axvline(default, color="0.4", linestyle=":", linewidth=1)
        ax.set_xticks(list(guidances))
        ax.set_xticklabels([f"{w:g}" for w in guidances], fontsize=8)
        ax.grid(alpha=0.3)
    figure.suptitle(title)
    return figure_to_image(figure)
