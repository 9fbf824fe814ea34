"""How samplers travel (diffx.trajectories, `diffx paths`), on the tiny random model: model evaluations counted
from the denoiser, deterministic samplers converging on the reference solve, paths in 2-D, the same measures
from a saved trace, and the command's files and refusals."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffx.cli import app
from diffx.errors import InvalidArgumentError
from diffx.experiments import trajectories
from diffx.pipeline.generation import generate
from diffx.pipeline.settings import GenerationSettings
from diffx.sampling.grids import SAMPLERS, GridSpec, sampling_grid
from diffx.sampling.schedules import NoiseSchedule
from diffx.trace.tracer import generate_traced
from tests.test_cli import ok, refused

STEP_COUNTS = (3, 6, 12)
REFERENCE = trajectories.Reference("dpmpp_2m", 48)
DETERMINISTIC = ("ddim", "euler", "heun", "dpmpp_2m")


def _settings(**changes) -> GenerationSettings:
    """16 px without guidance: one small U-Net batch per evaluation, so ~190 evaluations stay quick."""
    return GenerationSettings(**{"prompt": "a red circle", "height": 16, "width": 16, "guidance": 1.0, **changes})


@pytest.fixture(scope="module")
def counted(tiny_model):
    """The measured runs, and how many times the U-Net ran meanwhile (a forward hook: independent of the
    denoiser hook the recorder counts)."""
    calls = []
    handle = tiny_model.unet.register_forward_hook(lambda *_: calls.append(1))
    try:
        result = trajectories.sampler_paths(tiny_model, _settings(), SAMPLERS, STEP_COUNTS, REFERENCE)
    finally:
        handle.remove()
    return result, len(calls)


@pytest.fixture(scope="module")
def measured(counted):
    return counted[0]


def test_model_evaluations_are_counted_per_sampler(counted, tiny_model):
    measured, unet_calls = counted
    schedule = NoiseSchedule.from_config(tiny_model.config.scheduler)
    for run in measured.runs:
        expected = 2 * run.steps - 1 if run.sampler == "heun" else run.steps  # Heun's last step is plain Euler
        grid = sampling_grid(GridSpec(run.sampler, run.steps, "trailing"), schedule)
        assert run.nfe == expected == len(grid.model_timesteps())
        assert list(run.convergence.nfe) == list(range(1, run.nfe + 1))
        assert len(run.path) == run.nfe + 1 and len(run.states) == run.steps + 1
        assert run.convergence.step_nfe[-1] == run.nfe and len(run.convergence.step_size) == run.steps
    assert measured.reference.nfe == REFERENCE.steps
    # Without guidance the denoiser runs the U-Net once per call: every call was counted, none twice.
    assert unet_calls == measured.reference.nfe + sum(run.nfe for run in measured.runs)


def test_every_run_starts_from_the_same_x_t_and_ends_on_the_pipeline_result(measured, tiny_model):
    starts = torch.stack([run.path[0] for run in [measured.reference, *measured.runs]])
    # σ-space samplers with trailing spacing start from σ_max ε, fed to the model as σ_max ε / √(σ_max² + 1).
    assert torch.allclose(starts, starts[0].expand_as(starts), rtol=3e-3)
    alone = generate(tiny_model, _settings(sampler="heun", steps=6, spacing="trailing"))
    assert torch.equal(measured.run("heun", 6).path[-1], alone.latents[0])


def test_deterministic_samplers_converge_on_the_reference_as_steps_grow(measured):
    for sampler in DETERMINISTIC:
        errors = [error for _, error in measured.endpoint_errors(sampler)]
        assert errors[0] > errors[1] > errors[2], (sampler, errors)
    # Second-order solvers beat first-order ones at the same step count (Karras et al. 2022, Lu et al. 2022).
    at = {sampler: measured.run(sampler).convergence.final_error for sampler in DETERMINISTIC}
    assert max(at["heun"], at["dpmpp_2m"]) < min(at["ddim"], at["euler"])


def test_measures_follow_their_definitions(measured):
    run = measured.run("dpmpp_2m")
    measures = run.convergence
    x_ref = measured.reference.path[-1]
    k = 4
    assert measures.reference_error[k] == pytest.approx((run.x0[k] - x_ref).pow(2).mean().sqrt().item(), rel=1e-6)
    assert measures.x0_change[k] == pytest.approx((run.x0[k] - run.x0[-1]).pow(2).mean().sqrt().item(), rel=1e-6)
    assert measures.x0_change[-1] == 0
    assert measures.step_size[0] == pytest.approx((run.path[1] - run.path[0]).pow(2).mean().sqrt().item(), rel=1e-6)


def test_heun_path_keeps_the_corrected_states_not_the_predictor():
    timesteps = [999.0, 919.0, 919.0, 839.0, 839.0, 759.0]  # Heun, 4 steps: t0, t1 (guess), t1, t2 (guess), …
    assert list(trajectories.on_grid(timesteps)) == [True, False, True, False, True, True]
    path = torch.arange(7.0).reshape(7, 1, 1, 1)
    assert trajectories.grid_states(path, timesteps).flatten().tolist() == [0, 2, 4, 5, 6]


def test_pca_of_identical_paths_coincides_and_keeps_in_plane_distances():
    torch.manual_seed(0)
    path = torch.randn(10, 4, 8, 8)
    projected, _ = trajectories.pca_2d([path, path.clone(), torch.randn(6, 4, 8, 8)])
    np.testing.assert_array_equal(projected[0], projected[1])
    # Points on a plane through the data: the projection is exact, distances are RMS distances.
    basis = torch.linalg.qr(torch.randn(256, 2)).Q.T  # (2, 256) orthonormal
    flat = torch.randn(12, 2) @ basis * 5
    (plane,), share = trajectories.pca_2d([flat.reshape(12, 4, 8, 8)])
    distances = torch.cdist(flat.double(), flat.double()) / 16  # / √256
    np.testing.assert_allclose(np.linalg.norm(plane[:, None] - plane[None], axis=-1), distances.numpy(), atol=1e-9)
    assert share.sum() == pytest.approx(1.0)


def test_deterministic_paths_stay_together_and_ancestral_ones_wander(measured):
    def gap(a: str, b: str) -> float:
        return (measured.run(a).states - measured.run(b).states).pow(2).mean().sqrt().item()

    assert gap("ddim", "euler") < 0.05 * gap("ddim", "euler_a")  # the same ODE on the same grid
    assert gap("euler_a", "ddpm") < gap("ddim", "euler_a")


def test_trace_measures_match_the_live_run(tiny_model):
    settings = _settings(sampler="heun", steps=4, spacing="trailing")
    trace = generate_traced(tiny_model, settings).traces[0]
    from_trace = trajectories.trace_convergence(trace)
    live = trajectories.sampler_paths(tiny_model, settings, ["heun"], [4], trajectories.Reference("ddim", 2)).runs[0]
    np.testing.assert_array_equal(from_trace.nfe, live.convergence.nfe)
    np.testing.assert_allclose(from_trace.step_size, live.convergence.step_size, rtol=2e-2)  # trace stores fp16
    np.testing.assert_allclose(from_trace.x0_change[:-1], live.convergence.x0_change[:-1], rtol=2e-2)
    chart = trajectories.trace_convergence_chart(trace)
    assert isinstance(chart, Image.Image) and chart.width > chart.height
    svg = trajectories.trace_convergence_svg(trace)
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and "model evaluations (NFE)" in svg
    card = trajectories.convergence_section([trace, trace])
    assert card.count("<svg") == 2 and "heun, 7 model evaluations" in card
    del trace.tensors["x0"]
    with pytest.raises(InvalidArgumentError, match="has no x0"):
        trajectories.trace_convergence(trace)
    assert trajectories.convergence_section([trace]) == ""


def test_pictures_of_the_runs(measured):
    chart = trajectories.convergence_chart(measured)
    picture = trajectories.path_picture(measured)
    assert chart.width > 3 * chart.height  # four panels side by side with several step counts
    assert picture.height > 600
    colours = {tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in trajectories.SAMPLER_COLOURS.values()}
    for image in (chart, picture):
        pixels = {tuple(p) for p in np.asarray(image).reshape(-1, 3)}
        assert colours <= pixels  # every sampler's line is drawn


def test_bad_arguments_are_refused_before_any_run(tiny_model):
    for samplers, steps, reference, match in ((["ddim", "foo"], None, REFERENCE, "unknown sampler 'foo'"),
                                              ([], None, REFERENCE, "no samplers"),
                                              (["ddim", "ddim"], None, REFERENCE, "given twice"),
                                              (["ddim"], [3, 3], REFERENCE, "repeat"),
                                              (["ddim"], [0], REFERENCE, "at least 1"),
                                              (["ddim"], None, trajectories.Reference("euler_a"), "adds noise")):
        with pytest.raises(InvalidArgumentError, match=match):
            trajectories.sampler_paths(tiny_model, _settings(), samplers, steps, reference)
    with pytest.raises(InvalidArgumentError, match="finite"):
        trajectories.sampler_paths(tiny_model, _settings(guidance=float("nan")), ["ddim"], [2], REFERENCE)
    with pytest.raises(InvalidArgumentError, match="SAMPLER:STEPS"):
        trajectories.Reference.parse("dpmpp_2m")


def test_paths_command_writes_both_pictures_and_refuses_bad_input(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIFFX_MODEL", raising=False)
    runner = CliRunner()
    fast = ["--model", tiny_model_dir, "--size", 16, "--guidance", 1, "--device", "cpu", "--reference", "ddim:4"]

    def invoke(*args):
        return runner.invoke(app, ["paths", *map(str, [*fast, *args])])

    result = ok(invoke("--samplers", "ddim,heun", "--steps", "2,3", "--out", "p.png"))
    assert "heun    3 steps    5 model evaluations" in result.stdout
    for name in ("p.png", "p_convergence.png"):
        with Image.open(name) as picture:
            assert picture.width > 500
    refused(invoke("--samplers", "ddim,foo"), "unknown sampler 'foo'")
    refused(invoke("--guidance", "nan"), "finite")
    refused(invoke("--steps", "2,x"), "--steps")
    refused(invoke("--reference", "euler_a:10"), "adds noise")
    refused(invoke("--samplers", "ddim", "--steps", "2", "--out", "p.png"), "already exists", "--force")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["p.png", "p_convergence.png"]


def test_render_writes_the_convergence_chart_of_a_saved_trace(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    ok(runner.invoke(app, ["trace", "--model", str(tiny_model_dir), "--steps", "3", "--size", "16", "--device", "cpu",
                           "--sampler", "heun", "--gif", "t.gif", "--save-trace", "t.safetensors"]))
    ok(runner.invoke(app, ["render", "t.safetensors", "--gif", "r.gif", "--convergence", "c.png"]))
    with Image.open("c.png") as chart:
        assert chart.width > chart.height > 300
    refused(runner.invoke(app, ["render", "t.safetensors", "--gif", "s.gif", "--convergence", "c.png"]),
            "c.png already exists")
    refused(runner.invoke(app, ["render", "t.safetensors", "--gif", "s.gif", "--convergence", "c.txt"]), ".png")
    assert not (tmp_path / "s.gif").exists()


def test_paths_command_passes_guidance_rescale(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIFFX_MODEL", raising=False)
    runner = CliRunner()
    fast = ["--prompt", "a red circle", "--model", tiny_model_dir, "--size", 16, "--guidance", 7.5, "--device", "cpu",
            "--reference", "ddim:4", "--samplers", "ddim", "--steps", 2]  # a prompt: without one, ε_c = ε_u
    ok(runner.invoke(app, ["paths", *map(str, [*fast, "--out", "plain.png"])]))
    ok(runner.invoke(app, ["paths", *map(str, [*fast, "--guidance-rescale", 0.7, "--out", "rescaled.png"])]))
    assert not np.array_equal(np.asarray(Image.open("plain.png")), np.asarray(Image.open("rescaled.png")))
    refused(runner.invoke(app, ["paths", *map(str, [*fast, "--guidance-rescale", "nan"])]), "finite")
