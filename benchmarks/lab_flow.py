"""Flow matching in the lab (issue #34): `diffx lab --objective both` timed from before the imports, then the same
job with one reflow round through the API, printing every target of the issue.

Measured, all on the two moons with the default budget (750 Adam steps, the same MLP and seed for both models),
1000 particles from one x_T, SW₁ to 1000 data points:
- sw1_ddim, sw1_flow: diffusion's DDIM and flow Euler at 25 steps (target: flow within 10% of DDIM, or better)
- straightness_diffusion, straightness_flow, straightness_reflow: mean path length / distance between its ends, all
  in the flow's units x_t = (1 − t) x_0 + t ε (diffusion's VP states divided by √ᾱ + √(1 − ᾱ)), and the
  diffusion and flow paths in the VP units x_t = √ᾱ x_0 + √(1 − ᾱ) ε the lab draws diffusion in (_vp)
  (targets: flow ≤ diffusion; reflow ≤ 1.05)
- reflow_sw1_1step, reflow_sw1_2step, base_sw1_1step (targets: reflow ≤ 0.2 at 1 step, base ≥ 2× worse)
- equivalence_max_diff: max |flow Euler − diffx's DDIM on the flow's ε̂| after 25 steps, float64 (target ≤ 1e-4)
- both_seconds: the `--objective both` command, process start to GIF, 2 threads (target ≤ 40 s); cpu_seconds too

Run from the repository root:  python -m benchmarks.lab_flow
The last line printed holds the key=value pairs.
"""

from __future__ import annotations

import time

START_WALL, START_CPU = time.perf_counter(), time.process_time()

import os  # noqa: E402  (imports after the clock starts: they are part of what a user waits for)
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from diffx.cli import app  # noqa: E402

THREADS = 2
TARGET_SECONDS = 40.0


def measure() -> dict[str, float]:
    """The default job's two models, trained and sampled as `run_lab` does (the same seeds, so the same numbers as
    `diffx lab --objective both --reflow`), and every target's value."""
    import torch

    from diffx.lab.data import get_distribution
    from diffx.lab.flow_job import run_flow_part
    from diffx.lab.job import LabJob
    from diffx.lab.metrics import path_straightness, sliced_wasserstein
    from diffx.lab.sampling import initial_noise, run_sampler
    from diffx.lab.train import train_lab_model
    from diffx.sampling.schedules import NoiseSchedule

    job = LabJob(objective="both", reflow=True)
    data = get_distribution(job.data)
    x0, _ = data.sample(job.particles, torch.Generator().manual_seed(job.seed + 1))
    noise = initial_noise(job.particles, job.seed + 2)
    diffusion = train_lab_model(data, NoiseSchedule.create(job.schedule), job.train, job.seed)
    ddim = run_sampler(diffusion.model, diffusion.schedule, "ddim", job.steps, noise)
    flow = run_flow_part(job, data, x0, noise, diffusion)
    euler = flow.panels[0].run
    t = torch.tensor(euler.timesteps)[:, None, None]
    euler_vp = euler.path / ((1 - t) ** 2 + t**2).sqrt().to(euler.path.dtype)  # flow state / √((1 − t)² + t²)
    result = flow.result
    return {
        "sw1_ddim": sliced_wasserstein(ddim.samples, x0), "sw1_flow": result.sliced_wasserstein["flow_euler"],
        "sw1_flow_heun": result.sliced_wasserstein["flow_heun"],
        "straightness_diffusion": result.straightness["ddim"], "straightness_flow": result.straightness["flow_euler"],
        "straightness_reflow": result.straightness["reflow_euler"],
        "straightness_diffusion_vp": path_straightness(ddim.path), "straightness_flow_vp": path_straightness(euler_vp),
        "reflow_sw1_1step": result.few_steps["reflow"][1], "reflow_sw1_2step": result.few_steps["reflow"][2],
        "base_sw1_1step": result.few_steps["flow"][1], "base_sw1_2step": result.few_steps["flow"][2],
        "equivalence_max_diff": result.equivalence_gap,
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        app(["lab", "--objective", "both", "--gif", str(Path(folder) / "both.gif"), "--threads", str(THREADS)],
            standalone_mode=False)
        seconds, cpu = time.perf_counter() - START_WALL, time.process_time() - START_CPU
    values = measure()
    print(f"cpu_seconds={cpu:.1f} load_1min={os.getloadavg()[0]:.1f} target_seconds={TARGET_SECONDS:g} "
          f"sw1_ratio={values['sw1_flow'] / values['sw1_ddim']:.3f}")
    shown = {key: f"{value:.2e}" if key == "equivalence_max_diff" else f"{value:.4f}" for key, value in values.items()}
    print(" ".join(f"{key}={value}" for key, value in shown.items()) + f" both_seconds={seconds:.1f}")


if __name__ == "__main__":
    main()
