"""The training pool's draws: `scene_weights` spends the U-Net's steps on the object counts asked for."""

import numpy as np
import pytest
import torch

from diffx.embedded.pool import scene_weights
from diffx.embedded.shapes import TRAIN_STREAM
from diffx.embedded.worlds import get_world
from diffx.errors import InvalidArgumentError


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng([TRAIN_STREAM, 0, 7])
    return [get_world("shapes2").make_scene(rng) for _ in range(600)]


def _drawn_counts(scenes, weights, draws=30_000):
    picks = torch.multinomial(weights, draws, replacement=True, generator=torch.Generator().manual_seed(0))
    counts = np.array([len(scenes[i].objects) for i in picks.tolist()])
    return [float(np.mean(counts == n)) for n in (1, 2, 3)]


def test_no_shares_means_uniform_draws(scenes):
    assert scene_weights(scenes, []) is None


def test_draws_show_each_object_count_at_its_share(scenes):
    pool = [float(np.mean([len(s.objects) == n for s in scenes])) for n in (1, 2, 3)]
    assert pool[0] > 0.3  # the world draws one object 40% of the time; the shares below change that
    weights = scene_weights(scenes, [1, 2, 2])  # normalised: 0.2, 0.4, 0.4
    assert weights.sum().item() == pytest.approx(1.0)
    assert _drawn_counts(scenes, weights) == pytest.approx([0.2, 0.4, 0.4], abs=0.015)


def test_within_a_count_every_scene_is_equally_likely(scenes):
    weights = scene_weights(scenes, [0.2, 0.4, 0.4])
    for n in (1, 2, 3):
        assert len({round(float(w), 12) for w, s in zip(weights, scenes, strict=True) if len(s.objects) == n}) == 1


def test_counts_past_the_shares_are_never_drawn(scenes):
    assert _drawn_counts(scenes, scene_weights(scenes, [0.0, 1.0])) == [0.0, 1.0, 0.0]


def test_a_share_for_a_count_the_pool_lacks_is_one_clear_error(scenes):
    one_object = [s for s in scenes if len(s.objects) == 1]
    with pytest.raises(InvalidArgumentError, match=r"^object_counts gives 2-object scenes a share of 0.5, but the "
                       r"pool holds none; give 0 there \(its scenes hold 1-1 objects\)$"):
        scene_weights(one_object, [0.5, 0.5])
