"""The 2-D diffusion lab: a tiny ε-model on point distributions, where the whole process is visible.

The lab is a second client of the real code, not a copy: it trains with `schedules.training_loss`
(L_simple, DDPM Algorithm 1) under a `schedules.NoiseSchedule`, and samples with every sampler of
`diffx.sampling` through the same `sample(eps_model, noise, sampling_grid(…), …)` the pipeline calls.

- data.py: two moons, a spiral, a grid of Gaussians, a PNG mask as a density; labelled (class = component)
- model.py: `LabModel`, an MLP ε_θ(x_t, t, c) with a null class, and `guided_eps` (classifier-free guidance)
- train.py: `train_lab_model` (L_simple with label dropout) · sampling.py: `run_sampler` (keeps the paths)
- metrics.py: sliced Wasserstein distance, per-class spread · figures.py: the pictures
- classifier.py: a noisy classifier f_φ(y | x_t, t), classifier guidance, CFG's implicit classifier (#34)
- variance.py: the learned reverse variance Σ_θ (ε̂ and v, L_hybrid, DDPM with Σ_θ on respaced steps) (#34)
- lessons.py: the lessons `diffx lab --lessons` adds (train, measure, draw) · lesson_figures.py: their pictures
- job.py: `LabJob` and `run_lab`, what `diffx lab` runs
- flow.py: flow matching (the velocity loss, flow Euler and Heun over SD3's shifted t) · flow_ddim.py: the flow model
  through diffx's DDIM, the same samples · reflow.py: reflow (Liu et al. 2022) · flow_figures.py, flow_job.py:
  its pictures, and the flow half of `run_lab` (`LabJob(objective="flow" | "both")`)

    from diffx.lab import LabJob, run_lab
    result = run_lab(LabJob(data="spiral", steps=20))   # writes lab.gif
"""

from diffx.lab.classifier import classifier_gradient, classifier_guided_eps, implicit_gradient, train_classifier
from diffx.lab.data import DISTRIBUTIONS, PointDistribution, get_distribution, mask_density
from diffx.lab.flow import FLOW_SAMPLERS, TrainedFlow, flow_matching_loss, flow_times, run_flow, train_flow_model
from diffx.lab.flow_ddim import equivalence_gap, flow_by_ddim
from diffx.lab.flow_job import OBJECTIVES, FlowResult
from diffx.lab.job import DEFAULT_SAMPLERS, LabJob, LabResult, run_lab
from diffx.lab.lessons import LESSONS, run_lesson
from diffx.lab.metrics import class_spread, path_straightness, sliced_wasserstein
from diffx.lab.model import LabModel, guided_eps
from diffx.lab.reflow import reflow_pairs, train_reflow
from diffx.lab.sampling import LabRun, initial_noise, run_sampler
from diffx.lab.train import LabTrainConfig, TrainedLab, train_lab_model
from diffx.lab.variance import hybrid_loss, sample_learned_variance, train_variance_model

__all__ = [
    "DEFAULT_SAMPLERS",
    "DISTRIBUTIONS",
    "FLOW_SAMPLERS",
    "LESSONS",
    "OBJECTIVES",
    "FlowResult",
    "LabJob",
    "LabModel",
    "LabResult",
    "LabRun",
    "LabTrainConfig",
    "PointDistribution",
    "TrainedFlow",
    "TrainedLab",
    "class_spread",
    "classifier_gradient",
    "classifier_guided_eps",
    "equivalence_gap",
    "flow_by_ddim",
    "flow_matching_loss",
    "flow_times",
    "get_distribution",
    "guided_eps",
    "hybrid_loss",
    "implicit_gradient",
    "initial_noise",
    "mask_density",
    "path_straightness",
    "reflow_pairs",
    "run_flow",
    "run_lab",
    "run_lesson",
    "run_sampler",
    "sample_learned_variance",
    "sliced_wasserstein",
    "train_classifier",
    "train_flow_model",
    "train_lab_model",
    "train_reflow",
    "train_variance_model",
]
