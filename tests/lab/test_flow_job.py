"""lab/flow_job.py through `run_lab`: `objective="both"` trains the two models alike and writes one GIF with the flow's
rows under diffusion's, the flow figure and (with reflow) the reflow figure (the flow options' bad values:
tests/lab/test_lab_job.py)."""

from pathlib import Path

import pytest
from PIL import Image

from diffx.errors import OutputPathError
from diffx.lab.job import LabJob, run_lab
from diffx.lab.train import LabTrainConfig

QUICK = LabTrainConfig(steps=60, batch=128, width=32, depth=1)


def _frame_size(path: Path) -> tuple[int, tuple[int, int]]:
    with Image.open(path) as gif:
        return gif.n_frames, gif.size


def test_both_objectives_share_the_gif_and_the_flow_writes_its_figures(tmp_path):
    job = LabJob(samplers=("ddim",), steps=3, particles=200, gif=tmp_path / "both.gif", out=tmp_path / "both.png",
                 train=QUICK, objective="both", reflow=True, shift=3.0)
    stages = []
    result = run_lab(job, lambda stage, done, total, loss: stages.append(stage))
    assert result.written == [tmp_path / name for name in ("both.gif", "both.png", "both_reflow.png")]
    assert set(result.sliced_wasserstein) == {"ddim"} and result.untrained_sliced_wasserstein is not None
    flow = result.flow
    assert set(flow.sliced_wasserstein) == {"flow_euler", "flow_heun", "reflow_euler"}
    assert set(flow.straightness) == {"ddim", "flow_euler", "reflow_euler"}
    assert flow.equivalence_gap < 1e-4 and set(flow.few_steps) == {"flow", "reflow"}
    assert set(flow.few_steps["flow"]) == {1, 2} and len(flow.losses) == QUICK.steps
    assert {"training on two moons, linear β", "training the flow model on two moons", "drawing the GIF frames",
            "drawing the flow's GIF frames"} <= set(stages) and any(stage.startswith("reflow:") for stage in stages)
    frames, (width, height) = _frame_size(tmp_path / "both.gif")
    diffusion_only = LabJob(samplers=("ddim",), steps=3, particles=200, gif=tmp_path / "d.gif", train=QUICK)
    run_lab(diffusion_only)
    assert frames == 4 and height > 1.8 * _frame_size(tmp_path / "d.gif")[1][1]  # the flow's rows under diffusion's
    for name in ("both.png", "both_reflow.png"):
        with Image.open(tmp_path / name) as picture:
            assert picture.width >= 4 * 200  # four 200-px panels side by side at least


def test_the_flow_alone_trains_no_diffusion_model(tmp_path):
    job = LabJob(steps=2, particles=100, gif=None, out=tmp_path / "flow.png", train=QUICK, objective="flow")
    result = run_lab(job)
    assert result.written == [tmp_path / "flow.png"]
    assert result.sliced_wasserstein == {} and result.untrained_sliced_wasserstein is None
    assert set(result.flow.straightness) == {"flow_euler"} and set(result.flow.few_steps) == {"flow"}


def _bad(tmp_path: Path, **changes) -> LabJob:
    return LabJob(**{"gif": tmp_path / "lab.gif", "train": QUICK, "objective": "flow", **changes})


def test_the_reflow_figure_is_never_overwritten_without_force(tmp_path):
    (tmp_path / "flow_reflow.png").write_bytes(b"keep")
    with pytest.raises(OutputPathError, match="flow_reflow.png already exists; pass --force"):
        run_lab(_bad(tmp_path, out=tmp_path / "flow.png", reflow=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flow_reflow.png"]
    # without --reflow that file is not an output of the job, so it is no obstacle
    (tmp_path / "flow_schedules.png").write_bytes(b"keep")  # nor is what --out names for diffusion
    run_lab(_bad(tmp_path, gif=None, out=tmp_path / "flow.png", steps=2, particles=50))
    assert (tmp_path / "flow_reflow.png").read_bytes() == b"keep"
