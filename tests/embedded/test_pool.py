"""The training pool: as many scenes as the run can draw (a toy run renders and stores what it uses, issue #32),
grown on resume and cut to size from a larger file; its latents encoded once; and its draws: `scene_weights`
spends the U-Net's steps on the object counts asked for."""

import numpy as np
import pytest
import torch

from diffx.embedded.checkpoints import LATENTS_FILE
from diffx.embedded.config import TrainConfig
from diffx.embedded.pool import POOL_FILE, pool_latents, scene_pool, scene_weights
from diffx.embedded.shapes import TRAIN_STREAM
from diffx.embedded.worlds import get_world
from diffx.errors import InvalidArgumentError


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng([TRAIN_STREAM, 0, 7])
    return [get_world("shapes2").make_scene(rng) for _ in range(600)]


def test_the_pool_holds_what_the_run_can_draw():
    toy = TrainConfig(vae_steps=20, unet_steps=20)  # the default batches: 32 VAE pictures, 64 U-Net ones a step
    assert toy.pool_size == 30000 and toy.pool_scenes == 20 * 64
    assert TrainConfig(vae_steps=100, vae_batch=32, unet_steps=20).pool_scenes == 100 * 32
    assert TrainConfig().pool_scenes == TrainConfig(pool_size=5, unet_steps=1).pool_scenes + 29995 == 30000


def test_a_toy_pool_renders_its_scenes_grows_on_resume_and_is_cut_from_a_larger_file(tmp_path):
    def pool(folder, **steps):
        config = TrainConfig(out_dir=str(tmp_path / folder), vae_steps=1, vae_batch=1, unet_batch=1, **steps)
        return scene_pool(config)

    scenes, images = pool("run", unet_steps=3)
    assert len(scenes) == 3 and images.shape == (3, 3, 64, 64) and images.dtype == torch.uint8
    assert len(torch.load(tmp_path / "run" / POOL_FILE, weights_only=True)) == 3  # not the 30000 of pool_size
    grown_scenes, grown = pool("run", unet_steps=5)  # resumed with more steps: 2 more scenes rendered
    fresh_scenes, fresh = pool("fresh", unet_steps=5)
    assert torch.equal(grown, fresh) and torch.equal(grown[:3], images) and grown_scenes == fresh_scenes
    assert len(torch.load(tmp_path / "run" / POOL_FILE, weights_only=True)) == 5
    cut_scenes, cut = pool("run", unet_steps=2)  # a file holding more (e.g. pool_render's): its first scenes
    assert torch.equal(cut, images[:2]) and cut_scenes == scenes[:2]


def test_pool_latents_encode_only_the_pictures_the_cache_lacks(tmp_path, tiny_model):
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    path = tmp_path / LATENTS_FILE
    encoded = []
    encode = tiny_model.vae.encode

    def counting(x):
        encoded.append(len(x))
        return encode(x)

    tiny_model.vae.encode = counting
    try:
        first = pool_latents(tiny_model, images[:3], path)
        grown = pool_latents(tiny_model, images, path)
        again = pool_latents(tiny_model, images[:4], path, write=False)
    finally:
        del tiny_model.vae.encode
    assert encoded == [3, 2]  # the 2 new pictures, then nothing: the cache is cut to the pool
    assert torch.equal(grown[0][:3], first[0]) and len(grown[0]) == 5 and grown[0].shape == grown[1].shape
    assert torch.equal(again[1], grown[1][:4])
    assert torch.allclose(grown[0], pool_latents(tiny_model, images, tmp_path / "all.pt")[0], atol=1e-5)


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
