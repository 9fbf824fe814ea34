"""lab/variance.py: Σ_θ interpolates β̃ and β (eq. 15); the hybrid loss trains only Σ through L_vlb (the mean
behind a stop-gradient) and learns the variance the data calls for (β for a unit Gaussian, β̃ for a point); the
respaced chain's β, β̃ are DDPM's own; the learned-variance sampler is DDPM's with its variance swapped; at 10 steps
the learned Σ_θ (linear mapping) lands closer to the data than either fixed variance."""

import pytest
import torch

from diffx.errors import InvalidArgumentError
from diffx.lab.data import PointDistribution, get_distribution
from diffx.lab.metrics import sliced_wasserstein
from diffx.lab.model import LabModel
from diffx.lab.sampling import initial_noise, run_denoiser
from diffx.lab.train import LabTrainConfig
from diffx.lab.variance import (
    RespacedChain,
    eps_head,
    hybrid_loss,
    interpolated_log_variance,
    learned_fraction,
    sample_learned_variance,
    split_output,
    train_variance_model,
    training_variances,
)
from diffx.sampling.schedules import NoiseSchedule, q_sample

SCHEDULE = NoiseSchedule.create("linear")
SMALL_T = (1, 3)  # where β̃_t and β_t differ most, so L_vlb sees Σ best
TRAIN = LabTrainConfig(steps=300, batch=512)


def _learned_fraction_near_the_data(draw) -> float:
    """The median r at SMALL_T of a variance model trained on the points `draw` makes."""
    data = PointDistribution("test", ("all",), lambda n, g: (draw(n, g), torch.zeros(n, dtype=torch.long)))
    model = train_variance_model(data, SCHEDULE, TRAIN)
    points, _ = data.sample(2000, torch.Generator().manual_seed(1))
    fractions = []
    with torch.no_grad():
        for t in SMALL_T:
            x_t = q_sample(SCHEDULE, points, torch.tensor(t), torch.randn(points.shape))
            _, v = split_output(model(x_t, torch.tensor(float(t))))
            fractions.append(learned_fraction(v, SCHEDULE, t).median())
    return float(torch.stack(fractions).mean())


def test_sigma_interpolates_beta_tilde_and_beta_in_the_log_domain():
    betas, beta_tildes = training_variances(SCHEDULE)
    assert torch.all(beta_tildes < betas) and beta_tildes[0] == beta_tildes[1]  # β̃_0 = 0, clipped at β̃_1
    v = torch.tensor([0.0, 1.0, 0.5])
    log_variance = interpolated_log_variance(v, betas[10], beta_tildes[10])
    torch.testing.assert_close(log_variance, torch.stack([beta_tildes[10].log(), betas[10].log(),
                                                          (betas[10] * beta_tildes[10]).sqrt().log()]))
    torch.testing.assert_close(learned_fraction(v[:2], SCHEDULE, 10), torch.tensor([0.0, 1.0]), atol=1e-4, rtol=0)
    eps, v = split_output(torch.tensor([[0.3, -0.2, -1.0, 1.0]]))  # the raw output o = 0 is half-way
    torch.testing.assert_close(eps, torch.tensor([[0.3, -0.2]]))
    torch.testing.assert_close(v, torch.tensor([[0.0, 1.0]]))


def test_the_vlb_term_trains_only_the_variance():
    """The gradient of L_hybrid w.r.t. the ε̂ outputs is L_simple's alone: the mean sits behind a stop-gradient."""
    x0 = torch.randn(64, 2)
    output = torch.randn(64, 4, requires_grad=True)
    hybrid_loss(lambda x_t, t: output, SCHEDULE, x0, torch.Generator().manual_seed(0)).backward()
    replay = torch.Generator().manual_seed(0)  # the same t and ε as the loss drew
    torch.randint(0, SCHEDULE.num_train_timesteps, (64,), generator=replay)
    noise = torch.randn(x0.shape, generator=replay)
    torch.testing.assert_close(output.grad[:, :2], 2 * (output[:, :2] - noise).detach() / noise.numel())
    assert output.grad[:, 2:].abs().sum() > 0  # and the variance outputs do learn


def test_the_hybrid_loss_learns_beta_for_a_unit_gaussian_and_beta_tilde_for_a_point():
    """The exact reverse variance is β̃ + r (β − β̃), r = Var(x_0 | x_t)/(1 − ᾱ_t): 1 for x_0 ~ N(0, I), 0 for a
    point mass; near the data (small t) L_vlb pins it."""
    gaussian = _learned_fraction_near_the_data(lambda n, g: torch.randn(n, 2, generator=g))
    point = _learned_fraction_near_the_data(lambda n, g: 0.5 + 1e-3 * torch.randn(n, 2, generator=g))
    print(f"r near the data: unit Gaussian {gaussian:.3f}, point {point:.3f}")
    assert gaussian > 0.75 and point < 0.25


def test_the_respaced_chain_is_ddpms():
    chain = RespacedChain.create(SCHEDULE, 10)
    assert chain.timesteps == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    # The respaced β telescope: ∏ (1 − β) over the steps is ᾱ of the first one (the last lands on ᾱ = 1).
    torch.testing.assert_close(torch.prod(1 - chain.betas), SCHEDULE.alphas_cumprod[901], rtol=1e-4, atol=0)
    assert torch.all(chain.beta_tildes[:-1] < chain.betas[:-1]) and chain.beta_tildes[-1] == 1e-20
    assert chain.log_beta_tilde(9) == chain.beta_tildes[8].log()  # the last step's 0 clipped for the log mapping


@pytest.fixture(scope="module")
def stub():
    """A variance network of a fixed ε-model whose raw v output is a constant: (o = −1: v = 0, o = 1: v = 1)."""
    torch.manual_seed(0)
    model = LabModel(num_classes=0, width=16, depth=1).eval()
    return model, lambda raw: (lambda x_t, t: torch.cat([model(x_t, t), torch.full_like(x_t, raw)], dim=1))


@pytest.mark.parametrize(("raw", "mapping", "variance"), [
    (1.0, "log", "fixed_large"), (1.0, "linear", "fixed_large"), (-1.0, "linear", "fixed_small")])
def test_learned_variance_at_its_bounds_is_ddpm_with_a_fixed_one(stub, raw, mapping, variance):
    model, constant = stub
    noise = initial_noise(300, 0)
    with torch.no_grad():
        fixed = run_denoiser(model, SCHEDULE, "ddpm", 7, noise, seed=4, variance=variance).samples
    learned = sample_learned_variance(constant(raw), SCHEDULE, 7, noise, seed=4, mapping=mapping)
    torch.testing.assert_close(learned, fixed, rtol=1e-4, atol=1e-4)


def test_a_learned_variance_above_beta_goes_further_in_the_log_mapping():
    """v = 1.5 (r ≈ 1.5 where β_t ≈ β̃_t) on a respaced step where β̃ ≪ β: the log mapping's Σ = β (β/β̃)^0.5
    dwarfs the linear mapping's β̃ + r (β − β̃) ≈ 1.5 β."""
    chain = RespacedChain.create(SCHEDULE, 5)
    index = chain.timesteps.index(201)  # the step 201 → 1
    beta, beta_tilde = chain.betas[index], chain.beta_tildes[index]
    assert beta_tilde < 0.01 * beta
    v = torch.tensor([1.5])
    torch.testing.assert_close(chain.variance(v, SCHEDULE, index, "log"), beta * (beta / beta_tilde).sqrt()[None])
    linear = chain.variance(v, SCHEDULE, index, "linear")
    assert 1.45 * beta < linear < 1.55 * beta


def test_an_unknown_mapping_is_refused(stub):
    with pytest.raises(InvalidArgumentError, match="unknown variance mapping 'cubic'"):
        sample_learned_variance(stub[1](0.0), SCHEDULE, 5, initial_noise(4, 0), mapping="cubic")


def test_at_10_steps_the_learned_variance_beats_both_fixed_ones():
    """On the two moons (4000 samples): fixed_small is far worst (too narrow a step), and the learned Σ_θ carried onto
    the respaced steps by the linear mapping beats fixed_large. (measured: 0.163, 0.106, 0.101)"""
    data = get_distribution("moons")
    model = train_variance_model(data, SCHEDULE, LabTrainConfig(steps=500, batch=512))
    reference, _ = data.sample(4000, torch.Generator().manual_seed(5))
    noise = initial_noise(4000, 6)
    with torch.no_grad():
        fixed = {variance: sliced_wasserstein(run_denoiser(eps_head(model), SCHEDULE, "ddpm", 10, noise, seed=3,
                                                           variance=variance).samples, reference)
                 for variance in ("fixed_small", "fixed_large")}
    learned = sliced_wasserstein(sample_learned_variance(model, SCHEDULE, 10, noise, 3, "linear"), reference)
    print(f"SW1 at 10 steps: {fixed}, learned (linear) {learned:.4f}")
    assert fixed["fixed_small"] > 1.3 * fixed["fixed_large"]
    assert learned < 0.98 * fixed["fixed_large"]
