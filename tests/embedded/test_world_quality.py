"""The v2 evaluation: diversity, saturation and the curve checks on hand-made inputs, the v2 pointing game,
and the whole evaluation, the card and its plot on a tiny randomly-initialised v2 model."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from diffx.embedded.card import GUIDANCE_PLOT, write_model_card
from diffx.embedded.config import TrainConfig
from diffx.embedded.export import record_default_guidance
from diffx.embedded.pool import scene_pool
from diffx.embedded.pool_render import render_pool
from diffx.embedded.world import Background, Scene, WorldObject, render
from diffx.embedded.world_judge import analyse
from diffx.embedded.world_measures import (
    curve_checks,
    diversity,
    entropy_bits,
    normalised_entropy,
    open_attributes,
    oversaturated,
)
from diffx.embedded.world_quality import (
    TUNING_FILE,
    V2_REPORTED,
    evaluate_world,
    generate_pictures,
    model_world,
    tune_guidance,
    vae_fidelity,
    validation_prompts,
    world_last_line,
    world_pointing_trials,
    world_targets,
)
from diffx.embedded.world_text import make_eval_prompts, parse_caption
from diffx.errors import CheckpointError
from diffx.models.configs import TextEncoderConfig, UNetConfig, VAEConfig, shapes_world_2, tiny
from diffx.models.stable_diffusion import build
from diffx.pipeline.generation import generate
from diffx.pipeline.settings import GenerationSettings
from diffx.render.plots import plot_guidance_tradeoff
from diffx.weights.load import load_model, save_model
from tests.embedded.test_quality import fake_trace

RED_CIRCLE = WorldObject("circle", "red", "large", "center", (0.5, 0.5), 0.18, fill="solid")
PLAIN = Background("plain", ("white",))


def small_v2_model() -> torch.nn.Module:
    """A v2 model (config name "shapes-world-2", 128 px, f8 VAE) shrunk to a few kB, 2 sampling steps."""
    torch.manual_seed(0)
    return build(replace(
        shapes_world_2(), default_steps=2,
        text_encoder=TextEncoderConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2),
        unet=UNetConfig(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(0, 1),
                        num_heads=2, context_dim=32, norm_num_groups=8),
        vae=VAEConfig(ch=8, ch_mult=(1, 1, 1, 1), num_res_blocks=1, norm_num_groups=4)))


def test_saturation_is_zero_on_clean_renders_and_counts_pixels_more_chromatic_than_the_palette():
    scene = Scene((RED_CIRCLE, replace(RED_CIRCLE, colour="orange", fill="striped", position="top left",
                                       centre=(0.2, 0.2), radius=0.1)), Background("checkered", ("pale pink",)))
    clean = render(scene)
    assert oversaturated(clean) == 0.0
    clipped = clean.copy()
    clipped[:32, :, :] = (255, 0, 0)  # the top quarter at full red: chroma 255, beyond orange's 250
    assert oversaturated(clipped) == pytest.approx(0.25)
    bright = clean.copy()
    bright[32:64, :, :] = 255  # a quarter decoded a little too bright: white is not saturated
    assert oversaturated(bright) == 0.0


def test_entropy_of_values():
    assert entropy_bits(["a"] * 16) == 0.0
    assert entropy_bits(["a", "b"] * 8) == pytest.approx(1.0)
    assert normalised_entropy(["a", "b", "c", "d"], possible=4) == pytest.approx(1.0)
    assert normalised_entropy(["a", "b"] * 8, possible=4) == pytest.approx(0.5)


def test_diversity_is_zero_for_identical_pictures_and_positive_for_varied_ones():
    spec = parse_caption("a red circle")
    assert set(open_attributes(spec)) == {"background kind", "background tint", "position", "size", "fill"}
    same = analyse(render(Scene((RED_CIRCLE,), PLAIN)))
    assert diversity([spec], [[same] * 16])["diversity"] == 0.0
    varied = []
    for k, (position, centre) in enumerate([("top left", (0.2, 0.2)), ("center", (0.5, 0.5)),
                                            ("bottom right", (0.8, 0.8)), ("top right", (0.8, 0.2))] * 4):
        obj = replace(RED_CIRCLE, position=position, centre=centre, size="small", radius=0.1,
                      fill=("solid", "striped", "dotted")[k % 3])
        background = [PLAIN, Background("checkered", ("pale blue",)),
                      Background("gradient", ("white", "pale green"))][k % 3]
        varied.append(analyse(render(Scene((obj,), background))))
    result = diversity([spec], [varied])
    assert 0.3 < result["diversity"] <= 1.0
    assert result["distinct"]["position"] == 4 and result["distinct"]["background kind"] == 3
    assert result["by_attribute"]["size"] == 0.0  # every one small


def test_curve_checks():
    def curve(all_rates, diversities, saturations):
        return [{"guidance": w, "all": a, "diversity": d, "saturation": s}
                for w, a, d, s in zip((1.0, 3.0, 7.5, 15.0), all_rates, diversities, saturations, strict=True)]

    good = curve((0.5, 0.7, 0.8, 0.75), (0.8, 0.6, 0.4, 0.3), (0.0, 0.0, 0.01, 0.05))
    assert all(curve_checks(good, 7.5).values())
    bad = curve((0.65, 0.6, 0.8, 0.9), (0.4, 0.5, 0.5, 0.3), (0.0, 0.0, 0.05, 0.01))
    assert curve_checks(bad, 7.5) == {"guidance gap": False, "monotone to default": False,
                                      "diversity falls": False, "saturation rises": False}
    assert curve_checks(good, 3.0)["guidance gap"] is True  # 0.7 - 0.5 = 0.2: the bar itself passes


def test_v2_pointing_game_uses_noun_and_colour_maps():
    prompt = "a red circle left of a blue square on a white background"
    scene = Scene((replace(RED_CIRCLE, position="left", centre=(0.25, 0.5), radius=0.15),
                   replace(RED_CIRCLE, shape="square", colour="blue", position="right", centre=(0.75, 0.5),
                           radius=0.15)), PLAIN)
    words = prompt.split()
    right = fake_trace(words, {"red": (0.25, 0.5), "circle": (0.25, 0.5), "blue": (0.75, 0.5),
                               "square": (0.75, 0.5)})
    assert world_pointing_trials(prompt, render(scene), right) == {"noun": [True, True], "colour": [True, True]}
    colours_swapped = fake_trace(words, {"red": (0.75, 0.5), "circle": (0.25, 0.5), "blue": (0.25, 0.5),
                                         "square": (0.75, 0.5)})
    assert world_pointing_trials(prompt, render(scene), colours_swapped) == {"noun": [True, True],
                                                                             "colour": [False, False]}
    assert world_pointing_trials("a red circle", render(scene), right) == {"noun": [], "colour": []}


def test_batched_generation_matches_generate():
    model = small_v2_model()
    prompts, seeds = ["a red circle", "a blue star left of a green heart", "a pink ring"], [3, 4, 5]
    batched = generate_pictures(model, prompts, seeds, guidance=5.0, batch=2)
    for prompt, seed, picture in zip(prompts, seeds, batched, strict=True):
        alone = generate(model, GenerationSettings(prompt=prompt, seed=seed, guidance=5.0)).images[0]
        assert np.abs(alone.astype(int) - picture.astype(int)).max() <= 2


def test_evaluate_world_is_well_formed_and_the_card_shows_it(tmp_path):
    model = small_v2_model()
    assert model_world(model) == "shapes2" and model_world(build(tiny())) == "shapes"
    result = evaluate_world(model, n=3, guidances=(1.0, 15.0), open_prompts=1, diversity_seeds=2, batch=8)
    assert [point["guidance"] for point in result["curve"]] == [1.0, 7.5, 15.0]  # the default added
    assert (result["guidance"], result["steps"], result["sampler"]) == (7.5, 2, "ddim")
    assert set(result["rates"]) == {"one object", "2-3 objects", "all prompts"}
    for point in result["curve"]:
        assert 0.0 <= point["all"] <= 1.0 and 0.0 <= point["diversity"] <= 1.0 and 0.0 <= point["saturation"] <= 1
        assert all(0.0 <= rate <= 1.0 for group in point["rates"].values() for rate in group.values())
    assert set(world_targets(result)) >= {"colour", "fill", "multi-object all", "pointing", "guidance gap",
                                          "monotone to default", "diversity falls", "saturation rises",
                                          "VAE colour", "VAE shape", "VAE position"}
    assert all(0.0 <= rate <= 1.0 for rate in result["vae"].values())
    line = world_last_line(result)
    assert line.startswith("color=") and [part.split("=")[0] for part in line.split()] == [
        "color", "shape", "position", "pointing", "gap", "diversity_drop"]
    card = write_model_card(tmp_path, model, [], result).read_text(encoding="utf-8")
    assert "| w | all attributes |" in card and "7.5 (default)" in card and f"`{line}`" in card
    assert (tmp_path / GUIDANCE_PLOT).stat().st_size > 1000


def test_guidance_plot_checks_its_inputs():
    image = plot_guidance_tradeoff([1, 7.5], {"all": [0.2, 0.8]}, [0.9, 0.3], [0.0, 0.1], default=7.5)
    assert image.size[0] > 500
    with pytest.raises(Exception, match="one adherence value"):
        plot_guidance_tradeoff([1, 7.5], {"all": [0.2]}, [0.9, 0.3])


def test_parallel_pool_is_the_pool_training_renders(tmp_path):
    fast = TrainConfig(out_dir=str(tmp_path / "fast"), world="shapes2", pool_size=6)
    render_pool(fast, workers=2)
    slow = TrainConfig(out_dir=str(tmp_path / "slow"), world="shapes2", pool_size=6)
    assert torch.equal(scene_pool(fast)[1], scene_pool(slow)[1])


def test_vae_fidelity_pairs_each_reconstruction_with_its_own_caption(monkeypatch):
    """With a VAE that returns its input (the picture as its own 'latent'), every attribute is read right: the
    scenes, their captions and the decoded pictures stay in step."""
    from diffx.embedded import world_quality
    from diffx.images import tensor_to_image

    class Perfect:
        def encode(self, x):
            return type("Posterior", (), {"mean": x})()

    model = small_v2_model()
    monkeypatch.setattr(model, "vae", Perfect())
    monkeypatch.setattr(model.config.vae, "scaling_factor", 1.0)
    monkeypatch.setattr(world_quality, "decode_latents",
                        lambda model, latents: [tensor_to_image(image) for image in latents.float()])
    perfect = vae_fidelity(model, n=12, batch=5)
    assert perfect["all"] == 1.0 and perfect["colour"] == perfect["shape"] == 1.0


def test_validation_prompts_are_never_reported_prompts():
    reported = set(make_eval_prompts(V2_REPORTED, 0))
    prompts = validation_prompts(200)
    assert len(prompts) == 200 and not reported & set(prompts)
    assert any(prompt in reported for prompt in make_eval_prompts(200, 1000))  # what is left out exists


def test_tuned_guidance_is_the_peak_and_becomes_the_folders_default(tmp_path, monkeypatch):
    import diffx.embedded.world_quality as world_quality

    model = small_v2_model()
    rates = {1.0: 0.2, 3.0: 0.6, 5.0: 0.6, 7.5: 0.4}  # a tie at the peak: the smaller scale keeps more diversity
    monkeypatch.setattr(world_quality, "grouped_rates", lambda prompts, pictures: {
        "all prompts": {"all": rates[pictures[0]]}})
    monkeypatch.setattr(world_quality, "generate_pictures",
                        lambda m, prompts, seeds, w, batch, steps: [w] * len(prompts))
    tuning = tune_guidance(model, [7.5, 1, 5, 3], n=4)
    assert tuning["scales"] == [1.0, 3.0, 5.0, 7.5] and tuning["all"] == [0.2, 0.6, 0.6, 0.4]
    assert (tuning["chosen"], tuning["n"], tuning["seed"]) == (3.0, 4, 1000)

    folder = save_model(model, tmp_path / "model")
    assert record_default_guidance(folder, tuning) == 3.0
    assert load_model(folder).config.default_guidance == 3.0
    monkeypatch.undo()
    result = evaluate_world(load_model(folder), n=2, guidances=(1.0,), open_prompts=1, diversity_seeds=2, batch=8)
    card = write_model_card(folder, load_model(folder), [], result).read_text(encoding="utf-8")
    assert "## How the default guidance was chosen" in card and "peaked at w = 3" in card and "| 5 | 0.600 |" in card
    assert "guidance 3 (the model's default)" in card


def test_tuning_runs_the_model_and_a_bad_folder_is_left_alone(tmp_path):
    tuning = tune_guidance(small_v2_model(), [1.0, 5.0], n=2, batch=2)
    assert tuning["chosen"] in (1.0, 5.0) and all(0.0 <= rate <= 1.0 for rate in tuning["all"])
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="no readable config.json"):
        record_default_guidance(tmp_path, tuning)
    assert not (tmp_path / TUNING_FILE).exists() and (tmp_path / "config.json").read_text() == "{not json"
