"""Flow matching against diffusion on the same MLP, data and budget (issue #34): the flow model samples the moons as
well as the ε-model's DDIM at 25 steps, and — measured in the same units — its ODE paths are as curved as diffusion's:
Gaussian flow matching and the probability-flow ODE are one ODE in two parameterisations (reflow is what straightens,
tests/lab/test_reflow.py). The bounds are test_lab_quality's: SW₁ to N_SAMPLES fresh points of the two moons."""

import pytest
import torch

from diffx.lab.data import get_distribution
from diffx.lab.flow import flow_times, run_flow, train_flow_model
from diffx.lab.flow_ddim import straight_line_path
from diffx.lab.metrics import path_straightness, sliced_wasserstein
from diffx.lab.sampling import initial_noise, run_sampler
from diffx.lab.train import LabTrainConfig, train_lab_model
from diffx.sampling.schedules import NoiseSchedule

N_SAMPLES = 2000
STEPS = 25
TRAIN = LabTrainConfig(steps=500, batch=512)  # test_lab_quality's budget
SW_BOUND = 0.15
FLOW_OVER_DDIM = 1.25  # the target is "within 10% of DDIM or better" (measured: 0.067 against 0.081); a margin here
SAME_ODE = 0.2  # the two models' straightness in the same units differ by less than this fraction (measured 8%)


@pytest.fixture(scope="module")
def models():
    data = get_distribution("moons")
    diffusion = train_lab_model(data, NoiseSchedule.create("linear"), TRAIN, seed=0)
    flow = train_flow_model(data, TRAIN, seed=0)
    target, _ = data.sample(N_SAMPLES, torch.Generator().manual_seed(1))
    noise = initial_noise(N_SAMPLES, 2)
    return diffusion, flow, target, noise, run_sampler(diffusion.model, diffusion.schedule, "ddim", STEPS, noise)


@pytest.mark.parametrize("sampler", ["flow_euler", "flow_heun"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_the_flow_model_samples_the_data_as_well_as_ddim(models, sampler, shift):
    _, flow, target, noise, ddim = models
    distance = sliced_wasserstein(run_flow(flow.model, sampler, flow_times(STEPS, shift), noise).samples, target)
    ddim_distance = sliced_wasserstein(ddim.samples, target)
    print(f"{sampler}, shift {shift}: SW1 {distance:.4f} (ddim {ddim_distance:.4f})")
    assert distance < SW_BOUND and distance < FLOW_OVER_DDIM * ddim_distance


def test_one_euler_step_of_the_flow_gives_the_data_mean(models):
    """At t = 1 the best velocity is ε − E[x_0]: one step lands every particle near the mean, far from the moons."""
    _, flow, target, noise, _ = models
    samples = run_flow(flow.model, "flow_euler", flow_times(1), noise).samples
    assert sliced_wasserstein(samples, target) > 4 * SW_BOUND
    assert float((samples.mean(0) - target.mean(0)).norm()) < 0.1 and float(samples.std(0).max()) < 0.5


def test_in_the_same_units_both_odes_bend_alike(models):
    diffusion, flow, _, noise, ddim = models
    flow_path = run_flow(flow.model, "flow_euler", flow_times(STEPS), noise).path
    ddim_straightness = path_straightness(straight_line_path(ddim, diffusion.schedule))
    flow_straightness = path_straightness(flow_path)
    print(f"length/chord: ddim {ddim_straightness:.3f} flow {flow_straightness:.3f}")
    assert min(ddim_straightness, flow_straightness) > 1.3  # curved, both
    assert abs(flow_straightness - ddim_straightness) < SAME_ODE * ddim_straightness
