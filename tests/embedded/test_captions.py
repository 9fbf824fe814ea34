"""The caption-noise model: its settings, and empirical rates that match them over many draws."""

import numpy as np
import pytest

from diffx.embedded.captions import EXACT_CAPTIONS, CaptionNoise, draw_caption, noisy_caption
from diffx.embedded.shapes import TRAIN_STREAM, _scene_rng
from diffx.embedded.world import make_scene
from diffx.embedded.world_text import caption_text, describe, parse_caption
from diffx.errors import DiffxError

DRAWS = 6000


def rate_close(hits: int, total: int, p: float) -> bool:
    """Whether hits/total is within 4 binomial standard errors (and 0.01) of p."""
    return abs(hits / total - p) <= 4 * np.sqrt(p * (1 - p) / total) + 0.01


@pytest.fixture(scope="module")
def draws():
    settings = CaptionNoise(p_useless=0.1, p_exact=0.2, p_omit_colour=0.2, p_wrong=0.1, p_extra=0.4)
    rng = _scene_rng(TRAIN_STREAM, 1)
    scenes = [make_scene(rng) for _ in range(DRAWS)]
    return settings, scenes, [draw_caption(scene, rng, settings) for scene in scenes]


def test_settings_serialise_and_validate():
    settings = CaptionNoise(p_omit_size=0.3)
    assert CaptionNoise.from_dict(settings.to_dict()) == settings
    assert settings.to_dict()["p_omit_size"] == 0.3 and set(settings.to_dict()) >= {"p_exact", "p_useless", "p_extra"}
    with pytest.raises(DiffxError):
        CaptionNoise(p_wrong=1.5)
    with pytest.raises(DiffxError):
        CaptionNoise(p_useless=0.6, p_exact=0.6)
    with pytest.raises(DiffxError):
        CaptionNoise.from_dict({"p_typo": 0.1})
    with pytest.raises(AttributeError):
        settings.p_exact = 0.5  # frozen


def test_kinds_match_the_settings(draws):
    settings, _, captions = draws
    kinds = [caption.kind for caption in captions]
    assert rate_close(kinds.count("useless"), DRAWS, settings.p_useless)
    assert rate_close(kinds.count("exact"), DRAWS, settings.p_exact)
    for caption in captions:
        if caption.kind == "useless":
            assert parse_caption(caption.text).objects == ()  # says nothing the judge could check


@pytest.mark.parametrize("attribute, field", [
    ("colour", "p_omit_colour"), ("fill", "p_omit_fill"), ("size", "p_omit_size"),
    ("position", "p_omit_position"), ("background", "p_omit_background"), ("object", "p_omit_object"),
])
def test_omission_and_wrong_rates_match_the_settings(draws, attribute, field):
    settings, _, captions = draws
    outcomes = [outcome for caption in captions for name, outcome in caption.events if name == attribute]
    assert rate_close(outcomes.count("omitted"), len(outcomes), getattr(settings, field)), (attribute, len(outcomes))
    stated = [outcome for outcome in outcomes if outcome != "omitted"]
    if attribute != "object":
        assert rate_close(stated.count("wrong"), len(stated), settings.p_wrong), attribute


def test_the_text_says_what_the_record_says(draws):
    settings, scenes, captions = draws
    extras = [outcome for caption in captions for name, outcome in caption.events if name == "extra"]
    assert rate_close(extras.count("added"), len(extras), settings.p_extra)
    sizes_said = sizes_kept = 0
    for scene, caption in zip(scenes, captions, strict=True):
        if caption.kind != "noisy":
            continue
        first = parse_caption(caption.text).objects[0]
        size_event = next(outcome for name, outcome in caption.events if name == "size")
        sizes_said += first.size is not None
        sizes_kept += size_event != "omitted"
        if size_event == "kept":
            assert first.size in {obj.size for obj in scene.objects}
    assert sizes_said == sizes_kept  # the first object's size is in the text exactly when not omitted


def test_exact_settings_give_exact_captions():
    rng, again = np.random.default_rng(4), np.random.default_rng(4)
    for _ in range(50):
        scene = make_scene(rng)
        make_scene(again)
        again.random()  # draw_caption's first draw: useless, exact or noisy
        assert noisy_caption(scene, rng, EXACT_CAPTIONS) == caption_text(describe(scene, again))
