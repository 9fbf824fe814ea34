"""The `diffx` command line, driven through Typer's CliRunner on a tiny random model: files written,
exit codes, one-line errors, overwriting rules and the examples in the help."""

import json
import shlex

import numpy as np
import pytest
import typer
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from diffx.cli import app
from diffx.sampling.grids import SAMPLERS

STEPS = 2
MODEL_GROUP = ("--model", "--device", "--dtype", "--weights", "--config", "--prediction-type", "--lora",
               "--embedding")
GUIDED = ("denoise", "trace", "attention", "edit", "weights", "cfg-sweep", "compare", "predict", "paths", "invert")


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Invoke `diffx ARGS…` in a fresh working folder; returns the click Result."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIFFX_MODEL", raising=False)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


@pytest.fixture
def fast(tiny_model_dir):
    """Options that make every generating command quick."""
    return ["--model", tiny_model_dir, "--steps", STEPS, "--size", 32, "--device", "cpu"]


def ok(result):
    assert result.exit_code == 0, result.output + result.stderr + repr(result.exception)
    assert "Traceback" not in result.stderr
    return result


def refused(result, *fragments: str):
    """Exit code 2 with exactly one `error: …` line on stderr that contains every fragment."""
    assert result.exit_code == 2, result.output + repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.stderr


def frames(path) -> tuple[int, tuple[int, int]]:
    with Image.open(path) as animation:
        return animation.n_frames, animation.size


def picture(path, size=(32, 32), colour=(200, 40, 40)):
    Image.new("RGB", size, colour).save(path)
    return path


def test_trace_writes_gif_image_attention_grid_and_trace(run, fast):
    result = ok(run("trace", "--prompt", "a red circle", "--gif", "out/run.gif", "--save-trace", "out/run.trace",
                    *fast))
    count, size = frames("out/run.gif")
    assert count == STEPS
    assert Image.open("out/run.png").size == (32, 32)
    assert Image.open("out/run_attention.png").width > 0
    for name in ("out/run.gif", "out/run.png", "out/run_attention.png", "out/run.trace"):
        assert f"wrote {name}" in result.stdout
    assert f"{STEPS}/{STEPS}" in result.stderr  # the progress bar goes to stderr

    # Re-rendered from the file, without a model: the same frames.
    ok(run("render", "out/run.trace", "--gif", "again/run.gif", "--out", "again/run.png", "--attn-scale", "word"))
    assert frames("again/run.gif") == (count, size)
    assert np.array_equal(np.asarray(Image.open("again/run.png")), np.asarray(Image.open("out/run.png")))


def test_render_writes_what_it_is_asked(run, fast, tmp_path):
    """Each output option names one thing (--out with its attention grid); with none, what `trace` writes."""
    ok(run("trace", "-p", "a red circle", "--gif", "t.gif", "--save-trace", "saved.safetensors", *fast))
    before = {path.name for path in tmp_path.iterdir()}

    def new_files(*args: str) -> set[str]:
        ok(run("render", "saved.safetensors", *args))
        written = {path.name for path in tmp_path.iterdir()} - before
        before.update(written)
        return written

    assert new_files("--convergence", "conv.png") == {"conv.png"}
    assert new_files("--gif", "only.gif") == {"only.gif"}
    assert new_files("--out", "only.png") == {"only.png", "only_attention.png"}
    assert new_files() == {"saved.gif", "saved.png", "saved_attention.png"}  # no output named: the default


def test_existing_outputs_need_force(run, fast):
    ok(run("trace", "-p", "a red circle", "--gif", "t.gif", *fast))
    before = open("t.gif", "rb").read()
    refused(run("trace", "-p", "a blue square", "--gif", "t.gif", *fast), "t.gif already exists", "--force")
    assert open("t.gif", "rb").read() == before  # untouched
    ok(run("trace", "-p", "a blue square", "--gif", "t.gif", "--seed", 1, "--force", *fast))
    assert open("t.gif", "rb").read() != before


def test_render_vae_preview_needs_stored_decodes_or_a_model(run, fast, tiny_model_dir, monkeypatch):
    ok(run("trace", "-p", "a red circle", "--gif", "fast.gif", "--save-trace", "fast.trace", "--preview", "fast",
           *fast))
    refused(run("render", "fast.trace", "--gif", "vae.gif", "--preview", "vae", "--model", "nowhere"), "nowhere")
    ok(run("render", "fast.trace", "--gif", "vae.gif", "--preview", "vae", "--model", tiny_model_dir))
    # A trace made with --preview vae stores every decode: rendering it needs no model at all (the default model is
    # not looked for; a --model given is checked all the same, as every option).
    ok(run("trace", "-p", "a red circle", "--gif", "vae2.gif", "--save-trace", "vae.trace", "--preview", "vae", *fast))
    monkeypatch.setenv("DIFFX_MODEL", "nowhere")
    ok(run("render", "vae.trace", "--gif", "vae3.gif", "--preview", "vae"))
    assert frames("vae3.gif") == frames("vae2.gif")


@pytest.mark.parametrize("onednn_bf16", [True, False], ids=["onednn-bf16", "no-onednn-bf16"])
def test_denoise_in_bf16_on_any_cpu(run, fast, monkeypatch, onednn_bf16):
    """`--dtype bf16` asked for on the CPU runs whether or not oneDNN has bf16 convolutions there (an AVX2-only
    CPU has none: it used to die in the packed weight's reorder with a traceback); False simulates such a CPU."""
    from diffx.models import fast_cpu

    if onednn_bf16 and not fast_cpu.onednn_bf16_kernels():
        pytest.skip("oneDNN has no bf16 convolutions on this CPU")
    monkeypatch.setattr(fast_cpu, "onednn_bf16_kernels", lambda: onednn_bf16)
    ok(run("denoise", "-p", "a red circle", "--dtype", "bf16", *fast))
    assert Image.open("denoise.png").size == (32, 32)


def test_denoise_text_image_and_inpainting(run, fast, tmp_path):
    ok(run("denoise", "--gif", "d.gif", *fast))  # unconditional
    assert frames("d.gif")[0] == STEPS and Image.open("denoise.png").size == (32, 32)
    assert Image.open("denoise_steps.png").width > 0

    picture(tmp_path / "in.png", (48, 48))
    ok(run("denoise", "-p", "a red circle", "--image", "in.png", "--t", 999, "--steps", 4, "--out", "i2i.png",
           "--gif", "i2i.gif", *fast[:2], "--size", 32))
    assert frames("i2i.gif")[0] == 4  # --t 999: the whole schedule

    mask = np.zeros((48, 48), dtype=np.uint8)
    mask[:, 24:] = 255
    Image.fromarray(mask).save("mask.png")
    ok(run("denoise", "-p", "a red circle", "--image", "in.png", "--mask", "mask.png", "--out", "inpaint.png", *fast))
    Image.new("L", (16, 16)).save("small.png")
    refused(run("denoise", "--image", "in.png", "--mask", "small.png", "--out", "x.png", *fast), "resize the mask")
    refused(run("denoise", "--image", "in.png", "--t", 500, "--strength", 0.5, "--out", "y.png", *fast),
            "--t and --strength")
    refused(run("denoise", "--strength", 0.5, "--out", "z.png", *fast), "--image")


def test_noise_pixel_and_latent(run, fast, tmp_path):
    picture(tmp_path / "photo.png", (40, 24))
    result = ok(run("noise", "photo.png", "--gif", "n.gif", "--sampler", "ddim", "--steps", 10,
                    "--timesteps", "0,500,999"))
    assert "wrote noise_schedules.png" in result.stdout
    count, _ = frames("n.gif")
    assert count > 10
    ok(run("noise", "photo.png", "--latent", "--out", "latent.png", "--schedules", "cosine", *fast))
    assert Image.open("latent.png").height > Image.open("noise.png").height / 3
    (tmp_path / "notes.txt").write_text("not a picture")
    refused(run("noise", "notes.txt", "--out", "bad.png"), "notes.txt", "PNG or JPEG")
    refused(run("noise", "photo.png", "--out", "bad.png", "--timesteps", "0,1000"), "timestep 1000")


def test_noise_plot_takes_the_models_spacing_from_its_config_alone(run, tmp_path, monkeypatch):
    """Without --latent, `noise` reads the model's config.json (the embedded model samples trailing, t = 999 … 39)
    and never its weights."""
    from diffx.experiments import sweeps
    from diffx.weights import load

    def no_weights(path):
        raise AssertionError(f"read the weights {path}")

    monkeypatch.setattr(load, "read_state_dict", no_weights)
    results, views = [], sweeps.noise_views

    def kept(*args, **kwargs):
        results.append(views(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(sweeps, "noise_views", kept)
    picture(tmp_path / "photo.png", (24, 24))
    ok(run("noise", "photo.png", "--model", "embedded", "--sampler", "ddim", "--steps", 25, "--timesteps", "999"))
    assert results[0].visits[0] == 999 and results[0].visits[-1] == 39


def test_cfg_sweep_and_compare(run, fast):
    ok(run("cfg-sweep", "-p", "a red circle", "--scales", "1,7.5", "--rows-steps", "1,2", "--gif", "cfg.gif", *fast))
    assert frames("cfg.gif")[0] == STEPS + 1  # every step, then the results
    assert Image.open("cfg_sweep.png").width > 2 * 32
    refused(run("cfg-sweep", "-p", "x", "--scales", "1,lots", "--out", "c2.png", *fast), "--scales")
    refused(run("cfg-sweep", "-p", "x", "--scales", "1,-2", "--out", "c3.png", *fast), "guidance must be >= 0")
    refused(run("cfg-sweep", "-p", "x", "--rows-steps", "9", "--out", "c4.png", *fast), "step 9 is out of range")

    ok(run("compare", "-p", "a red circle", "--x", "sampler=ddim,euler", "--y", "steps=1,2", *fast))
    assert Image.open("compare.png").width > 2 * 32
    refused(run("compare", "--x", "colour=red", "--out", "c.png", *fast), "unknown comparison axis", "sampler")


@pytest.mark.parametrize(("options", "fragments"), [
    (["--steps", "0"], ["steps must be at least 1"]),
    (["--sampler", "plms"], ["unknown sampler 'plms'", ", ".join(SAMPLERS)]),
    (["--schedule", "quadratic"], ["unknown schedule", "scaled_linear"]),
    (["--guidance", "-1"], ["guidance must be >= 0"]),
    (["--size", "30"], ["not a positive multiple of 4", "try 32"]),
    (["--size", "big"], ["--size 'big'", "WIDTHxHEIGHT"]),
    (["--preview", "slow"], ["unknown preview", "fast, tiny, vae"]),
    (["--karras", "--sampler", "ddim"], ["Karras"]),
])
def test_bad_options_are_one_line_errors(run, fast, options, fragments):
    refused(run("trace", "-p", "a red circle", "--gif", "bad.gif", *fast, *options), *fragments)


def test_missing_model_bad_paths_and_debug(run, fast, tmp_path):
    refused(run("denoise", "--model", "no/such/model"), "no/such/model", "--model")
    (tmp_path / "file").write_text("")
    refused(run("denoise", "--out", "file/x.png", *fast), "cannot write to folder file")
    (tmp_path / "folder").mkdir()
    refused(run("denoise", "--out", "folder", *fast), "is a folder")
    refused(run("trace", "--gif", "x.webm", *fast), "animation format")
    result = run("--debug", "denoise", "--model", "no/such/model")
    assert result.exit_code == 1 and isinstance(result.exception, FileNotFoundError)  # the error itself


def test_diffx_model_environment_variable(run, fast, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("DIFFX_MODEL", str(tiny_model_dir))
    ok(run("denoise", "--steps", 1, "--size", 32))
    monkeypatch.setenv("COLUMNS", "300")  # room for the whole path on one line
    table = ok(run("models")).stdout
    assert str(tiny_model_dir) in table and "default" in table


def test_truncated_prompt_is_one_yellow_warning(run, fast):
    result = ok(run("denoise", "-p", " ".join(["red"] * 80), *fast))
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "77 tokens" in warnings[0]


def test_negative_prompt_given_empty_is_not_no_negative_prompt(run, fast):
    """`--negative-prompt ""` reaches the settings as "" (SDXL encodes it), no option as None (SDXL: zeros, as
    diffusers); the trace records which."""
    from diffx.trace import load_trace

    ok(run("trace", "-p", "a red circle", "--save-trace", "none.trace", *fast))
    ok(run("trace", "-p", "a red circle", "--negative-prompt", "", "--save-trace", "empty.trace", "--out", "e.png",
           *fast))
    assert [load_trace(name).settings.negative_prompt for name in ("none.trace", "empty.trace")] == [None, ""]


def test_tokens(run):
    result = ok(run("tokens", "a red circle"))
    assert "circle</w>" in result.stdout and "7117" in result.stdout and "5 of 77 tokens" in result.stdout


def test_help_ends_with_a_runnable_example(run, fast, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # no wrapping inside the example line
    assert ok(run("--help")).stdout.strip().splitlines()[-1].strip().startswith("Example: diffx trace")
    assert all(name in ok(run("trace", "--help")).stdout for name in SAMPLERS)
    picture(tmp_path / "photo.png")
    # Overrides appended after each example keep it quick on the tiny model (click takes the last value).
    overrides = {"noise": [], "tokens": [], "models": [], "render": [], "compare": [*fast, "--y", "steps=1,2"]}
    ok(run("trace", "-p", "a red circle", "--gif", "saved.gif", "--save-trace", "out.safetensors", *fast))
    for name in ("trace", "denoise", "noise", "render", "cfg-sweep", "compare", "tokens", "models"):
        help_text = ok(run(name, "--help")).stdout.strip().splitlines()
        example = help_text[-1].strip()
        assert example.startswith(f"Example: diffx {name}"), help_text[-3:]
        args = shlex.split(example.removeprefix("Example: diffx "))
        ok(run(*args, *overrides.get(name, fast)))



def test_train_resumes_and_exports_a_loadable_model(run, tmp_path):
    """`diffx train` runs both stages, checkpoints, resumes where it stopped and exports a model folder."""
    import torch

    from diffx.weights.load import load_model

    out_dir, export = tmp_path / "run", tmp_path / "model"
    common = ["train", "--out-dir", out_dir, "--vae-steps", 2, "--batch", 4, "--pool-size", 8]
    ok(run(*common, "--unet-steps", 1))
    assert (out_dir / "unet_state.pt").exists() and (out_dir / "vae_samples.png").exists()
    ok(run(*common, "--unet-steps", 2, "--export", export, "--no-previews"))  # the grids: drawn by the first run
    state = torch.load(out_dir / "unet_state.pt", weights_only=True)["state"]
    assert state["step"] == 2 and len(state["losses"]) == 2  # resumed at step 1, did one more
    model = load_model(export)
    assert model.config.name == "shapes-world" and model.config.vae.latent_rgb_factors is not None
    assert "## Training" in (export / "MODEL_CARD.md").read_text()
    # A later sitting continues from the exported weights: the VAE is kept, the U-Net goes on.
    again = tmp_path / "again"
    ok(run("train", "--out-dir", again, "--init-from", export, "--vae-steps", 2, "--unet-steps", 1,
           "--batch", 4, "--pool-size", 8, "--lr", 1e-3, "--device", "cpu", "--attention-loss", 0.01,
           "--export", export, "--force", "--no-previews"))
    vae_before = torch.load(out_dir / "vae_state.pt", weights_only=True)["vae"]
    vae_after = torch.load(again / "vae_state.pt", weights_only=True)["vae"]
    assert all(torch.equal(vae_before[k].half().float(), vae_after[k]) for k in vae_before)
    # Re-exported over the folder it continued from: the history keeps both runs, the card names both.
    runs = json.loads((export / "training.json").read_text())["runs"]
    assert [r["unet"]["steps"] for r in runs] == [2, 1] and runs[1]["settings"]["unet_lr"] == 1e-3
    assert runs[1]["vae"]["final_loss"] is None and "CPU" in runs[1]["unet"]["hardware"]
    assert runs[1]["unet"]["final_grounding_loss"] > 0 and "final_grounding_loss" not in runs[0]["unet"]
    card = (export / "MODEL_CARD.md").read_text()
    assert "- Run 1:" in card and f"- Run 2, continued from `{export}`" in card
    assert card.count("Text encoder + U-Net: ") == 2 and card.count("attention-grounding loss x0.01") == 1
    assert "were trained to" in card
    missing = run("train", "--out-dir", again, "--device", "cuda:7")
    assert missing.exit_code == 2 and "cuda" in missing.stderr


def test_report_command_writes_html_from_saved_traces(run, fast, tmp_path):
    trace_file, html = tmp_path / "t.safetensors", tmp_path / "r.html"
    ok(run("trace", "--prompt", "a red circle", *fast, "--gif", tmp_path / "t.gif", "--save-trace", trace_file))
    ok(run("report", trace_file, trace_file, "--html", html))
    page = html.read_text()
    assert page.lower().startswith("<!doctype html>") and "red" in page
    again = run("report", trace_file, "--html", html)
    assert again.exit_code == 2 and "--force" in again.stderr


def test_report_draws_x0_with_preview(run, fast, tiny_model_dir):
    """--preview as in every command: auto shows the decodes a trace holds (a trace made with --preview fast has
    none: the latent preview), vae decodes what the trace lacks with the --model that made it."""
    ok(run("trace", "-p", "a red circle", *fast, "--gif", "d.gif", "--save-trace", "decoded.trace"))
    ok(run("trace", "-p", "a red circle", *fast, "--gif", "f.gif", "--save-trace", "fast.trace", "--preview", "fast"))
    for trace_file, label in (("decoded.trace", "x̂0 (VAE decode)"), ("fast.trace", "x̂0 (latent preview)")):
        ok(run("report", trace_file, "--html", f"{trace_file}.html"))  # --preview auto
        assert f'"x0_label": "{label}"' in open(f"{trace_file}.html", encoding="utf-8").read()
    refused(run("report", "fast.trace", "--preview", "vae", "--html", "v.html", "--model", "nowhere"), "nowhere")
    ok(run("report", "fast.trace", "--preview", "vae", "--html", "v.html", "--model", tiny_model_dir))
    assert '"x0_label": "x̂0 (VAE decode)"' in open("v.html", encoding="utf-8").read()


@pytest.mark.parametrize("bad", [["--lr", "0"], ["--attention-loss", "-1"], ["--checkpoint-every", "0"]])
def test_train_rejects_bad_settings_before_any_work(run, tmp_path, bad):
    result = run("train", "--out-dir", tmp_path / "run", *bad)
    assert result.exit_code == 2 and result.stderr.startswith("error:") and bad[0] in result.stderr
    assert not (tmp_path / "run").exists()


def test_cfg_sweep_with_html_and_no_out_writes_only_the_html(run, fast, tmp_path):
    ok(run("cfg-sweep", "-p", "a red circle", "--scales", "1,3", "--html", "sweep.html", *fast))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.html"]


def test_out_jpg_writes_a_jpeg(run, fast, tmp_path):
    ok(run("denoise", "-p", "a red circle", "--out", "o.jpg", *fast))
    with Image.open(tmp_path / "o.jpg") as written:
        assert written.format == "JPEG"


def test_help_has_no_bool_metavar_and_paragraphs_wrap_at_the_terminal(run, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    text = ok(run("trace", "--help")).output
    assert "<bool>" not in text and "<list[" not in ok(run("report", "--help")).output
    assert "prompt word at every step" in text  # the docstring's own line breaks are gone
    assert "<bool>" not in ok(run("--help")).output  # the app's own flags (--debug, --version) too
    assert '"[blue]"' in ok(run("weights", "--help")).output  # brackets are text, not rich markup


def test_shared_options_are_the_same_in_every_command():
    """Issue #30: a command that loads a model takes the whole model group, one that samples with guidance takes
    --guidance-rescale, and each of those options has one help text in every command that takes it as such (train,
    which loads no model, has its own --prediction-type: what the model it makes learns to predict)."""
    helps: dict[str, set[str]] = {}
    for name, command in typer.main.get_command(app).commands.items():
        options = {flag: param.help for param in command.params for flag in param.opts}
        assert "--model" not in options or set(MODEL_GROUP) <= options.keys(), name
        assert name not in GUIDED or "--guidance-rescale" in options, name
        for flag in (*MODEL_GROUP, "--guidance-rescale"):
            if flag in options and (flag != "--prediction-type" or "--model" in options):
                helps.setdefault(flag, set()).add(options[flag])
    assert all(len(texts) == 1 for texts in helps.values()), helps


@pytest.fixture(scope="module")
def checkpoint(tiny_model_dir, tmp_path_factory):
    """The tiny model as one original-layout file that also holds an EMA copy of its U-Net."""
    weights = load_file(tiny_model_dir / "model.safetensors")
    ema = {"model_ema." + key.removeprefix("model.").replace(".", ""): tensor.clone()
           for key, tensor in weights.items() if key.startswith("model.diffusion_model.")}
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.safetensors"
    save_file({**weights, **ema}, path)
    return path


@pytest.mark.parametrize("command", [
    ["attention", "-p", "a red circle"],
    ["invert", "in.png", "--no-sweep"],
    ["paths", "--samplers", "ddim", "--reference", "ddim:3"],
])
def test_weights_config_and_prediction_type_reach_the_model_load(run, checkpoint, tmp_path, command):
    picture(tmp_path / "in.png")
    args = [*command, "--model", checkpoint, "--steps", STEPS, "--size", 32, "--device", "cpu"]
    refused(run(*args, "--config", "sd3"), "sd3", "sd15")
    refused(run(*args, "--weights", "both"), "unknown weights 'both'; choose one of: ema, main")
    refused(run(*args, "--prediction-type", "x0"), "unknown prediction type 'x0'; choose one of: epsilon, v_prediction")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.png"]
    notes = ok(run(*args, "--config", "tiny", "--weights", "main", "--prediction-type", "V_PREDICTION")).stderr
    assert "the tiny config as given" in notes and "the main U-Net weights (--weights main" in notes, notes
    assert "predicts v_prediction (as given)" in notes, notes


def test_typos_lists_and_long_values_give_short_clear_lines(run):
    refused(run("tracee"), "No such command 'tracee'", "see diffx --help")
    refused(run("cfg-sweep", "--scales", "1,,3"), "--scales '1,,3' has an empty value between commas")
    result = run("cfg-sweep", "--scales", "x" * 5000)
    refused(result, "--scales", "expected floats separated by commas")
    assert len(result.stderr.strip()) <= 300


def test_colliding_outputs_are_refused_before_the_run(run):
    refused(run("trace", "--prompt", "a red circle", "--out", "t.png", "--save-trace", "t_attention.png"),
            "two outputs are both t_attention.png")
    refused(run("render", "saved.safetensors", "--out", "r.png", "--convergence", "r.png"), "two outputs are both")


def test_a_progress_bar_left_before_its_first_step_prints_nothing(capsys):
    """#31: an error raised before the first step (a bad value found late) prints its `error:` line alone — rich's
    stop() of a bar that showed nothing used to print an empty line before it."""
    from diffx.cli.lab import LabProgressBar
    from diffx.cli.progress import StepProgress

    for bar in (StepProgress(), LabProgressBar()):
        with pytest.raises(ValueError), bar:
            raise ValueError("refused before any step")
    assert capsys.readouterr().err == ""
