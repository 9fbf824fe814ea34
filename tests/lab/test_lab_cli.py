"""`diffx lab`: a quick run writes its GIF and prints the sliced Wasserstein distances; bad input is one
`error:` line, exit 2, nothing written."""

import pytest
from PIL import Image
from typer.testing import CliRunner

from diffx.cli import app

QUICK = ["--train-steps", "40", "--steps", "3", "--particles", "100", "--samplers", "ddim,euler_a"]


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return lambda *args: CliRunner().invoke(app, ["lab", *map(str, args)])


def test_lab_writes_the_gif_and_reports_the_distances(run, tmp_path):
    result = run(*QUICK)
    assert result.exit_code == 0, result.output + result.stderr
    assert "wrote lab.gif" in result.stdout
    assert "sliced Wasserstein SW₁ to the data at 3 steps: ddim=" in result.stdout
    with Image.open(tmp_path / "lab.gif") as gif:
        assert gif.n_frames == 4


@pytest.mark.parametrize(("args", "message"), [
    (["--data", "circles"], "unknown data 'circles'"),
    (["--data", "missing.png"], "no image file at missing.png"),
    (["--samplers", "ddim,plms"], "unknown sampler 'plms'"),
    (["--steps", "0"], "steps must be 1 to 200"),
    (["--steps", "many"], "Invalid value for '--steps'"),
    (["--schedule", "quadratic"], "unknown beta schedule"),
    (["--guidance", "1,2"], "--guidance draws <out>_guidance.png; add --out"),
    (["--guidance", "1,nan", "--out", "lab.png"], "--guidance must be a finite number"),
    (["--guidance", "1,x", "--out", "lab.png"], "--guidance '1,x': expected floats"),
    (["--gif", "lab.mp4"], "name it .gif"),
    (["--out", "lab.bmp"], "name it .png, .jpg or .webp"),
    (["--train-steps", "0"], "lab training steps must be 1 to"),
    (["--particles", "1"], "particles must be 2 to"),
    (["--frame-ms", "0"], "--frame-ms must be a positive number"),
    (["--lessons", "classifier"], "--lessons draws <out>_classifier.png; add --out"),
    (["--lessons", "classifier,nope", "--out", "lab.png"], "unknown lesson 'nope'"),
    (["--lessons", "variance,variance", "--out", "lab.png"], "name one twice"),
    (["--lessons", " , ", "--out", "lab.png"], "--lessons is empty"),
    (["--lessons", "", "--out", "lab.png"], "--lessons is empty"),
    (["--objective", "score"], "unknown objective 'score'"),
    (["--objective", ""], "unknown objective ''"),
    (["--objective", "flow", "--shift", "nan"], "shift must be a finite number"),
    (["--objective", "flow", "--shift", "inf"], "shift must be a finite number"),
    (["--objective", "flow", "--shift", "-1"], "shift must be above 0"),
    (["--objective", "flow", "--shift", "0"], "shift must be above 0"),
    (["--objective", "flow", "--shift", "1e400"], "shift must be a finite number"),
    (["--objective", "flow", "--shift", "abc"], "Invalid value for '--shift'"),
    (["--shift", "3"], "--shift and --reflow are the flow model's; add --objective flow"),
    (["--reflow"], "--shift and --reflow are the flow model's; add --objective flow"),
    (["--objective", "flow", "--samplers", "ddim"], "--samplers and --schedule are the diffusion model's"),
    (["--objective", "both", "--out", "lab.png", "--guidance", "1,2"], "--guidance draws the diffusion model's"),
    (["--objective", "both", "--out", "lab.bmp"], "name it .png, .jpg or .webp"),
    (["--objective", "flow", "--out", "lab.png", "--lessons", "classifier"], "--lessons teach with the diffusion"),
    (["--objective", "both", "--out", "lab.png", "--lessons", "variance"], "--lessons teach with the diffusion"),
])
def test_bad_input_is_one_error_line_and_exit_2(run, tmp_path, args, message):
    result = run(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []


def test_both_objectives_report_the_flow(run, tmp_path):
    result = run(*QUICK, "--objective", "both", "--reflow", "--out", "flow.png")
    assert result.exit_code == 0, result.output + result.stderr
    assert "wrote flow.gif" in result.stdout and "wrote flow_reflow.png" in result.stdout
    for line in ("sliced Wasserstein SW₁ to the data at 3 steps: ddim=", "flow matching SW₁ to the data at 3 steps: "
                 "flow_euler=", "(1 = straight, in the flow's units x_t = (1−t)x_0 + tε): ddim=",
                 "max difference from flow Euler", "reflow SW₁ at 1 step "):
        assert line in result.stdout, line
    assert (tmp_path / "flow.png").exists() and not (tmp_path / "flow_schedules.png").exists()


def test_existing_output_needs_force(run, tmp_path):
    (tmp_path / "lab.gif").write_bytes(b"keep")
    result = run(*QUICK)
    assert result.exit_code == 2 and "already exists; pass --force" in result.stderr
    assert (tmp_path / "lab.gif").read_bytes() == b"keep"
    # --out names the animation too (spiral.png -> spiral.gif), so a second run with --out keeps the first's GIF.
    named = run(*QUICK, "--out", "spiral.png")
    assert named.exit_code == 0, named.stderr
    assert "wrote spiral.gif" in named.stdout and (tmp_path / "lab.gif").read_bytes() == b"keep"
    assert run(*QUICK, "--force").exit_code == 0


def test_lessons_print_their_measurements(run, tmp_path):
    result = run(*QUICK, "--out", "lab.png", "--lessons", "classifier")
    assert result.exit_code == 0, result.output + result.stderr
    assert "wrote lab_classifier.png" in result.stdout
    assert "classifier lesson: cos_t25=" in result.stdout and "spread_classifier_w8=" in result.stdout


def test_the_classifier_lesson_needs_labelled_data(run, tmp_path):
    Image.new("L", (8, 8), 255).save(tmp_path / "white.png")
    result = run("--data", "white.png", "--out", "lab.png", "--lessons", "classifier")
    assert result.exit_code == 2 and "the classifier lesson needs two classes or more" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["white.png"]


def test_black_mask_is_refused(run, tmp_path):
    Image.new("L", (8, 8), 0).save(tmp_path / "black.png")
    result = run("--data", "black.png")
    assert result.exit_code == 2 and "black everywhere" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["black.png"]
