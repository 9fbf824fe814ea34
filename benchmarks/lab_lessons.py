"""The lab's lessons (#34), measured: what `diffx lab --out lab.png --lessons classifier,variance --seed S` prints,
for three seeds (each trains its own ε-model, noisy classifier and variance model on the two moons, linear β).

Classifier guidance beside CFG: the mean cosine similarity of the classifier's ∇ log f_φ(y | x_t) and CFG's implicit
−(ε_c − ε_∅)/√(1 − ᾱ_t) over q(x_t)'s points, per t (`cos_t<t>`); each class's spread at every w under both
guidances (`spread_cfg_w<w>`, `spread_classifier_w<w>`; DDIM, 25 steps). Target: the spread falls as w rises.

The learned variance: SW₁ to the data (4000 samples) of DDPM at 5, 10 and 25 steps with fixed_small (β̃),
fixed_large (β) and the learned Σ_θ carried onto the respaced steps by Nichol & Dhariwal's log mapping
(`learned_log`) or by the fraction r of the way from β̃ to β (`learned_linear`), `sw_<steps>_<variance>`.
Target: at 10 steps the learned Σ_θ beats both fixed variances; `wins_10_<mapping>` counts the seeds where it does.

Run from the repository root:  python -m benchmarks.lab_lessons
The last line printed is every measurement's mean over the seeds, key=value.
"""

from __future__ import annotations

import time

import torch

from diffx.lab.data import get_distribution
from diffx.lab.lessons import LESSONS, LessonContext, run_lesson
from diffx.lab.sampling import initial_noise
from diffx.lab.train import LabTrainConfig, train_lab_model
from diffx.lab.variance import MAPPINGS
from diffx.sampling.schedules import NoiseSchedule

SEEDS = (0, 1, 2)
PARTICLES = 1000  # as `diffx lab`'s default
GUIDANCE = (0.0, 1.0, 2.0, 4.0, 8.0)


def measure(seed: int) -> dict[str, float]:
    """Both lessons' measurements for one seed, with the points, x_T and models `run_lab` would make."""
    data, config = get_distribution("moons"), LabTrainConfig()
    trained = train_lab_model(data, NoiseSchedule.create("linear"), config, seed)
    x0, _ = data.sample(PARTICLES, torch.Generator().manual_seed(seed + 1))
    context = LessonContext(trained, x0, initial_noise(PARTICLES, seed + 2), "ddim", 25, GUIDANCE, config, seed)
    return {key: value for lesson in LESSONS for key, value in run_lesson(lesson, context).measured.items()}


def main() -> None:
    start = time.perf_counter()
    runs = []
    for seed in SEEDS:
        runs.append(measure(seed))
        print(f"seed={seed} " + " ".join(f"{key}={value:.3f}" for key, value in runs[-1].items()), flush=True)
    wins = {mapping: sum(run[f"sw_10_learned_{mapping}"] < min(run["sw_10_fixed_small"], run["sw_10_fixed_large"])
                         for run in runs) for mapping in MAPPINGS}
    falls = {guidance: sum(all(run[f"spread_{guidance}_w{later:g}"] < run[f"spread_{guidance}_w{earlier:g}"]
                               for earlier, later in zip(GUIDANCE, GUIDANCE[1:], strict=False)) for run in runs)
             for guidance in ("cfg", "classifier")}
    print(f"seconds={time.perf_counter() - start:.0f} seeds={len(SEEDS)} "
          + " ".join(f"spread_falls_{guidance}={count}" for guidance, count in falls.items()))
    means = {key: sum(run[key] for run in runs) / len(runs) for key in runs[0]}
    print(" ".join(f"{key}={value:.3f}" for key, value in means.items()) + " "
          + " ".join(f"wins_10_{mapping}={count}" for mapping, count in wins.items()))


if __name__ == "__main__":
    main()
