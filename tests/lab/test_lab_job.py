"""lab/job.py: `run_lab` writes the GIF (one frame per step, one size, under 2 MB) and the --out figures, and
refuses every bad argument and output path before any work, writing nothing."""

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffx.errors import InputImageError, InvalidArgumentError, OutputPathError
from diffx.lab.figures import grid_note
from diffx.lab.job import LabJob, run_lab
from diffx.lab.model import LabModel
from diffx.lab.sampling import run_sampler
from diffx.lab.train import LabTrainConfig
from diffx.sampling.schedules import NoiseSchedule

QUICK = LabTrainConfig(steps=60, batch=128, width=32, depth=1)


def test_run_lab_writes_the_gif_and_the_figures(tmp_path):
    job = LabJob(samplers=("ddim", "euler_a"), steps=4, particles=200, guidance=(0.0, 2.0),
                 gif=tmp_path / "lab.gif", out=tmp_path / "lab.png", train=QUICK)
    stages = []
    result = run_lab(job, lambda stage, done, total, loss: stages.append(stage))
    assert result.written == [tmp_path / name for name in
                              ("lab.gif", "lab.png", "lab_schedules.png", "lab_guidance.png")]
    assert set(result.sliced_wasserstein) == {"ddim", "euler_a"} and set(result.spread) == {0.0, 2.0}
    assert len(result.losses) == QUICK.steps
    assert {"training on two moons, linear β", "training on two moons, cosine β", "drawing the GIF frames"
            } <= set(stages)
    with Image.open(tmp_path / "lab.gif") as gif:
        assert gif.n_frames == job.steps + 1
    assert (tmp_path / "lab.gif").stat().st_size < 2_000_000
    for name in ("lab.png", "lab_schedules.png", "lab_guidance.png"):
        with Image.open(tmp_path / name) as picture:
            assert picture.width >= 2 * 200  # at least two 200-px panels side by side


def test_a_sampler_on_its_own_grid_is_named_under_the_frame():
    """At 25 leading steps DDIM visits t = 961, 921 … 1 and DPM++ 2M t = 951, 913 … 39 (diffusers spaces its
    N + 1 points and drops the last): step 13 shows t = 441 against 457, and the frame says why."""
    noise = torch.zeros(4, 2)
    schedule = NoiseSchedule.create("linear")
    model = LabModel(num_classes=2, width=8, depth=1)
    runs = [run_sampler(model, schedule, sampler, 25, noise) for sampler in ("ddim", "euler", "dpmpp_2m")]
    assert runs[0].timesteps[13] == 441 and runs[2].timesteps[13] == 457
    assert grid_note(runs) == ("dpmpp_2m steps on t = 951, 913 … 39 (N + 1 points spaced, the last dropped, as "
                               "diffusers does); the others on t = 961, 921 … 1")
    assert grid_note(runs[:2]) is None  # DDIM and Euler share the grid


def _bad(tmp_path: Path, **changes) -> LabJob:
    fields = {"gif": tmp_path / "lab.gif", "train": QUICK, **changes}
    return LabJob(**fields)


@pytest.mark.parametrize(("changes", "error", "message"), [
    ({"data": "circles"}, InvalidArgumentError, "unknown data 'circles'"),
    ({"data": "nowhere.png"}, InputImageError, "no image file at nowhere.png"),
    ({"samplers": ()}, InvalidArgumentError, "no samplers given"),
    ({"samplers": ("ddim", "lms")}, InvalidArgumentError, "unknown sampler 'lms'"),
    ({"samplers": ("ddim", "ddim")}, InvalidArgumentError, "name one twice"),
    ({"steps": 0}, InvalidArgumentError, "steps must be 1 to 200"),
    ({"steps": 201}, InvalidArgumentError, "steps must be 1 to 200"),
    ({"schedule": "quadratic"}, InvalidArgumentError, "unknown beta schedule 'quadratic'"),
    ({"guidance": ()}, InvalidArgumentError, "guidance list is empty"),
    ({"guidance": (float("nan"),)}, InvalidArgumentError, "guidance must be a finite number"),
    ({"guidance": (-1.0,)}, InvalidArgumentError, "guidance weight -1 is out of range"),
    ({"seed": -1}, InvalidArgumentError, "seed must be 0 to"),
    ({"particles": 1}, InvalidArgumentError, "particles must be 2 to"),
    ({"gif": None}, InvalidArgumentError, "nothing to write"),
    ({"gif": Path("lab.mp4")}, InvalidArgumentError, "name it .gif"),
    ({"out": Path("lab.tiff")}, InvalidArgumentError, "name it .png, .jpg or .webp"),
    ({"lessons": ("variance",)}, InvalidArgumentError, "--lessons draws <out>_variance.png; add --out"),
    ({"lessons": ("flow",), "out": Path("lab.png")}, InvalidArgumentError, "unknown lesson 'flow'"),
    ({"objective": "score"}, InvalidArgumentError, "unknown objective 'score'; choose one of: diffusion, flow, both"),
    ({"reflow": True}, InvalidArgumentError, "--shift and --reflow are the flow model's"),
    ({"shift": 3.0}, InvalidArgumentError, "--shift and --reflow are the flow model's"),
    *[({"objective": "flow", **changes}, InvalidArgumentError, message) for changes, message in [
        ({"shift": math.nan}, "shift must be a finite number"),
        ({"shift": math.inf}, "shift must be a finite number"),
        ({"shift": 0.0}, "shift must be above 0"),
        ({"shift": -3.0}, "shift must be above 0"),
        ({"shift": 1e9}, "at most 100"),
        ({"samplers": ("ddim",)}, "--samplers and --schedule are the diffusion model's"),
        ({"schedule": "cosine"}, "--samplers and --schedule are the diffusion model's"),
        ({"out": Path("flow.bmp")}, "name it .png, .jpg or .webp"),
        ({"out": Path("flow.png"), "lessons": ("classifier",)}, "--lessons teach with the diffusion model's"),
    ]],
])
def test_bad_arguments_are_refused_before_any_work(tmp_path, changes, error, message):
    with pytest.raises(error, match=message):
        run_lab(_bad(tmp_path, **changes))
    assert list(tmp_path.iterdir()) == []


def test_lessons_write_their_pictures_and_report_their_measurements(tmp_path):
    job = LabJob(samplers=("ddim",), steps=3, particles=100, guidance=(0.0, 1.0), gif=None, out=tmp_path / "lab.png",
                 train=QUICK, lessons=("variance", "classifier"))
    result = run_lab(job)
    assert result.written[-2:] == [tmp_path / "lab_variance.png", tmp_path / "lab_classifier.png"]
    assert set(result.lessons) == {"variance", "classifier"}
    assert "sw_10_learned_linear" in result.lessons["variance"] and "cos_t300" in result.lessons["classifier"]
    # The classifier lesson's CFG row is the guidance figure's run: the same spreads.
    assert result.lessons["classifier"]["spread_cfg_w1"] == result.spread[1.0]


def test_outputs_are_never_overwritten_without_force(tmp_path):
    (tmp_path / "lab_guidance.png").write_bytes(b"keep")
    with pytest.raises(OutputPathError, match="already exists; pass --force"):
        run_lab(_bad(tmp_path, out=tmp_path / "lab.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab_guidance.png"]
    (tmp_path / "lab_guidance.png").rename(tmp_path / "lab_variance.png")  # a lesson's picture is kept too
    with pytest.raises(OutputPathError, match="lab_variance.png already exists; pass --force"):
        run_lab(_bad(tmp_path, out=tmp_path / "lab.png", lessons=("classifier", "variance")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab_variance.png"]
