"""The worlds behind one training path: each world's model, captions and pool; v1 unchanged."""

import numpy as np
import pytest
import torch

from diffx.embedded import shapes, world
from diffx.embedded.captions import EXACT_CAPTIONS, CaptionNoise
from diffx.embedded.config import TrainConfig
from diffx.embedded.export import export_model
from diffx.embedded.pool import scene_pool
from diffx.embedded.train import train
from diffx.embedded.world_text import parse_caption
from diffx.embedded.worlds import WORLDS, get_world
from diffx.errors import InvalidArgumentError
from diffx.models.configs import ModelConfig, shapes_world, shapes_world_2
from diffx.weights.load import load_model


def test_each_world_trains_its_own_model_by_default():
    assert TrainConfig().model == shapes_world().to_dict()
    v2 = ModelConfig.from_dict(TrainConfig(world="shapes2").model)
    assert v2 == shapes_world_2() and v2.image_size == 128 and v2.vae.downsample_factor == 8


@pytest.mark.parametrize(("settings", "message"), [
    ({"world": "planets"}, "unknown world 'planets'"),
    ({"world": "shapes", "caption_noise": {"p_exact": 0.5}}, "no caption-noise model"),
    ({"world": "shapes2", "caption_noise": {"p_exact": 1.5}}, "p_exact=1.5 must be a probability"),
    ({"world": "shapes2", "caption_noise": {"p_typo": 0.1}}, "unknown caption-noise settings"),
    ({"world": "shapes2", "caption_noise": [0.1]}, "must be a dict"),
])
def test_bad_world_settings_are_one_line(settings, message):
    with pytest.raises(InvalidArgumentError, match=message):
        TrainConfig(**settings)


def test_v1_pool_is_the_shapes_world_stream_as_before(tmp_path):
    """The v1 pool draws the same scenes from the same stream as before there were two worlds."""
    scenes, images = scene_pool(TrainConfig(out_dir=str(tmp_path), pool_size=3))
    rng = np.random.default_rng([shapes.TRAIN_STREAM, 0, 1_000_003])
    for scene, image in zip(scenes, images, strict=True):
        expected = shapes.make_scene(rng)
        assert scene == expected
        assert torch.equal(image, torch.from_numpy(shapes.render(expected, 64)).permute(2, 0, 1))


def test_v2_pool_renders_the_v2_world_at_128_px(tmp_path):
    scenes, images = scene_pool(TrainConfig(out_dir=str(tmp_path), pool_size=4, world="shapes2"))
    assert images.shape == (4, 3, 128, 128) and images.dtype == torch.uint8
    assert all(isinstance(scene, world.Scene) for scene in scenes)
    assert torch.equal(images[0], torch.from_numpy(world.render(scenes[0], 128)).permute(2, 0, 1))


def test_v2_captions_follow_the_noise_settings():
    """Exact settings give captions that parse back to the scene; the defaults make them loose."""
    v2 = get_world("shapes2")
    rng = np.random.default_rng(0)
    scenes = [v2.make_scene(rng) for _ in range(200)]
    exact = [v2.caption(scene, rng, EXACT_CAPTIONS) for scene in scenes]
    assert all(len(parse_caption(text).objects) == len(scene.objects)
               for text, scene in zip(exact, scenes, strict=True))
    loose = [v2.caption(scene, rng, CaptionNoise()) for scene in scenes]
    assert sum(a != b for a, b in zip(exact, loose, strict=True)) > 100  # p_exact 0.3: most captions differ
    assert len({len(text.split()) for text in loose}) > len({len(text.split()) for text in exact})


def test_every_world_has_preview_prompts_and_a_card():
    for item in WORLDS.values():
        assert len(item.preview_prompts) == 6 and item.card[0].startswith("# ")


def test_a_v2_model_trains_exports_and_loads(tmp_path):
    """A few steps of both stages on the v2 world, with the attention-grounding loss on its loose captions:
    a 128 px f8 model comes out and generates."""
    config = TrainConfig(out_dir=str(tmp_path / "run"), world="shapes2", pool_size=8, vae_steps=2, vae_batch=2,
                         unet_steps=2, unet_batch=2, warmup_steps=1, checkpoint_every=2, attention_loss=0.01,
                         object_counts=[0, 1, 1])
    model, summary = train(config)
    assert summary["unet"]["steps"] == 2 and model.config.image_size == 128
    assert 0 < summary["unet"]["final_grounding_loss"] <= 1
    export_model(tmp_path / "run", tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.config.name == "shapes-world-2"
    card = (tmp_path / "model" / "MODEL_CARD.md").read_text()
    assert "shapes-world-2" in card and "Caption noise" in card and "p_exact 0.3" in card
    assert "U-Net training draws by object count: 1 object 0%, 2 objects 50%, 3 objects 50%." in card
