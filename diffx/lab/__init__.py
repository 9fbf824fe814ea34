"""The 2-D diffusion lab: a tiny ε-model on point distributions, where the whole process is visible.

The lab is a second client of the real code, not a copy: it trains with `schedules.training_loss`
(L_simple, DDPM Algorithm 1) under a `schedules.NoiseSchedule`, and samples with every sampler of
`diffx.sampling` through the same `sample(eps_model, noise, sampling_grid(…), …)` the pipeline calls.

- data.py: two moons, a spiral, a grid of Gaussians, a PNG mask as a density; labelled (class = component)
- model.py: `LabModel`, an MLP ε_θ(x_t, t, c) with a null class, and `guided_eps` (classifier-free guidance)
- train.py: `train_lab_model` (L_simple with label dropout) · sampling.py: `run_sampler` (keeps the paths)
- metrics.py: sliced Wasserstein distance, per-class spread · figures.py: the pictures
- job.py: `LabJob` and `run_lab`, what `diffx lab` runs

    from diffx.lab import LabJob, run_lab
    result = run_lab(LabJob(data="spiral", steps=20))   # writes lab.gif
"""

from diffx.lab.data import DISTRIBUTIONS, PointDistribution, get_distribution, mask_density
from diffx.lab.job import DEFAULT_SAMPLERS, LabJob, LabResult, run_lab
from diffx.lab.metrics import class_spread, sliced_wasserstein
from diffx.lab.model import LabModel, guided_eps
from diffx.lab.sampling import LabRun, initial_noise, run_sampler
from diffx.lab.train import LabTrainConfig, TrainedLab, train_lab_model

__all__ = [
    "DEFAULT_SAMPLERS",
    "DISTRIBUTIONS",
    "LabJob",
    "LabModel",
    "LabResult",
    "LabRun",
    "LabTrainConfig",
    "PointDistribution",
    "TrainedLab",
    "class_spread",
    "get_distribution",
    "guided_eps",
    "initial_noise",
    "mask_density",
    "run_lab",
    "run_sampler",
    "sliced_wasserstein",
    "train_lab_model",
]
