"""Views: frames, grids and tables from traces, the forward process, CFG sweeps and comparisons (tiny model)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from diffx.errors import InvalidArgumentError
from diffx.models.stable_diffusion import build
from diffx.paths import FLOW_MODEL_DIR
from diffx.pipeline.codec import decode_latents
from diffx.pipeline.settings import GenerationSettings
from diffx.render import latent_to_rgb_fast
from diffx.trace.tracer import generate_traced
from diffx.views import steps as views
from diffx.weights.load import load_model
from tests.tiny import STEPS
from tests.tiny import tiny_settings as _settings


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def traced(model):
    return generate_traced(model, _settings()).traces[0]


@pytest.fixture(scope="module")
def traced_with_decodes(model):
    return generate_traced(model, _settings(), decode_every=1).traces[0]


def _render(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_step_views_record_what_x_t_is_drawn_from(model):
    """denoise's x_t row is the mixture √ᾱ x̂0 + √(1−ᾱ) ε̂, so its trace keeps ε̂; without it x_t would be
    the raw latent preview, whose noise clips to saturated colours."""
    trace = generate_traced(model, _settings(), options=views.TRACE_RECORD_STEPS).traces[0]
    assert views.xt_label(trace) == views.XT_LABEL
    x0 = views.x0_pictures(trace, [STEPS - 1], "fast")
    mixture = views.xt_pictures(trace, [STEPS - 1], x0)[0].astype(int)
    preview = views.latent_preview(trace, "latents", STEPS - 1).astype(int)
    assert mixture.shape == preview.shape and not np.array_equal(mixture, preview)


def test_trace_frames_one_per_step_same_size(traced):
    frames = views.trace_frames(traced)
    assert len(frames) == STEPS
    assert len({frame.size for frame in frames}) == 1
    assert not np.array_equal(np.asarray(frames[0]), np.asarray(frames[-1]))


def test_trace_frames_pack_word_maps_without_a_lone_row(model, traced, monkeypatch):
    """7 word maps under the 4 step panels: rows of 4, 4 and 3, not 4, 6 and a lone map beside a large empty
    area; a lone row is avoided for any prompt up to 60 words, and the frames say where the result is."""
    assert [len(row) for row in views.pack_rows(list("abcd"), list(range(7)))] == [4, 4, 3]
    for main in (2, 3, 4):  # x_t and x̂0; + ε̂; + ε_c − ε_u
        for words in range(61):
            rows = views.pack_rows(list(range(main)), list(range(words)))
            assert sum(map(len, rows)) == main + words and rows[0][:main] == list(range(main))
            assert len(rows) == 1 or min(map(len, rows)) >= 2, (main, words, [len(row) for row in rows])
    seven = generate_traced(model, _settings(prompt="one two three four five six seven")).traces[0]
    assert len(seven.words) == 7 and len(traced.words) == 3
    captions = []
    real_caption_bar = views.caption_bar
    monkeypatch.setattr(views, "caption_bar", lambda frame, text, **kw: captions.append(text) or
                        real_caption_bar(frame, text, **kw))
    few, many = views.trace_frames(traced, panel=64)[0], views.trace_frames(seven, panel=64)[0]
    # 3 words: 4 + 3; 7 words: 4 + 4 + 3 — as wide (4 panels), one row taller.
    assert many.width == few.width < 5 * 64
    assert many.height - few.height > 64
    assert captions.count(views.XT_NOTE) == 2 * STEPS and "the result is the last x̂0" in views.XT_NOTE


def test_a_flow_runs_frames_call_its_state_x_s(monkeypatch):
    flow = load_model(FLOW_MODEL_DIR)  # the shipped flow model: x_s = (1 − s) x̂0 + s ε
    trace = generate_traced(flow, GenerationSettings(prompt="a red circle", steps=2, seed=0)).traces[0]
    captions = []
    real_caption_bar = views.caption_bar
    monkeypatch.setattr(views, "caption_bar", lambda frame, text, **kw: captions.append(text) or
                        real_caption_bar(frame, text, **kw))
    views.trace_frames(trace, panel=64)
    assert captions.count(views.XS_NOTE) == 2 and views.XT_NOTE not in captions
    assert views.XS_NOTE.startswith("x_s is the sampler's state")


def test_attention_scale_changes_the_heatmaps(traced):
    shared = views.attention_maps(traced, [0, 1, 2], "shared")
    word = views.attention_maps(traced, [0, 1, 2], "word")
    assert shared.shape == (STEPS, len(traced.words), *traced.tensors["attention"].shape[-2:])
    assert shared.min() == 0 and shared.max() == 1  # one range over every map
    assert np.allclose(word.reshape(-1, word.shape[-2] * word.shape[-1]).max(1), 1)  # each map on its own
    assert not np.array_equal(np.asarray(views.trace_frames(traced, attn_scale="shared")[1]),
                              np.asarray(views.trace_frames(traced, attn_scale="word")[1]))


def test_vae_preview_uses_stored_decodes_or_the_model(model, traced, traced_with_decodes):
    indices = list(range(STEPS))
    stored = views.x0_pictures(traced_with_decodes, indices, "vae")  # no model needed
    decoded = views.x0_pictures(traced, indices, "vae", model)
    assert all(np.array_equal(a, b) for a, b in zip(stored, decoded, strict=True))
    assert stored[0].shape == (32, 32, 3)
    assert views.missing_decodes(traced_with_decodes) == []
    assert views.missing_decodes(traced) == [1, 2, 3]
    with pytest.raises(InvalidArgumentError, match="--model"):
        views.x0_pictures(traced, indices, "vae")
    frames = views.trace_frames(traced_with_decodes, preview="vae")
    assert len(frames) == STEPS


def test_latent_preview_uses_the_traces_factors_and_bias(traced):
    factors, bias = torch.randn(4, 3), torch.randn(3)
    latent = traced.tensors["latents"][1]
    preview = {"factors": factors.tolist(), "bias": bias.tolist()}
    fitted = replace(traced, meta={**traced.meta, "latent_preview": preview})
    assert np.array_equal(views.latent_preview(fitted, "latents", 1), latent_to_rgb_fast(latent, factors, bias))
    default = replace(traced, meta={**traced.meta, "latent_preview": None})  # SD1.5's factors
    assert np.array_equal(views.latent_preview(default, "latents", 1), latent_to_rgb_fast(latent))


def test_attention_grid_rows_are_words_columns_are_steps(traced):
    one = views.attention_grid(traced, steps=[2], panel=64)
    all_steps = views.attention_grid(traced, panel=64)
    assert all_steps.width > 2 * one.width  # a column per step
    assert one.height > 3 * 64  # a row per word
    with pytest.raises(InvalidArgumentError, match="pick 1 to 3"):
        views.attention_grid(traced, steps=[4])


def test_denoise_frames_and_grid(traced):
    frames = views.denoise_frames(traced, panel=64)
    assert len(frames) == STEPS and len({f.size for f in frames}) == 1
    assert frames[0].width < views.trace_frames(traced, panel=64)[0].width  # two panels only
    grid = views.denoise_grid(traced, steps=[1, 3], panel=64)
    assert 2 * 64 < grid.width and 2 * 64 < grid.height


def test_write_trace_views(tmp_path, model, traced):
    written = views.write_trace_views(traced, tmp_path / "t.gif", tmp_path / "t.png")
    assert [p.name for p in written] == ["t.gif", "t.png", "t_attention.png"]
    assert Image.open(tmp_path / "t.png").size == (32, 32)
    unconditional = generate_traced(model, _settings(prompt="")).traces[0]
    written = views.write_trace_views(unconditional, tmp_path / "u.gif", tmp_path / "u.png")
    assert [p.name for p in written] == ["u.gif", "u.png"]  # no words, no attention grid


def test_decodes_match_the_pipeline(model, traced):
    # The vae preview of the last step is the decode of the last x̂0, which is what the pipeline decodes.
    last = views.x0_pictures(traced, [STEPS - 1], "vae", model)[0]
    assert np.array_equal(last, decode_latents(model, traced.tensors["x0"][-1:].float())[0])


# ---------------------------------------------------------------------------------------------------
# Truthful pictures on the embedded model (what a learner sees first)


@pytest.fixture(scope="module")
def embedded():
    from diffx.weights.load import load_model

    model = load_model()
    return model, generate_traced(model, GenerationSettings(prompt="a red circle left of a blue square"),
                                  decode_every=1).traces[0]


def test_auto_preview_decodes_a_cheap_decoder_and_x0_agrees_with_the_result(embedded):
    model, trace = embedded
    assert views.resolve_preview("auto", model=model) == "vae"  # ~1.2 GFLOPs per 64 px image
    assert views.resolve_preview("auto", trace) == "vae"  # every decode is stored
    last = views.x0_pictures(trace, [trace.num_steps - 1], "auto", model)[0].astype(float)
    final = trace.tensors["image"].numpy().astype(float)
    # The last x̂0 is the result up to one DDIM step (ᾱ_0 ≈ 0.999): measured 0.26/255 on average per RGB value.
    assert np.abs(last - final).mean() <= 1.0
    # The latent preview is the picture at the latent grid's resolution: the shipped per-pixel MLP preview is
    # 11/255 from the pooled result on average (the linear factors it replaced: 68/255, false colours).
    preview = views.x0_pictures(trace, [trace.num_steps - 1], "fast")[0]
    side, factor = final.shape[0] // model.config.vae.downsample_factor, model.config.vae.downsample_factor
    pooled = final.reshape(side, factor, side, factor, 3).mean((1, 3))
    assert np.abs(preview.astype(float) - pooled).mean() < 20


def test_sd15_gets_the_latent_preview_under_auto():
    from diffx.models.configs import sd15

    assert views.resolve_preview("auto", model=build(sd15())) == "fast"  # ~2,480 GFLOPs per 512 px image


def test_xt_at_the_middle_step_is_not_saturated(embedded):
    model, trace = embedded
    middle = trace.num_steps // 2
    x0 = views.x0_pictures(trace, [middle], "auto", model)
    xt = views.xt_pictures(trace, [middle], x0)[0]
    assert ((xt == 0) | (xt == 255)).mean() <= 0.05
    # The plain latent preview of the same x_t clips many of its pixels (measured 29% with the fitted MLP
    # preview, 68% with the linear factors before it): the picture the issue was about.
    plain = views.latent_preview(trace, "latents", middle)
    assert ((plain == 0) | (plain == 255)).mean() > 0.2


def test_every_panel_has_a_label_that_says_what_it_shows(embedded, monkeypatch):
    model, trace = embedded
    seen = []
    real_make_grid = views.make_grid

    def spy(cells, *args, cell_labels=None, **kwargs):
        seen.append((cells, cell_labels))
        return real_make_grid(cells, *args, cell_labels=cell_labels, **kwargs)

    monkeypatch.setattr(views, "make_grid", spy)
    views.trace_frames(trace, model=model)
    for cells, labels in seen:
        assert labels is not None and [len(row) for row in labels] == [len(row) for row in cells]
        assert all(label for row in labels for label in row)
    first_row = seen[0][1][0]
    assert first_row[:2] == [views.XT_LABEL, "x̂0 (VAE decode)"]
    seen.clear()
    views.trace_frames(trace, preview="fast")
    assert seen[0][1][0][1] == "x̂0 (latent preview)"


def test_the_tiny_preview_needs_a_tiny_decoder_and_draws_with_it(model):
    from diffx.models.tiny_decoder import TinyDecoder, TinyDecoderConfig
    from diffx.pipeline.codec import decode_tiny

    trace = generate_traced(model, _settings()).traces[0]
    with pytest.raises(InvalidArgumentError, match="no tiny preview decoder|has none"):
        views.resolve_preview("tiny", trace, model)
    assert views.resolve_preview("auto", trace, model, live=True) == views.resolve_preview("auto", trace, model)
    torch.manual_seed(0)
    model.tiny_decoder = TinyDecoder(TinyDecoderConfig(4, (8,))).eval()
    try:
        assert views.resolve_preview("auto", trace, model, live=True) == "tiny"
        assert views.resolve_preview("auto", trace, model) != "tiny"  # commands' auto is unchanged
        pictures = views.x0_pictures(trace, [0, STEPS - 1], "tiny", model)
        expected = decode_tiny(model, trace.tensors["x0"][[0, STEPS - 1]])
        assert all(np.array_equal(a, b) for a, b in zip(pictures, expected, strict=True))
        assert pictures[0].shape == (32, 32, 3)  # the image's size, not the latent's
    finally:
        model.tiny_decoder = None
