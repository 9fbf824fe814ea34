"""How samplers travel: convergence against model evaluations, and the latent path of each sampler.

Every sampler integrates the same reverse process (the probability-flow ODE of Song et al. 2021, or its
SDE for the ancestral ones) on its own grid. Run from the same x_T (the seed's noise), the deterministic
ones should land on the same answer, and a very fine solve of the ODE — by default DPM-Solver++(2M) at
200 steps — stands in for the exact one. `sampler_paths` runs the pipeline once per sampler and step
count with an observer (`PathRecorder`) that keeps, at every model evaluation k, the model input x_t,
the estimate x̂0 and how many times the denoiser has been called (Heun calls it twice per step, 2N − 1
in all: the count comes from the calls, not from a formula). From those it measures (`Convergence`):

- ‖x̂0_k − x̂0_final‖: how far the running guess of the answer still is from the run's last guess;
- ‖x_{i+1} − x_i‖: the length of each step between the states on the sampler's grid (x_N = the final latent);
- ‖x̂0_k − x_ref‖ and ‖x_final − x_ref‖: the distance to the reference solution — plotted against the
  number of model evaluations (NFE), the "error vs NFE" curves of Karras et al. 2022 (fig. 2) and
  Lu et al. 2022 (DPM-Solver++, fig. 3).

Distances are root-mean-square over the latent's elements, ‖·‖₂ / √n, so they read in latent units at any
image size. `pca_2d` projects every path onto the two directions along which all of them vary most, so
they can be drawn in one picture. The same per-step measures come from a saved trace (`trace_convergence`).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffx.errors import InvalidArgumentError, check_choice
from diffx.pipeline.generation import generate
from diffx.pipeline.observers import ImageRun, Observer
from diffx.pipeline.settings import GenerationSettings
from diffx.render.charts import convergence_svg
from diffx.render.paths import PathLine, plot_convergence, plot_paths
from diffx.sampling.flow import FLOW_SCHEDULE
from diffx.sampling.grids import SAMPLERS
from diffx.sampling.samplers import StepCallback, StepRecord
from diffx.trace.record import Trace

if TYPE_CHECKING:
    from diffx.models.stable_diffusion import StableDiffusion

DEFAULT_SAMPLERS = ("ddim", "euler", "euler_a", "heun", "dpmpp_2m")
FLOW_DEFAULT_SAMPLERS = ("euler", "heun")  # a rectified-flow model's (its DDIM is its Euler)
# Without --spacing every run uses trailing spacing, which starts every step count at t = T − 1: SD's
# "leading" starts a short run lower down (25 steps: t = 961; 200 DPM++ steps: t = 801), and would treat
# the same x_T as noise at different levels, i.e. solve different ODEs.
CONVERGENCE_SPACING = "trailing"
SAMPLER_COLOURS = {"ddim": "#1f77b4", "euler": "#ff7f0e", "euler_a": "#2ca02c", "heun": "#d62728",
                   "dpmpp_2m": "#9467bd", "ddpm": "#8c564b"}
REFERENCE_COLOUR = "#7f7f7f"


def is_deterministic(sampler: str, eta: float = 0.0) -> bool:
    """Whether `sampler` follows the ODE (no fresh noise per step): DDPM and Euler a never, DDIM only at η = 0."""
    return sampler in ("euler", "heun", "dpmpp_2m") or (sampler == "ddim" and eta == 0)


@dataclass(frozen=True)
class Reference:
    """The stand-in for the exact ODE solution: a deterministic sampler at many steps."""

    sampler: str = "dpmpp_2m"
    steps: int = 200

    @classmethod
    def parse(cls, text: str) -> Reference:
        """"dpmpp_2m:200" → Reference("dpmpp_2m", 200)."""
        sampler, _, steps = text.partition(":")
        if not steps.strip().isdigit() or int(steps) < 1:
            raise InvalidArgumentError(f"reference {text!r} is not SAMPLER:STEPS; write it like dpmpp_2m:200")
        return cls(check_choice("reference sampler", sampler.strip(), SAMPLERS), int(steps))


def rms(difference: Tensor) -> Tensor:
    """‖·‖₂ / √n over all but the first axis: (S, C, h, w) → (S,)."""
    return difference.flatten(1).pow(2).mean(1).sqrt()


def on_grid(timesteps: Sequence[float]) -> np.ndarray:
    """(S,) bool: which evaluations saw a state on the sampler's grid. Heun's predictor (an Euler guess at
    t_{i+1}, evaluated and then replaced by the corrected state at the same t) is the one that does not."""
    t = np.asarray(timesteps, dtype=float)
    return np.append(t[:-1] != t[1:], True)


def grid_states(path: Tensor, timesteps: Sequence[float]) -> Tensor:
    """The states on the grid, (N + 1, C, h, w), of a `path` (S + 1, C, h, w) of model inputs and the final latent."""
    return torch.cat([path[:-1][torch.from_numpy(on_grid(timesteps))], path[-1:]])


@dataclass
class Convergence:
    """The measures of one run (RMS distances): per model evaluation k = 0 … S − 1, and per step i = 0 … N − 1."""

    nfe: np.ndarray  # (S,) model evaluations made when evaluation k has reported (1, 2, …)
    timesteps: np.ndarray  # (S,) the t the model saw
    x0_change: np.ndarray  # (S,) ‖x̂0_k − x̂0_final‖, x̂0_final = the last evaluation's
    step_nfe: np.ndarray  # (N,) model evaluations made when step i has landed
    step_size: np.ndarray  # (N,) ‖x_{i+1} − x_i‖ between grid states, x_N = the final latent
    reference_error: np.ndarray | None = None  # (S,) ‖x̂0_k − x_ref‖
    final_error: float | None = None  # ‖x_final − x_ref‖


def convergence(path: Tensor, x0: Tensor, nfe: Sequence[int], timesteps: Sequence[float],
                reference: Tensor | None = None) -> Convergence:
    """The measures of one run from its `path` (S + 1, C, h, w) — the model input at each evaluation, then
    the final latent — and its x̂0 estimates (S, C, h, w); `reference` (C, h, w) is x_ref."""
    path, x0, nfe = path.double(), x0.double(), np.asarray(nfe)
    states = grid_states(path, timesteps)  # (N + 1, C, h, w)
    # A step has landed just before the model first sees its new state (after the last step: at the end).
    step_nfe = np.append(nfe[on_grid(timesteps)][1:] - 1, nfe[-1])
    result = Convergence(nfe=nfe, timesteps=np.asarray(timesteps, dtype=float), x0_change=rms(x0 - x0[-1]).numpy(),
                         step_nfe=step_nfe, step_size=rms(states[1:] - states[:-1]).numpy())
    if reference is not None:
        result.reference_error = rms(x0 - reference.double()).numpy()
        result.final_error = float(rms((path[-1] - reference.double())[None])[0])
    return result


class PathRecorder:
    """An observer of one generation: counts the denoiser's calls (its guidance hook runs once per call)
    and keeps, per evaluation, the model input x_t and x̂0 in float32 (a `Tracer` stores fp16, too coarse for
    distances that fall to 1e-3)."""

    def __init__(self) -> None:
        self.calls = 0
        self.nfe: list[int] = []
        self.timesteps: list[float] = []
        self.points: list[Tensor] = []
        self.x0: list[Tensor] = []

    def observer(self, run: ImageRun | None = None) -> Observer:
        return Observer(on_step=self.on_step, on_guidance=self.on_call)

    def on_call(self, eps_uncond: Tensor | None, eps_cond: Tensor) -> None:
        self.calls += 1

    def on_step(self, record: StepRecord) -> None:
        self.nfe.append(self.calls)
        self.timesteps.append(record.timestep)
        self.points.append(record.x[0].detach().float().cpu().clone())  # (C, h, w)
        self.x0.append(record.x0_pred[0].detach().float().cpu().clone())


@dataclass
class SamplerRun:
    """One sampler at one step count, from the shared x_T."""

    sampler: str
    steps: int
    nfe: int  # denoiser calls, counted
    path: Tensor  # (S + 1, C, h, w): model input x_t at each evaluation, then the final latent
    x0: Tensor  # (S, C, h, w) x̂0 at each evaluation
    convergence: Convergence
    image: np.ndarray  # (H, W, 3) uint8, the decoded result

    @property
    def states(self) -> Tensor:
        """(N + 1, C, h, w): x_T, the state at each grid timestep (as the model saw it), the final latent."""
        return grid_states(self.path, self.convergence.timesteps)

    @property
    def label(self) -> str:
        return f"{self.sampler} ({self.steps} steps, {self.nfe} NFE)"


@dataclass
class SamplerPaths:
    """What `sampler_paths` measured: one run per sampler and step count, and the reference run."""

    settings: GenerationSettings  # resolved (prompt, guidance, seed, spacing; sampler and steps vary)
    samplers: list[str]
    steps: list[int]
    reference: SamplerRun
    runs: list[SamplerRun]  # sampler-major: for each sampler, each step count

    def run(self, sampler: str, steps: int | None = None) -> SamplerRun:
        """The run of `sampler` at `steps` (default: the most steps asked for)."""
        steps = max(self.steps) if steps is None else steps
        return next(r for r in self.runs if r.sampler == sampler and r.steps == steps)

    def endpoint_errors(self, sampler: str) -> list[tuple[int, float]]:
        """(NFE, ‖x_final − x_ref‖) of `sampler` at each step count: one point of the Karras/Lu curve each."""
        return [(r.nfe, r.convergence.final_error) for r in self.runs if r.sampler == sampler]


def _run(model: StableDiffusion, settings: GenerationSettings, reference: Tensor | None,
         progress: StepCallback | None) -> SamplerRun:
    recorder = PathRecorder()
    generation = generate(model, settings, observe=recorder.observer, progress=progress)
    final = generation.latents[0].float()  # (C, h, w)
    path = torch.stack([*recorder.points, final])
    x0 = torch.stack(recorder.x0)
    return SamplerRun(sampler=settings.sampler, steps=settings.steps, nfe=recorder.calls, path=path, x0=x0,
                      convergence=convergence(path, x0, recorder.nfe, recorder.timesteps, reference),
                      image=generation.images[0])


def check_samplers(samplers: Sequence[str]) -> list[str]:
    """Sampler names, each known and none twice; at least one."""
    if not samplers:
        raise InvalidArgumentError("no samplers given; pass e.g. ddim,euler,heun")
    samplers = [name.lower() for name in samplers]  # DDIM and ddim are one sampler
    for name in samplers:
        check_choice("sampler", name, SAMPLERS)
    repeated = sorted({name for name in samplers if list(samplers).count(name) > 1})
    if repeated:
        raise InvalidArgumentError(f"sampler {', '.join(repeated)} is given twice; name each sampler once")
    return list(samplers)


def _flow(model: StableDiffusion) -> bool:
    return model.config.scheduler.beta_schedule == FLOW_SCHEDULE


def default_samplers(model: StableDiffusion) -> tuple[str, ...]:
    """The samplers `sampler_paths` runs when none are named: a rectified-flow model's two, or DEFAULT_SAMPLERS."""
    return FLOW_DEFAULT_SAMPLERS if _flow(model) else DEFAULT_SAMPLERS


def sampler_paths(model: StableDiffusion, settings: GenerationSettings,
                  samplers: Sequence[str] | None = None, steps: Sequence[int] | None = None,
                  reference: Reference | None = None, progress: StepCallback | None = None) -> SamplerPaths:
    """Run every sampler from the seed's x_T at each step count in `steps` (default: `settings.steps`, else
    the model's), and the `reference` solve from the same x_T; measure each run (`Convergence`). Default samplers
    and reference: DEFAULT_SAMPLERS and DPM-Solver++ at 200 steps; for a rectified-flow model (SD3) Euler and
    Heun, and Heun at 200 steps.

    The prompt, guidance, seed, schedule and Karras setting come from `settings`; its spacing too, or
    `CONVERGENCE_SPACING` when it has none. Everything is checked before the first run.
    """
    samplers = check_samplers(default_samplers(model) if samplers is None else samplers)
    reference = reference if reference is not None else Reference("heun") if _flow(model) else Reference()
    if not is_deterministic(reference.sampler, settings.eta):
        raise InvalidArgumentError(f"the reference {reference.sampler!r} adds noise at every step, so it solves "
                                   "no ODE; pick ddim, euler, heun or dpmpp_2m")
    base = replace(settings, spacing=settings.spacing or CONVERGENCE_SPACING)
    step_counts = list(steps) if steps else [base.resolved(model).steps]
    if len(set(step_counts)) != len(step_counts):
        raise InvalidArgumentError(f"steps {step_counts} repeat a value; give each step count once")
    runs = [replace(base, sampler=s, steps=n) for s in samplers for n in sorted(step_counts)]
    reference_settings = replace(base, sampler=reference.sampler, steps=reference.steps).resolved(model)
    runs = [run.resolved(model) for run in runs]
    solved = _run(model, reference_settings, None, progress)  # its own end is x_ref: no distance to add
    x_ref = solved.path[-1]
    return SamplerPaths(settings=reference_settings, samplers=samplers, steps=sorted(step_counts),
                        reference=solved, runs=[_run(model, run, x_ref, progress) for run in runs])


def pca_2d(paths: Sequence[Tensor]) -> tuple[list[np.ndarray], np.ndarray]:
    """Project every path (P_i, C, h, w) onto the first two principal components of all their points together.

    Returns the (P_i, 2) coordinates of each path, divided by √n (n = C·h·w) so that distances in the plane are
    RMS distances like the charts', and the fraction of the points' variance each of the two axes holds. The
    signs are fixed (each axis points where the first path ends), so a run always looks the same.
    """
    points = torch.cat([path.flatten(1) for path in paths]).double()  # (ΣP_i, D)
    centred = points - points.mean(0)
    _, singular, directions = torch.linalg.svd(centred, full_matrices=False)  # directions: (min(ΣP, D), D)
    axes = directions[:2]
    ends = centred[len(paths[0]) - 1] @ axes.T
    axes = axes * torch.where(ends < 0, -1.0, 1.0).to(axes)[:, None]
    variance = singular.pow(2)
    share = (variance[:2] / variance.sum().clamp_min(1e-30)).numpy()
    coordinates = (centred @ axes.T).numpy() / np.sqrt(points.shape[1])
    bounds = np.cumsum([0] + [len(path) for path in paths])
    return [coordinates[start:stop] for start, stop in zip(bounds[:-1], bounds[1:], strict=True)], share


def _subtitle(paths: SamplerPaths) -> str:
    s = paths.settings
    prompt = f"“{s.prompt}”" if s.prompt else "unconditional"
    return (f"{prompt} · seed {s.seed} · guidance {s.guidance:g} · {s.spacing} spacing"
            f"{' · Karras σ' if s.karras else ''} · reference: {paths.reference.sampler} at "
            f"{paths.reference.steps} steps")


def convergence_chart(paths: SamplerPaths) -> Image.Image:
    """The error-vs-NFE chart of the longest runs: ‖x̂0_k − x_ref‖ and ‖x̂0_k − x̂0_final‖ per evaluation and
    ‖x_{i+1} − x_i‖ per step against NFE, one line per sampler (dashed: adds noise); with several step counts
    also ‖x_final − x_ref‖ of each run against its NFE (the Karras/Lu curve)."""
    longest = [paths.run(sampler) for sampler in paths.samplers]
    noisy = {sampler: not is_deterministic(sampler, paths.settings.eta) for sampler in paths.samplers}

    def line(sampler: str, x: np.ndarray, y: np.ndarray) -> PathLine:
        return PathLine(sampler, x, y, SAMPLER_COLOURS[sampler], dashed=noisy[sampler])

    lines = {key: [line(run.sampler, run.convergence.nfe, getattr(run.convergence, key)) for run in longest]
             for key in ("reference_error", "x0_change")}
    steps = [line(run.sampler, run.convergence.step_nfe, run.convergence.step_size) for run in longest]
    endpoints = None
    if len(paths.steps) > 1:
        endpoints = [line(sampler, *map(np.asarray, zip(*paths.endpoint_errors(sampler), strict=True)))
                     for sampler in paths.samplers]
    return plot_convergence(lines["reference_error"], lines["x0_change"], steps, endpoints,
                            title=f"convergence at {max(paths.steps)} steps — {_subtitle(paths)}")


def path_picture(paths: SamplerPaths) -> Image.Image:
    """Every sampler's latent path (`SamplerRun.states`: x_T, each grid state, the final latent) from the same
    x_T, and the reference solve, projected on the two principal components of all of them."""
    runs = [paths.reference] + [paths.run(sampler) for sampler in paths.samplers]
    projected, share = pca_2d([run.states for run in runs])
    eta = paths.settings.eta
    lines = [PathLine(f"reference: {paths.reference.label}", projected[0][:, 0], projected[0][:, 1],
                      REFERENCE_COLOUR, reference=True)]
    lines += [PathLine(run.label + ("" if is_deterministic(run.sampler, eta) else " · adds noise"),
                       coords[:, 0], coords[:, 1], SAMPLER_COLOURS[run.sampler],
                       dashed=not is_deterministic(run.sampler, eta), image=run.image)
              for run, coords in zip(runs[1:], projected[1:], strict=True)]
    return plot_paths(lines, share, title=f"latent paths from the same x_T — {_subtitle(paths)}")


TRACE_KEYS = ("latents", "x0", "final_latent")  # what the measures of a saved trace need


def trace_convergence(trace: Trace) -> Convergence:
    """`Convergence` of a saved trace (no reference): its per-step "latents" (model inputs), "x0" and
    "final_latent". A trace records one row per model evaluation, so NFE is the row number."""
    missing = [key for key in TRACE_KEYS if key not in trace.tensors]
    if missing:
        raise InvalidArgumentError(f"the trace has no {', '.join(missing)}, which the convergence chart needs; "
                                   "record a new one with `diffx trace --save-trace`")
    tensors = trace.tensors
    path = torch.cat([tensors["latents"].float(), tensors["final_latent"].float()[None]])
    steps = trace.num_steps
    return convergence(path, tensors["x0"].float(), range(1, steps + 1), tensors["timesteps"].tolist())


def _trace_lines(trace: Trace) -> tuple[str, Convergence]:
    sampler = trace.settings.sampler
    return sampler, trace_convergence(trace)


def trace_convergence_chart(trace: Trace) -> Image.Image:
    """The single-sampler convergence chart of a saved trace: ‖x̂0_k − x̂0_final‖ and ‖x_{i+1} − x_i‖ against NFE."""
    sampler, measured = _trace_lines(trace)
    colour = SAMPLER_COLOURS.get(sampler, REFERENCE_COLOUR)
    prompt = trace.settings.prompt
    return plot_convergence(None, [PathLine(sampler, measured.nfe, measured.x0_change, colour)],
                            [PathLine(sampler, measured.step_nfe, measured.step_size, colour)],
                            title=f"convergence of this trace — “{prompt}”, {sampler}, {trace.num_steps} "
                                  "model evaluations")


def trace_convergence_svg(trace: Trace) -> str:
    """The small inline-SVG chart for the HTML report: the two measures of `trace_convergence`, log y, by NFE."""
    _, measured = _trace_lines(trace)
    return convergence_svg({"‖x̂0 − x̂0 final‖": (measured.nfe, measured.x0_change),
                            "step ‖x_{i+1} − x_i‖": (measured.step_nfe, measured.step_size)})


def convergence_section(traces: Sequence[Trace]) -> str:
    """The HTML report's card under the loop: the small chart of each trace (`trace_convergence_svg`), captioned
    with its sampler; "" when no trace holds what the measures need."""
    charts = "".join(
        f'<figure style="margin: 0; flex: 1 1 300px; max-width: 420px"><figcaption class="note">'
        f'{html.escape(trace.settings.sampler)}, {trace.num_steps} model '
        f'evaluations</figcaption><div style="width: 100%">{trace_convergence_svg(trace)}</div></figure>'
        for trace in traces if all(key in trace.tensors for key in TRACE_KEYS))
    if not charts:
        return ""
    return ('<section class="card" aria-labelledby="convergence-title"><h2 id="convergence-title">How fast the run '
            'settles</h2><p class="note">RMS distances in latent units, log scale, against model evaluations: how '
            "far x̂0 still is from the last x̂0 (blue), and the length of each step between the states on the "
            "sampler's grid (red). A curve that falls steadily is a run that converges; `diffx paths` compares "
            f'samplers.</p><div style="display: flex; flex-wrap: wrap; gap: 16px">{charts}</div></section>')
