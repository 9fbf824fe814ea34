"""Views: frames, grids and tables from traces, the forward process, CFG sweeps and comparisons (tiny model)."""

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from diffx import views
from diffx.errors import InputImageError, InvalidArgumentError, OutputPathError
from diffx.models.configs import tiny
from diffx.models.stable_diffusion import build
from diffx.pipeline import GenerationSettings, decode_latents, generate
from diffx.render import latent_to_rgb_fast
from diffx.schedules import NoiseSchedule, spaced_timesteps
from diffx.weights import ModelSource

STEPS = 3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build(tiny()).eval()


def _settings(**changes) -> GenerationSettings:
    return GenerationSettings(**{"prompt": "a red circle", "steps": STEPS, "height": 32, "width": 32, **changes})


@pytest.fixture(scope="module")
def traced(model):
    return generate(model, _settings(), trace=True).traces[0]


@pytest.fixture(scope="module")
def traced_with_decodes(model):
    return generate(model, _settings(), trace=True, decode_every=1).traces[0]


def _render(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_trace_frames_one_per_step_same_size(traced):
    frames = views.trace_frames(traced)
    assert len(frames) == STEPS
    assert len({frame.size for frame in frames}) == 1
    assert not np.array_equal(np.asarray(frames[0]), np.asarray(frames[-1]))


def test_trace_frames_wrap_word_tiles_into_rows(model, traced):
    many_words = generate(model, _settings(prompt="one two three four five six seven eight"), trace=True).traces[0]
    few, many = views.trace_frames(traced, panel=64)[0], views.trace_frames(many_words, panel=64)[0]
    # 3 words fit under the 4 main panels; 8 words wrap at WORDS_PER_ROW = 6: wider and one row taller.
    assert many.width > few.width
    assert many.height > few.height


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


def test_latent_preview_factors_with_and_without_bias():
    latent = torch.randn(4, 5, 6)
    factors, bias = torch.randn(4, 3), torch.randn(3)
    assert np.array_equal(views.latent_preview(latent), latent_to_rgb_fast(latent))
    assert np.array_equal(views.latent_preview(latent, factors.tolist()), latent_to_rgb_fast(latent, factors))
    with_bias = views.latent_preview(latent, [*factors.tolist(), bias.tolist()])
    assert np.array_equal(with_bias, latent_to_rgb_fast(latent, factors, bias))


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


def test_noise_views_pixel_space():
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    result = views.noise_views(picture, schedules=("linear",), timesteps=(0, 999), panel=32, num_frames=5)
    assert len(result.frames) == 5 and len({f.size for f in result.frames}) == 1
    grid = np.asarray(result.grid).astype(int)
    # x_0 at t = 0 is almost the picture (noise scale √β_0 = 0.01): find it in the grid.
    rows, cols = np.nonzero(np.abs(grid[:, :, 0] - np.asarray(picture)[0, 0, 0]) <= 6)
    errors = [np.abs(grid[r:r + 32, c:c + 32] - np.asarray(picture)).mean()
              for r, c in zip(rows, cols, strict=True) if r + 32 <= grid.shape[0] and c + 32 <= grid.shape[1]]
    assert min(errors) < 2  # about 1.3 grey levels of noise
    assert isinstance(result.schedule_plot, Image.Image)
    with pytest.raises(InvalidArgumentError, match="needs a model"):
        views.noise_views(picture, latent_space=True)
    with pytest.raises(InvalidArgumentError, match="unknown schedule"):
        views.noise_views(picture, schedules=("quadratic",))


def test_noise_views_latent_space_has_preview_and_decode_rows(model):
    picture = Image.new("RGB", (32, 32), (200, 30, 30))
    pixel = views.noise_views(picture, schedules=("cosine",), timesteps=(0, 500), num_frames=2)
    latent = views.noise_views(picture, schedules=("cosine",), timesteps=(0, 500), latent_space=True, model=model,
                               num_frames=2)
    assert latent.grid.width >= pixel.grid.width  # longer row labels
    assert latent.grid.height > pixel.grid.height  # two rows per schedule
    with pytest.raises(InvalidArgumentError, match="multiples of 2"):
        views.noise_views(Image.new("RGB", (31, 31)), latent_space=True, model=model)


def test_sampler_timesteps_are_the_samplers_grid():
    schedule = NoiseSchedule.create("scaled_linear")
    ddim = views.sampler_timesteps("ddim", schedule, 10, "leading", 1)
    assert ddim == spaced_timesteps(1000, 10, "leading", 1).tolist()
    assert len(views.sampler_timesteps("heun", schedule, 10)) == 2 * 10 - 1  # Heun: two evaluations per step


def test_cfg_sweep_columns_are_plain_generations(model):
    sweep = views.cfg_sweep(model, _settings(), [1, 7.5], rows_steps=[1, 3], panel=32)
    alone = generate(model, _settings(guidance=7.5))
    assert np.array_equal(sweep.generations[1].images[0], alone.images[0])
    assert not np.array_equal(sweep.generations[0].images[0], sweep.generations[1].images[0])
    assert len(sweep.frames) == STEPS + 1 and len({f.size for f in sweep.frames}) == 1
    no_rows = views.cfg_sweep(model, _settings(steps=1), [1, 7.5], panel=32).grid
    assert sweep.grid.height > no_rows.height + 2 * 32  # two rows of x̂0
    with pytest.raises(InvalidArgumentError, match="guidance must be >= 0"):
        views.cfg_sweep(model, _settings(), [-1])


def test_parse_axis_types_and_errors():
    assert views.parse_axis("steps=5, 10") == ("steps", [5, 10])
    assert views.parse_axis("guidance=1,7.5") == ("guidance", [1.0, 7.5])
    assert views.parse_axis("karras=true,off") == ("karras", [True, False])
    with pytest.raises(InvalidArgumentError, match="unknown comparison axis"):
        views.parse_axis("colour=red")
    with pytest.raises(InvalidArgumentError, match="not a int"):
        views.parse_axis("steps=five")
    with pytest.raises(InvalidArgumentError, match="no values"):
        views.parse_axis("steps=")


def test_compare_grid_and_cells(model):
    result = views.compare(model, _settings(), x=("sampler", ["ddim", "heun"]), y=("steps", [1, 2]), panel=32)
    assert [[g.settings[0].sampler for g in row] for row in result.generations] == [["ddim", "heun"]] * 2
    assert [[g.settings[0].steps for g in row] for row in result.generations] == [[1, 1], [2, 2]]
    assert result.grid.width > 2 * 32 and result.grid.height > 2 * 32
    with pytest.raises(InvalidArgumentError, match="both axes"):
        views.compare(model, _settings(), x=("steps", [1]), y=("steps", [2]))
    with pytest.raises(InvalidArgumentError, match="unknown sampler"):  # checked before any generation
        views.compare(model, _settings(), x=("sampler", ["ddim", "plms"]), y=None)


def test_tokens_table_shows_words_tokens_ids_positions(model):
    text = _render(views.tokens_table(model.tokenizer.encode("a red circle")))
    assert "5 of 77 tokens" in text
    assert "circle</w>" in text and "7117" in text
    assert "49406" in text and "5–76" in text  # start id, padding positions
    long = model.tokenizer.encode(" ".join(["red"] * 80))
    text = _render(views.tokens_table(long))
    assert "77 of 77 tokens" in text and "cut by the 77-token limit" in text


def test_models_table_marks_the_default(tmp_path):
    sources = [ModelSource(tmp_path / "a", "diffx", "diffx folder (tiny)"),
               ModelSource(tmp_path / "b", "diffusers", "diffusers folder")]
    text = _render(views.models_table(sources))
    assert text.index("default") < text.index(str(tmp_path / "b"))
    assert "no model found" in _render(views.models_table([]))


def test_check_outputs(tmp_path):
    existing = tmp_path / "a.png"
    existing.write_bytes(b"x")
    views.check_outputs([tmp_path / "new" / "deeper" / "b.png", None])
    views.check_outputs([existing], force=True)
    with pytest.raises(OutputPathError, match="--force"):
        views.check_outputs([existing])
    with pytest.raises(OutputPathError, match="is a folder"):
        views.check_outputs([tmp_path])
    with pytest.raises(OutputPathError, match="cannot write"):
        views.check_outputs([existing / "c.png"])  # "folder" is a file


def test_save_animation(tmp_path, traced):
    frames = views.denoise_frames(traced)
    path = views.save_animation(frames, tmp_path / "a.gif", frame_ms=50)
    with Image.open(path) as gif:
        assert gif.n_frames == STEPS and gif.info["duration"] == 50
    with pytest.raises(InvalidArgumentError, match="unknown animation format"):
        views.save_animation(frames, tmp_path / "a.png")
    with pytest.raises(InvalidArgumentError, match="positive"):
        views.save_animation(frames, tmp_path / "b.gif", frame_ms=0)


def test_write_trace_views(tmp_path, model, traced):
    written = views.write_trace_views(traced, tmp_path / "t.gif", tmp_path / "t.png")
    assert [p.name for p in written] == ["t.gif", "t.png", "t_attention.png"]
    assert Image.open(tmp_path / "t.png").size == (32, 32)
    unconditional = generate(model, _settings(prompt=""), trace=True).traces[0]
    written = views.write_trace_views(unconditional, tmp_path / "u.gif", tmp_path / "u.png")
    assert [p.name for p in written] == ["u.gif", "u.png"]  # no words, no attention grid


def test_init_image_and_mask(tmp_path):
    Image.new("RGB", (64, 48), (255, 0, 0)).save(tmp_path / "image.png")
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[:, 32:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.new("L", (32, 32)).save(tmp_path / "small_mask.png")
    image, resized = views.load_init_image(tmp_path / "image.png", (32, 24), tmp_path / "mask.png")
    assert image.size == (32, 24) and resized.shape == (24, 32)
    assert set(resized.unique().tolist()) == {0.0, 1.0} and resized[:, 16:].all() and not resized[:, :16].any()
    with pytest.raises(InputImageError, match="resize the mask"):
        views.load_init_image(tmp_path / "image.png", (32, 24), tmp_path / "small_mask.png")
    assert views.strength_for_timestep(999) == 1.0
    with pytest.raises(InvalidArgumentError):
        views.strength_for_timestep(1000)


def test_decodes_match_the_pipeline(model, traced):
    # The vae preview of the last step is the decode of the last x̂0, which is what the pipeline decodes.
    last = views.x0_pictures(traced, [STEPS - 1], "vae", model)[0]
    assert np.array_equal(last, decode_latents(model, traced.tensors["x0"][-1:].float())[0])
