"""`diffx train` checks every option and output path before any work (issue #13): each bad value gives
exit code 2, one `error:` line naming the option, no traceback, and no file written or changed.

Table-driven: every numeric option x every bad value class (NaN, ±inf, negative, zero where 0 is not
allowed, huge, non-numeric, empty), every path option x (empty, a file, under a file), plus an existing
export without --force, --init-from missing / not a model / another architecture, and bad devices; and a
training folder to resume from whose files are damaged, hostile or from another run. The scene pool builder
raises if called, so no case can reach training."""

import json
import os
import pickle
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
    ("--device with a bad index", ["--device", "cpu:abc"], "device"),
    ("--family unknown", ["--family", "flux"], "family"),
    ("--family empty", ["--family", ""], "family"),
    ("--family sd3 with a U-Net's target", ["--family", "sd3", "--prediction-type", "v_prediction"],
     "--prediction-type"),
    ("--family sd3 with --zero-snr", ["--family", "sd3", "--zero-snr"], "--zero-snr"),
    ("--family sd3 from another world's model", ["--family", "sd3", "--world", "shapes2", "--init-from", "{other}"],
     "--init-from"),
    ("--prediction-type unknown", ["--prediction-type", "x0"], "prediction"),
    ("--prediction-type empty", ["--prediction-type", ""], "prediction"),
    ("--object-counts not numbers", ["--object-counts", "a,b"], "--object-counts"),
    ("--object-counts NaN", ["--object-counts", "nan,1"], "--object-counts"),
    ("--object-counts negative", ["--object-counts", "-1,2"], "object_counts"),
    ("--object-counts an empty value", ["--object-counts", "1,,2"], "--object-counts"),
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


# A training folder that `diffx train --out-dir` resumes from: each of its files damaged or from another run
# gives the same one line (naming the file) before any work, and leaves the folder as it was.

TINY = ["--batch", "2", "--vae-batch", "2", "--pool-size", "4", "--device", "cpu", "--no-previews"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A training folder made by a genuine (tiny) run: what the checks must accept, and the damaged copies start
    from."""
    out = tmp_path_factory.mktemp("trained") / "run"
    threads = torch.get_num_threads()
    # One thread: on a busy machine, each of torch's parallel regions waits for every thread (3x the time here).
    result = CliRunner().invoke(app, ["train", "--out-dir", str(out), "--vae-steps", "1", "--unet-steps", "1",
                                      "--checkpoint-every", "1", "--threads", "1", *TINY])
    torch.set_num_threads(threads)  # `train` set it for the process: the other tests keep theirs
    assert result.exit_code == 0, (result.output, result.stderr, result.exception)
    return out


class _Payload:
    """Unpickled, this would write `marker` (what a hostile checkpoint could do instead)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (self.marker, "the pickle ran")


def test_the_hostile_payload_would_run_if_unpickled(tmp_path):
    """The hostile case below tests something: unpickled as plain pickle does it, the payload runs."""
    pickle.loads(pickle.dumps(_Payload(tmp_path / "MARKER")))
    assert (tmp_path / "MARKER").read_text() == "the pickle ran"


def _replace(path: Path, payload: object) -> None:
    """`path` made anew (never written through: the copies of the genuine folder are hard links to it)."""
    path.unlink()
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    elif isinstance(payload, str):
        path.write_text(payload)
    else:
        torch.save(payload, path)


def _edited(path: Path, edit) -> None:
    """`path`'s checkpoint with `edit` applied to what it holds."""
    saved = torch.load(path, weights_only=True)
    edit(saved)
    _replace(path, saved)


def _first_key(state: dict) -> str:
    return next(iter(state))


# name -> (file, how to damage it (None: leave the folder as it is), extra options, what the line names)
FOLDER_CASES = {
    "corrupt bytes": ("pool.pt", lambda p, _: _replace(p, b"\x80not a checkpoint" * 8), [], "not a PyTorch"),
    "truncated zip": ("vae_state.pt", lambda p, _: _replace(p, p.read_bytes()[:4096]), [], "truncated"),
    "hostile pickle": ("unet_state.pt", lambda p, m: _replace(p, {"unet": _Payload(m)}), [], "refused unread"),
    "hostile raw pickle": ("pool.pt", lambda p, m: _replace(p, pickle.dumps(_Payload(m))), [], "not a PyTorch"),
    "wrong top-level type": ("pool_latents.pt", lambda p, _: _replace(p, {"means": torch.zeros(1)}), [],
                             "not a pair of tensors"),
    "missing key": ("unet_state.pt", lambda p, _: _edited(p, lambda s: s.pop("ema")), [], "lacks 'ema'"),
    "wrong dtype": ("pool.pt", lambda p, _: _replace(p, torch.load(p, weights_only=True).float()), [],
                    "torch.float32, training uses torch.uint8"),
    "wrong shape": ("vae_state.pt", lambda p, _: _edited(p, lambda s: s["vae"].update(
        {_first_key(s["vae"]): torch.zeros(3)})), [], "has shape [3]"),
    "NaN tensor": ("unet_state.pt", lambda p, _: _edited(p, lambda s: s["unet"][_first_key(s["unet"])].fill_(
        float("nan"))), [], "NaN"),
    "optimizer of another shape": ("vae_state.pt", lambda p, _: _edited(
        p, lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(2))), [], "exp_avg' of parameter 0"),
    "state of wrong types": ("vae_state.pt", lambda p, _: _edited(p, lambda s: s["state"].update(step="1")), [],
                             "step is not a whole number"),
    "rng not JSON": ("unet_state.pt", lambda p, _: _edited(p, lambda s: s.update(rng="{")), [], "rng"),
    "train_config.json not JSON": ("train_config.json", lambda p, _: _replace(p, "{"), [], "not readable JSON"),
    "another architecture": ("train_config.json", lambda p, _: _replace(p, p.read_text().replace(
        '"model_channels": 40', '"model_channels": 32')), [], "model_channels is 32"),
    "another pool size": ("train_config.json", None, ["--pool-size", "8"], "pool_size 4, this one has 8"),
    "another seed": ("train_config.json", None, ["--seed", "1"], "seed 0"),
    "another world": ("train_config.json", None, ["--world", "shapes2"], "world 'shapes'"),
    "another prediction type": ("train_config.json", None, ["--prediction-type", "v_prediction"],
                                "prediction_type"),
}


@pytest.mark.parametrize("name", FOLDER_CASES)
def test_train_refuses_a_damaged_or_foreign_training_folder_before_any_work(setup, trained, name):
    file, damage, extra, named = FOLDER_CASES[name]
    run, marker = setup / "run", setup / "MARKER"
    shutil.copytree(trained, run, copy_function=os.link)
    if damage is not None:
        damage(run / file, marker)
    before = _snapshot(setup)
    result = CliRunner().invoke(app, ["train", "--vae-steps", "2", "--unet-steps", "2", "--out-dir", str(run),
                                      *TINY, *extra])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (name, result.output, result.stderr, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error:") and len(lines[0]) <= 300, (name, result.stderr)
    assert f"{file}:" in lines[0] and named in lines[0] and "--out-dir" in lines[0], (name, lines[0])
    assert "Traceback" not in result.output + result.stderr and "╭" not in result.stderr
    assert _snapshot(setup) == before and not marker.exists(), name


def test_a_genuine_training_folder_resumes(setup, trained):
    """The folder a real run left passes every check, with more steps and another learning rate: training
    starts (here: the scene pool is asked for, once the run's settings are saved as they are on every resume)."""
    run = setup / "run"
    shutil.copytree(trained, run, copy_function=os.link)
    before = _snapshot(run)
    result = CliRunner().invoke(app, ["train", "--vae-steps", "2", "--unet-steps", "5", "--lr", "1e-3",
                                      "--attention-loss", "0.01", "--out-dir", str(run), *TINY])
    assert isinstance(result.exception, AssertionError) and "scene pool" in str(result.exception), result.stderr
    assert json.loads((run / "train_config.json").read_text())["unet_steps"] == 5
    after = _snapshot(run)
    assert {name: after[name] for name in before if name != "train_config.json"} == \
        {name: stamp for name, stamp in before.items() if name != "train_config.json"}
