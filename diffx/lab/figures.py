"""The lab's pictures: the forward process, the learned score field, particles along each sampler's path,
schedules and step counts, and classifier-free guidance — each panel labelled with its t, sampler or w.

Everything is drawn on the same window of the plane (±3, grid lines at whole units) in the VP coordinates
x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, where every marginal q(x_t) stays inside that window. Colours are
categorical: which class a point belongs to, or which particle a trail follows; grey points are the
reference cloud a panel should be compared with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffx.lab.metrics import class_spread, sliced_wasserstein
from diffx.lab.model import LabModel, one_thread
from diffx.lab.sampling import LabRun
from diffx.lab.train import TrainedLab
from diffx.render.grid import caption_bar, make_grid
from diffx.render.points import PlaneView, class_colors, color_key, points_panel
from diffx.sampling.schedules import NoiseSchedule, q_sample

ANCESTRAL = ("ddpm", "euler_a")  # samplers that add fresh noise at every step (SDE); the others follow an ODE
FIELD_TIMESTEPS = (0, 50, 150, 300, 600, 999)
VIEW = PlaneView(extent=3.0, size=200)
ARROW_GRID = 15  # arrows per side of the score-field panels
TRAILS = 10  # particles whose paths are drawn


# Why a sampler's grid differs from the others' at the same step count (`diffx.sampling.grids`).
OWN_GRID_REASONS = {"dpmpp_2m": "N + 1 points spaced, the last dropped, as diffusers does"}


def sampler_kind(sampler: str) -> str:
    return "ancestral (SDE)" if sampler in ANCESTRAL else "ODE"


def _timestep_span(timesteps: Sequence[float]) -> str:
    """"961, 921 … 1": the first two and the last of a grid's timesteps."""
    shown = [f"{t:.0f}" for t in timesteps]
    return ", ".join(shown) if len(shown) <= 3 else f"{shown[0]}, {shown[1]} … {shown[-1]}"


def grid_note(runs: Sequence[LabRun]) -> str | None:
    """The line that says which samplers step on another grid than the first run's (so their panels show another t
    at the same step), and why; None when every run visits the same timesteps."""
    first = runs[0].timesteps[:-1]  # the last entry is the sample's 0
    own = [run for run in runs if run.timesteps[:-1] != first]
    if not own:
        return None
    steps_on = ", ".join(f"{run.sampler} steps on t = {_timestep_span(run.timesteps[:-1])}"
                       f"{f' ({OWN_GRID_REASONS[run.sampler]})' if run.sampler in OWN_GRID_REASONS else ''}"
                       for run in own)
    return f"{steps_on}; the others on t = {_timestep_span(first)}"


def forward_marginal(schedule: NoiseSchedule, x0: Tensor, t: float, seed: int = 0) -> Tensor:
    """Points of q(x_t | x_0) for the data `x0` (N, 2) at timestep round(t) (DDPM eq. 4); x0 itself at t < 0."""
    if t < 0:
        return x0
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    return q_sample(schedule, x0, torch.tensor(int(round(t))), noise)


def arrow_starts() -> Tensor:
    """The ARROW_GRID² points (G², 2) a field is drawn at: a square grid inside the view, off its edges."""
    side = np.linspace(-VIEW.extent, VIEW.extent, ARROW_GRID + 2)[1:-1]
    return torch.from_numpy(np.stack(np.meshgrid(side, side), axis=-1).reshape(-1, 2)).float()


def scaled_arrows(starts: Tensor, vectors: Tensor, full: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """A field's vectors (G², 2) at `starts` as arrows to draw: (starts, arrows, |vector| of a full-length arrow).

    Near the data the fields are huge where they point back onto it and small elsewhere, so arrows are scaled to
    the 90th percentile of |vector| (or to `full`, to share one scale between fields) = 0.9 grid cells, and longer
    ones are clipped there."""
    norms = vectors.norm(dim=1, keepdim=True)  # (G², 1)
    full = max(float(norms.quantile(0.9)) if full is None else full, 1e-12)
    direction = vectors / norms.clamp(min=1e-12)  # (G², 2) unit vectors
    cell = 2 * VIEW.extent / (ARROW_GRID + 1)
    arrows = direction * (norms.clamp(max=full) / full) * 0.9 * cell
    return starts.numpy(), arrows.numpy(), full


@torch.no_grad()
def score_field(model: LabModel, schedule: NoiseSchedule, t: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The learned score s(x_t) = −ε̂/√(1 − ᾱ_t) ≈ ∇ log q(x_t) (denoising score matching, Vincent 2011:
    ∇ log q(x_t | x_0) = −ε/√(1 − ᾱ_t), so the ε-model's regression target is a scaled score) on an
    ARROW_GRID² grid: (starts (G², 2), arrows (G², 2), |s| of a full-length arrow), see `scaled_arrows`."""
    starts = arrow_starts()
    index = int(round(t))
    with one_thread():
        score = -model(starts, torch.tensor(float(index))) / schedule.sqrt_one_minus_alphas_cumprod[index]
    return scaled_arrows(starts, score)


def uniform_size(frames: list[Image.Image]) -> list[Image.Image]:
    """Pad frames onto white canvases of the largest size, so an animation's frames all match."""
    width, height = max(f.width for f in frames), max(f.height for f in frames)
    padded = []
    for frame in frames:
        canvas = Image.new("RGB", (width, height), (255, 255, 255))
        canvas.paste(frame, (0, 0))
        padded.append(canvas)
    return padded


def with_key(grid: Image.Image, names: Sequence[str], colors: np.ndarray, note: str | None = None) -> Image.Image:
    """The grid with a colour key of the classes under it, then an optional note line."""
    key = color_key(names, colors, grid.width)
    canvas = Image.new("RGB", (grid.width, grid.height + key.height), (255, 255, 255))
    canvas.paste(grid, (0, 0))
    canvas.paste(key, (0, grid.height))
    return canvas if note is None else caption_bar(canvas, note, font_size=13)


def _rows(cells: list, labels: list[str], columns: int) -> tuple[list[list], list[list[str]]]:
    return ([cells[i:i + columns] for i in range(0, len(cells), columns)],
            [labels[i:i + columns] for i in range(0, len(labels), columns)])


def reverse_frames(trained: TrainedLab, runs: Sequence[LabRun], x0: Tensor, labels: Tensor, columns: int = 4,
                   on_frame: Callable[[int, int], None] | None = None) -> list[Image.Image]:
    """One frame per step: q(x_t) of the data coloured by class, the learned score field at t, and each
    sampler's particles (from the same x_T) over the grey cloud of q(x_t) at its own t, with trails; a sampler
    whose grid is not the first's is named, with its grid, under the frame (`grid_note`).
    `on_frame(done, total)` is called after each frame is drawn."""
    schedule, steps = trained.schedule, len(runs[0].path) - 1
    note = grid_note(runs)
    trail_colors = class_colors(np.arange(TRAILS))
    frames = []
    for i in range(steps + 1):
        t_ref = runs[0].timesteps[i]
        final = i == steps
        t_label = "sample x_0" if final else f"t={t_ref:.0f}"
        truth = forward_marginal(schedule, x0, -1 if final else t_ref)
        starts, arrows, full = score_field(trained.model, schedule, max(t_ref, 0))
        cells = [points_panel(VIEW, truth, class_colors(labels), radius=1.0),
                 points_panel(VIEW, ghost=truth, arrows=(starts, arrows))]
        field_t = f"t={max(t_ref, 0):.0f}"
        cell_labels = [f"forward q(x_t | x_0)\n{t_label}", f"score −ε̂/√(1−ᾱ), arrow = {full:.3g}\n{field_t}"]
        for run in runs:
            t = run.timesteps[i]
            ghost = forward_marginal(schedule, x0, -1 if final else t)
            trails = (run.path[: i + 1, :TRAILS], trail_colors)
            cells.append(points_panel(VIEW, run.path[i], ghost=ghost, trails=trails, radius=1.0))
            where = "sample" if final else f"t={t:.0f}"
            cell_labels.append(f"{run.sampler} · {sampler_kind(run.sampler)}\n{where} · {run.nfe[i]} NFE")
        grid_cells, grid_labels = _rows(cells, cell_labels, columns)
        title = f"{trained.data.name} · {schedule.beta_schedule} β · {steps} steps · step {i}/{steps}"
        frame = with_key(make_grid(grid_cells, cell_labels=grid_labels, title=title, font_size=13),
                         trained.data.class_names, class_colors(np.arange(trained.data.num_classes)),
                         f"samplers: {len(x0)} particles from one x_T (blue) over q(x_t) at their t (grey); "
                         f"lines: the paths of {TRAILS} of them")
        frames.append(frame if note is None else caption_bar(frame, note, font_size=13))
        if on_frame is not None:
            on_frame(i + 1, steps + 1)
    return uniform_size(frames)


def forward_and_field(trained: TrainedLab, x0: Tensor, labels: Tensor,
                      timesteps: Sequence[int] = FIELD_TIMESTEPS) -> Image.Image:
    """Two rows over t: the forward process q(x_t | x_0) diffusing the labelled data, and the learned score
    field at the same t (arrows scaled per panel, the scale under each)."""
    schedule = trained.schedule
    forward, field, field_labels = [], [], []
    for t in timesteps:
        truth = forward_marginal(schedule, x0, t)
        starts, arrows, full = score_field(trained.model, schedule, t)
        forward.append(points_panel(VIEW, truth, class_colors(labels), radius=1.0))
        field.append(points_panel(VIEW, ghost=truth, arrows=(starts, arrows)))
        field_labels.append(f"full arrow: |s| ≥ {full:.3g} (clipped)")
    col_labels = [f"t={t} · ᾱ={float(schedule.alphas_cumprod[t]):.3f}" for t in timesteps]
    grid = make_grid([forward, field], row_labels=["q(x_t | x_0)", "score −ε̂/√(1−ᾱ)"], col_labels=col_labels,
                     cell_labels=[[""] * len(timesteps), field_labels], font_size=13,
                     title=f"{trained.data.name} · {schedule.beta_schedule} β: the forward process and the learned "
                           "score field over t")
    return with_key(grid, trained.data.class_names, class_colors(np.arange(trained.data.num_classes)))


def schedules_and_steps(runs: dict[str, list[LabRun]], x0: Tensor) -> Image.Image:
    """Rows: β schedules, columns: step counts; each cell the final samples over the data (grey), labelled
    with the sliced Wasserstein distance SW_1 to the data (lower is closer)."""
    rows, cell_labels = [], []
    for schedule_runs in runs.values():
        rows.append([points_panel(VIEW, run.samples, ghost=x0, radius=1.0) for run in schedule_runs])
        cell_labels.append([f"SW₁ {sliced_wasserstein(run.samples, x0):.3f}"
                            for run in schedule_runs])
    first = next(iter(runs.values()))
    return make_grid(rows, row_labels=[f"{name} β" for name in runs], font_size=13,
                     col_labels=[f"{len(run.path) - 1} steps · {run.nfe[-1]} NFE" for run in first],
                     cell_labels=cell_labels,
                     title=f"{first[0].sampler} samples (blue) over the data (grey): schedule × step count")


def guidance_sweep(trained: TrainedLab, runs: Sequence[tuple[float, LabRun]], x0: Tensor) -> Image.Image:
    """Classifier-free guidance over w: each class's samples in its colour over the data (grey); the
    RMS spread around each class mean shrinks as w grows (fidelity up, diversity down)."""
    cells = [points_panel(VIEW, run.samples, class_colors(run.labels), ghost=x0, radius=1.0) for _, run in runs]
    labels = [f"class spread {class_spread(run.samples, run.labels):.3f}" for _, run in runs]
    grid = make_grid([cells], col_labels=[f"w = {w:g}" for w, _ in runs], cell_labels=[labels], font_size=13,
                     title=f"{trained.data.name}: classifier-free guidance ε̂ = ε_∅ + w (ε_c − ε_∅), "
                           f"{runs[0][1].sampler}, coloured by the class asked for")
    return with_key(grid, trained.data.class_names, class_colors(np.arange(trained.data.num_classes)),
                    "class spread: RMS distance of a class's samples to their mean (w = 0 ignores the class)")
