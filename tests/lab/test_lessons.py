"""lab/lessons.py: each lesson trains what it needs, measures what its figure shows (the same numbers), and draws
one picture; bad lesson requests are refused before any work."""

import pytest
import torch
from PIL import Image

from diffx.errors import InvalidArgumentError
from diffx.lab.data import get_distribution, mask_density
from diffx.lab.lessons import (
    FIELD_TIMESTEPS,
    VARIANCE_STEPS,
    LessonContext,
    check_lesson_data,
    check_lessons,
    run_lesson,
    variance_curves,
)
from diffx.lab.sampling import initial_noise
from diffx.lab.train import LabTrainConfig, train_lab_model
from diffx.lab.variance import MAPPINGS, RespacedChain
from diffx.sampling.schedules import NoiseSchedule

QUICK = LabTrainConfig(steps=60, batch=128, width=32, depth=1)
GUIDANCE = (0.0, 2.0)


@pytest.fixture(scope="module")
def context():
    data = get_distribution("moons")
    trained = train_lab_model(data, NoiseSchedule.create("linear"), QUICK)
    x0, _ = data.sample(200, torch.Generator().manual_seed(1))
    stages = []
    return LessonContext(trained, x0, initial_noise(200, 2), "ddim", 4, GUIDANCE, QUICK,
                         progress=lambda stage: stages.append(stage)), stages


def test_the_classifier_lesson_measures_every_t_and_w(context):
    context, stages = context
    taught = run_lesson("classifier", context)
    assert "training the noisy classifier f_φ(y | x_t, t)" in stages
    assert [f"cos_t{t}" for t in FIELD_TIMESTEPS] == [key for key in taught.measured if key.startswith("cos")]
    assert all(-1 <= taught.measured[f"cos_t{t}"] <= 1 for t in FIELD_TIMESTEPS)
    for weight in GUIDANCE:
        assert taught.measured[f"spread_cfg_w{weight:g}"] > 0 and taught.measured[f"spread_classifier_w{weight:g}"] > 0
    # w = 0 is the unconditional model for both guidances: the same samples.
    assert taught.measured["spread_cfg_w0"] == taught.measured["spread_classifier_w0"]
    assert taught.picture.width >= len(FIELD_TIMESTEPS) * 200 and taught.picture.height >= 4 * 200


def test_the_variance_lesson_measures_every_variance_at_every_step_count(context):
    context, stages = context
    taught = run_lesson("variance", context)
    assert "training the variance model (L_simple + λ L_vlb)" in stages
    names = ["fixed_small", "fixed_large", *(f"learned_{mapping}" for mapping in MAPPINGS)]
    assert list(taught.measured) == [f"sw_{steps}_{name}" for steps in VARIANCE_STEPS for name in names]
    assert all(0 < value < 10 for value in taught.measured.values())
    assert taught.picture.width >= len(names) * 200 and taught.picture.height >= len(VARIANCE_STEPS) * 200


def test_the_variance_curves_lie_between_their_bounds_where_v_does(context):
    """A network whose raw v is 0 everywhere (v = ½): Σ_θ sits at √(β β̃) over t and on the respaced steps."""
    context, _ = context
    schedule = context.trained.schedule
    curves = variance_curves(lambda x_t, t: torch.zeros(len(x_t), 4), schedule, context.x0)
    torch.testing.assert_close(curves.sigma, (curves.betas * curves.beta_tildes).sqrt()[:, None].expand(-1, 2))
    assert torch.all(curves.fraction > 0) and torch.all(curves.fraction < 1)
    chain = RespacedChain.create(schedule, 10)
    assert curves.chain.timesteps == chain.timesteps
    torch.testing.assert_close(curves.step_sigma["log"][:-1, 1], (chain.betas * chain.beta_tildes).sqrt()[:-1])


@pytest.mark.parametrize(("lessons", "out", "message"), [
    (("nope",), "lab.png", "unknown lesson 'nope'"),
    (("variance", "variance"), "lab.png", "name one twice"),
    (("classifier",), None, "--lessons draws <out>_classifier.png; add --out"),
])
def test_bad_lessons_are_refused(lessons, out, message):
    with pytest.raises(InvalidArgumentError, match=message):
        check_lessons(lessons, out)


def test_the_classifier_lesson_needs_two_classes(tmp_path):
    Image.new("L", (8, 8), 255).save(tmp_path / "white.png")
    with pytest.raises(InvalidArgumentError, match="needs two classes or more and mask white.png has one"):
        check_lesson_data(("classifier",), mask_density(tmp_path / "white.png"))
    check_lesson_data(("variance",), mask_density(tmp_path / "white.png"))  # one class is enough
