"""lab/classifier.py: the noisy classifier learns p(y | x_t) (sure near the data, at chance at t = T), its gradient
is the autograd one, CFG is classifier guidance with the implicit classifier −(ε_c − ε_∅)/√(1 − ᾱ_t), the two
fields agree in the middle of the process, and classifier guidance narrows each class's spread as w rises."""

import pytest
import torch
from PIL import Image

from diffx.errors import InvalidArgumentError
from diffx.lab.classifier import (
    classifier_gradient,
    classifier_guided_eps,
    implicit_gradient,
    mean_cosine,
    noise_scale,
    train_classifier,
)
from diffx.lab.data import get_distribution, mask_density
from diffx.lab.metrics import class_spread
from diffx.lab.model import LabModel, guided_eps
from diffx.lab.sampling import initial_noise, run_denoiser
from diffx.lab.train import LabTrainConfig, train_lab_model
from diffx.sampling.schedules import NoiseSchedule, q_sample

N_SAMPLES = 2000
STEPS = 25
TRAIN = LabTrainConfig(steps=500, batch=512)  # the ε-model of tests/lab/test_lab_quality.py
CLASSIFIER = LabTrainConfig(steps=300, batch=512)
GUIDANCE = (0.0, 1.0, 2.0, 4.0, 8.0)  # classifier guidance stays monotone past where this brief CFG overshoots


@pytest.fixture(scope="module")
def moons():
    data, schedule = get_distribution("moons"), NoiseSchedule.create("linear")
    trained = train_lab_model(data, schedule, TRAIN, seed=0)
    classifier = train_classifier(data, schedule, CLASSIFIER, seed=0)
    return trained, classifier


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return LabModel(num_classes=3, width=16, depth=1).eval(), LabModel(num_classes=0, width=16, depth=1,
                                                                      outputs=3).eval()


def _accuracy(classifier, schedule, t, seed=0):
    points, labels = get_distribution("moons").sample(2000, torch.Generator().manual_seed(seed))
    x_t = q_sample(schedule, points, torch.tensor(t), torch.randn(points.shape, generator=torch.Generator()
                                                                    .manual_seed(seed + 1)))
    with torch.no_grad():
        return float((classifier(x_t, torch.tensor(float(t))).argmax(dim=1) == labels).float().mean())


def test_the_classifier_is_sure_near_the_data_and_at_chance_at_the_end(moons):
    trained, classifier = moons
    near, far = _accuracy(classifier, trained.schedule, 10), _accuracy(classifier, trained.schedule, 999)
    print(f"accuracy at t=10: {near:.3f}, at t=999: {far:.3f}")
    assert near > 0.95  # the moons barely overlap at their noise
    assert abs(far - 0.5) < 0.05  # x_T holds no trace of the class


def test_the_gradient_is_that_of_log_f_by_finite_differences(tiny):
    _, classifier = tiny
    x, t, labels = torch.randn(4, 2), torch.tensor(200.0), torch.tensor([0, 1, 2, 1])
    gradient = classifier_gradient(classifier, x, t, labels)

    def log_f(points):
        with torch.no_grad():
            return torch.log_softmax(classifier(points, t), dim=1).gather(1, labels[:, None])[:, 0]

    for axis in range(2):
        step = torch.zeros_like(x)
        step[:, axis] = 1e-2
        torch.testing.assert_close(gradient[:, axis], (log_f(x + step) - log_f(x - step)) / 2e-2, rtol=2e-3,
                                   atol=2e-4)


def test_cfg_is_classifier_guidance_with_the_implicit_classifier(tiny):
    """ε_∅ − √(1 − ᾱ_t) w ∇ log p(y | x_t), the implicit ∇ put in the classifier-guidance formula, is CFG's
    ε_∅ + w (ε_c − ε_∅) to the last bit of float32."""
    model, _ = tiny
    schedule = NoiseSchedule.create("linear")
    x, t, labels = torch.randn(6, 2), torch.tensor(400.0), torch.tensor([0, 1, 2, 0, 1, 2])
    for weight in (0.0, 1.0, 3.0):
        implicit = implicit_gradient(model, schedule, x, t, labels)
        as_classifier_guidance = model(x, t) - noise_scale(schedule, t) * weight * implicit
        torch.testing.assert_close(as_classifier_guidance, guided_eps(model, labels, weight)(x, t))


def test_classifier_guidance_shifts_the_unconditional_eps_by_the_scaled_gradient(tiny):
    model, classifier = tiny
    schedule = NoiseSchedule.create("linear")
    x, labels = torch.randn(5, 2), torch.tensor([0, 1, 2, 0, 1])
    for t in (torch.tensor(300.0), torch.tensor(512.5)):  # a σ-space sampler's fractional t too
        unconditional = model(x, t)
        torch.testing.assert_close(classifier_guided_eps(model, classifier, schedule, labels, 0.0)(x, t),
                                   unconditional)
        expected = unconditional - noise_scale(schedule, t) * 2.0 * classifier_gradient(classifier, x, t, labels)
        torch.testing.assert_close(classifier_guided_eps(model, classifier, schedule, labels, 2.0)(x, t), expected)
    assert float(noise_scale(schedule, torch.tensor(300.0))) == pytest.approx(
        float(schedule.sqrt_one_minus_alphas_cumprod[300]))


def test_the_two_fields_agree_in_the_middle_of_the_process(moons):
    trained, classifier = moons
    points, _ = trained.data.sample(N_SAMPLES, torch.Generator().manual_seed(1))
    x_t = q_sample(trained.schedule, points, torch.tensor(300), torch.randn(points.shape))
    labels, t = torch.zeros(N_SAMPLES, dtype=torch.long), torch.tensor(300.0)
    cosine = mean_cosine(classifier_gradient(classifier, x_t, t, labels),
                         implicit_gradient(trained.model, trained.schedule, x_t, t, labels))
    print(f"cosine at t=300: {cosine:.3f}")
    assert cosine > 0.9


def test_mean_cosine_reads_directions():
    field = torch.randn(50, 2)
    assert mean_cosine(field, 3 * field) == pytest.approx(1.0)
    assert mean_cosine(field, -field) == pytest.approx(-1.0)
    assert mean_cosine(field, field.flip(1) * torch.tensor([1.0, -1.0])) == pytest.approx(0.0, abs=1e-6)


def test_classifier_guidance_narrows_the_class_spread_as_w_rises(moons):
    trained, classifier = moons
    labels = torch.arange(N_SAMPLES) % trained.data.num_classes
    noise = initial_noise(N_SAMPLES, 2)
    spreads = [class_spread(run_denoiser(classifier_guided_eps(trained.model, classifier, trained.schedule, labels,
                                                               weight), trained.schedule, "ddim", STEPS,
                                         noise).samples, labels) for weight in GUIDANCE]
    print("classifier guidance, spread over w:", [round(spread, 4) for spread in spreads])
    assert all(later < earlier - 0.03 for earlier, later in zip(spreads, spreads[1:], strict=False))


@pytest.mark.parametrize(("labels", "guidance", "message"), [
    (torch.tensor([3]), 1.0, "classes 0 to 2"),
    (torch.tensor([0]), float("inf"), "guidance must be a finite number"),
])
def test_bad_labels_and_guidance_are_refused(tiny, labels, guidance, message):
    model, classifier = tiny
    with pytest.raises(InvalidArgumentError, match=message):
        classifier_guided_eps(model, classifier, NoiseSchedule.create("linear"), labels, guidance)


def test_one_class_has_nothing_to_classify(tmp_path):
    Image.new("L", (8, 8), 255).save(tmp_path / "white.png")
    with pytest.raises(InvalidArgumentError, match="needs two classes or more"):
        train_classifier(mask_density(tmp_path / "white.png"), NoiseSchedule.create("linear"), CLASSIFIER)
