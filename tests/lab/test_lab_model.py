"""lab/model.py and lab/train.py: the ε-model's shapes and null class, classifier-free guidance as the
samplers see it, and training with the real L_simple lowering the loss."""

import pytest
import torch

from diffx.errors import InvalidArgumentError
from diffx.lab.data import get_distribution
from diffx.lab.model import LabModel, guided_eps, one_thread
from diffx.lab.train import LabTrainConfig, train_lab_model
from diffx.sampling.schedules import NoiseSchedule


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LabModel(num_classes=3, width=32, depth=2).eval()


def test_forward_shapes_and_one_timestep_for_the_batch(model):
    x = torch.randn(5, 2)
    out = model(x, torch.tensor(300.0))
    assert out.shape == (5, 2)
    torch.testing.assert_close(out, model(x, torch.full((5,), 300.0)))


def test_no_labels_means_the_null_class(model):
    x = torch.randn(4, 2)
    torch.testing.assert_close(model(x, torch.tensor(10.0)), model(x, torch.tensor(10.0), torch.full((4,), 3)))


def test_guidance_mixes_the_two_branches(model):
    x, t, labels = torch.randn(6, 2), torch.tensor(500.0), torch.tensor([0, 1, 2, 0, 1, 2])
    uncond, cond = model(x, t), model(x, t, labels)
    torch.testing.assert_close(guided_eps(model, labels, 0.0)(x, t), uncond)
    torch.testing.assert_close(guided_eps(model, labels, 1.0)(x, t), cond)
    torch.testing.assert_close(guided_eps(model, labels, 3.0)(x, t), uncond + 3 * (cond - uncond))
    torch.testing.assert_close(guided_eps(model)(x, t), uncond)


@pytest.mark.parametrize(("labels", "guidance", "message"), [
    (torch.tensor([3]), 1.0, "classes 0 to 2"),
    (torch.tensor([-1]), 1.0, "classes 0 to 2"),
    (torch.tensor([0]), float("nan"), "guidance must be a finite number"),
])
def test_bad_labels_and_guidance_are_refused(model, labels, guidance, message):
    with pytest.raises(InvalidArgumentError, match=message):
        guided_eps(model, labels, guidance)


def test_one_thread_restores_the_thread_count():
    before = torch.get_num_threads()
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_training_lowers_l_simple_and_is_deterministic():
    data, schedule = get_distribution("gaussians"), NoiseSchedule.create("linear")
    config = LabTrainConfig(steps=120, batch=128, width=32, depth=1)
    first = train_lab_model(data, schedule, config, seed=3)
    again = train_lab_model(data, schedule, config, seed=3)
    assert first.losses == again.losses
    assert sum(first.losses[-20:]) / 20 < 0.8 * sum(first.losses[:20]) / 20
    assert not first.model.training


@pytest.mark.parametrize(("field", "value", "message"), [
    ("steps", 0, "steps must be 1 to"), ("lr", float("inf"), "learning rate"), ("label_dropout", 1.0, "dropout")])
def test_bad_training_settings_are_refused(field, value, message):
    with pytest.raises(InvalidArgumentError, match=message):
        LabTrainConfig(**{field: value})
