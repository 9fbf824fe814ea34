"""`diffx train` checks every option and output path before any work (issue #13): each bad value gives
exit code 2, one `error:` line naming the option, no traceback, and no file written or changed.

Table-driven: every numeric option x every bad value class (NaN, ±inf, negative, zero where 0 is not
allowed, huge, non-numeric, empty), every path option x (empty, a file, under a file), plus an existing
export without --force, --init-from missing / not a model / another architecture, and bad devices. The
scene pool builder raises if called, so no case can reach training."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from diffx.cli import app
from diffx.models.configs import shapes_world

# option -> does 0 fail? (seed and attention-loss accept 0); the TrainConfig field each sets: test_config.py.
# --threads, every command's option (tests/test_threads.py), is among PATH_CASES' other checks.
NUMERIC = {"--vae-steps": True, "--unet-steps": True, "--batch": True, "--lr": True, "--pool-size": True,
           "--seed": False, "--attention-loss": False, "--checkpoint-every": True,
           "--vae-batch": True, "--vae-crop": True}
BAD_NUMBERS = {"nan": "nan", "inf": "inf", "-inf": "-inf", "negative": "-1", "huge": "1e400",
               "huge-int": "1" + "0" * 30, "non-numeric": "abc", "empty": ""}
NUMERIC_CASES = [(f"{option} {kind}", [option, value], option) for option in NUMERIC
                 for kind, value in BAD_NUMBERS.items()] + [
    (f"{option} zero", [option, "0"], option) for option, zero_fails in NUMERIC.items() if zero_fails]
PATHS = ("--out-dir", "--export", "--init-from")
PATH_CASES = [
    *[(f"{option} empty", [option, ""], option) for option in PATHS],
    *[(f"{option} is a file", [option, "{file}"], option) for option in PATHS],
    *[(f"{option} under a file", [option, "{file}/sub"], option) for option in PATHS],
    ("--export existing model without --force", ["--export", "{model}"], "--force"),
    ("--export is --out-dir", ["--export", "{out}"], "--export"),
    ("--init-from missing", ["--init-from", "{tmp}/nope"], "--init-from"),
    ("--init-from folder without a model", ["--init-from", "{tmp}/empty"], "--init-from"),
    ("--init-from another architecture", ["--init-from", "{other}"], "model_channels"),
    ("--vae-crop not a multiple of the VAE's factor", ["--vae-crop", "30"], "vae_crop"),
    ("--vae-crop over the image size", ["--vae-crop", "128"], "vae_crop"),
    ("--world unknown", ["--world", "planets"], "world"),
    ("--exact-captions on v1", ["--exact-captions"], "--exact-captions"),
    ("--device empty", ["--device", ""], "device"),
    ("--device unknown", ["--device", "tpu"], "device"),
    *[(f"--threads {value or 'empty'}", ["--threads", value], "--threads") for value in ("0", "-1", "abc", "", "1e9")],
]
if not torch.cuda.is_available():
    PATH_CASES.append(("--device unavailable", ["--device", "cuda:7"], "cuda"))
CASES = NUMERIC_CASES + PATH_CASES


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A temp folder with a plain file, an exported model, an empty folder and another architecture's model;
    the scene pool (the first costly work) made to fail if training ever got that far."""
    def no_pool(*_args, **_kwargs):
        raise AssertionError("training started: the scene pool was asked for")

    monkeypatch.setattr("diffx.embedded.train.scene_pool", no_pool)
    monkeypatch.setattr("diffx.embedded.export.scene_pool", no_pool)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(Path(__file__).parents[2] / "data" / "shapes-world-2" / "config.json", model / "config.json")
    (model / "model.safetensors").write_bytes(b"")
    other = tmp_path / "other"
    other.mkdir()
    config = shapes_world().to_dict()
    config["unet"]["model_channels"] = 32
    (other / "config.json").write_text(json.dumps(config))
    (other / "model.safetensors").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    return tmp_path


@pytest.mark.parametrize(("name", "args", "named"), CASES, ids=[case[0] for case in CASES])
def test_train_refuses_bad_input_with_one_line_before_any_work(setup, name, args, named):
    tmp = setup
    places = {"file": tmp / "afile", "model": tmp / "model", "tmp": tmp, "other": tmp / "other",
              "out": tmp / "run"}
    args = [a.format(**places) for a in args]
    if args[0] != "--out-dir":
        args = ["--out-dir", str(tmp / "run"), *args]
    before = _snapshot(tmp)
    result = CliRunner().invoke(app, ["train", "--vae-steps", "2", "--unet-steps", "2", *args])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (name, result.output, result.stderr, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error:") and len(lines[0]) <= 300, (name, result.stderr)
    assert named in lines[0], (name, lines[0])
    assert "Traceback" not in result.output + result.stderr and "╭" not in result.stderr
    assert _snapshot(tmp) == before, name


def test_the_table_covers_every_numeric_and_path_option():
    assert len(CASES) >= 90 and {case[2] for case in NUMERIC_CASES} == set(NUMERIC)


def test_export_over_an_existing_model_is_allowed_with_force(setup):
    """With --force the export check passes: training starts (here: the scene pool is asked for)."""
    result = CliRunner().invoke(app, ["train", "--out-dir", str(setup / "run"), "--vae-steps", "2",
                                      "--export", str(setup / "model"), "--force"])
    assert isinstance(result.exception, AssertionError) and "scene pool" in str(result.exception)
