"""Issue #13: no command can be made to write garbage, crash with a traceback or destroy a file.

Table-driven: every command × every numeric and path option it has × each class of bad value (NaN, ±inf,
negative, zero, huge, non-numeric, empty, a file where a folder must be, an existing output without
--force, a wrong suffix). Each case must exit 2 with exactly one short `error:` line, no traceback, and
leave every file in the working folder as it was."""

import pytest
from PIL import Image
from typer.testing import CliRunner

from diffx.cli import app

FLOATS = ["nan", "inf", "-inf", "-1", "1e400", "abc", ""]
INTS = ["-1", "abc", "", "99999999999999999999999"]
OUTPUTS = ["existing.png", "afile/o.png", "afolder", "o.bmp", ""]
ANIMATIONS = ["existing.gif", "afile/o.gif", "afolder", "o.txt", "o.mp4"]
INPUTS = ["missing.png", "afolder", "afile", "notpicture.png", ""]


def _cases() -> list[tuple[str, list[str]]]:
    gen = ["--steps", "2", "--size", "32", "--device", "cpu"]
    commands = {
        "denoise": ["denoise", "--prompt", "a red circle", *gen],
        "trace": ["trace", "--prompt", "a red circle", *gen],
        "cfg-sweep": ["cfg-sweep", "--scales", "1,3", *gen],
        "compare": ["compare", "--x", "sampler=ddim,euler", *gen],
    }
    cases = []

    def add(name, args):
        cases.append((f"{name}:{' '.join(args[-2:])}", args))

    for name, base in commands.items():
        for value in ["0", "-1", "abc", "", "100000"]:
            add(name, [*base, "--steps", value])
        for value in ["0", "-32", "abc", "", "1000000", "33"]:
            add(name, [*base, "--size", value])
        for value in INTS:
            add(name, [*base, "--seed", value])
        for value in OUTPUTS:
            add(name, [*base, "--out", value])
        add(name, [*base, "--sampler", "ddim", "--karras"])
        for value in ["sd3", ""]:
            add(name, [*base, "--config", value])
        if name != "cfg-sweep":
            for value in FLOATS:
                add(name, [*base, "--guidance", value])
        if name in ("denoise", "trace", "cfg-sweep"):
            for value in ANIMATIONS:
                add(name, [*base, "--gif", value])
            for value in ["0", "-1", "abc"]:
                add(name, [*base, "--frame-ms", value])
        if name in ("denoise", "trace"):
            for value in [*FLOATS, "0", "2"]:
                add(name, [*base, "--image", "picture.png", "--strength", value])
            for value in ["-1", "1000", "abc", "0"]:
                add(name, [*base, "--image", "picture.png", "--t", value])
            for value in INPUTS:
                add(name, [*base, "--image", value])
                add(name, [*base, "--image", "picture.png", "--mask", value])
            add(name, [*base, "--image", "picture.png", "--mask", "small.png"])
    loaders = {**commands, "attention": ["attention", "--prompt", "a red circle", *gen],
               "invert": ["invert", "picture.png", "--no-sweep", *gen],
               "paths": ["paths", "--samplers", "ddim", "--reference", "ddim:3", *gen]}
    for name, base in loaders.items():
        add(name, [*base, "--weights", "both"])
        if name not in commands:
            for value in ["sd3", ""]:
                add(name, [*base, "--config", value])
        for value in [*FLOATS, "1.5"]:
            add(name, [*base, "--guidance-rescale", value])
    for value in ["existing.html", "afile/r.html", "afolder"]:
        add("trace", [*commands["trace"], "--html", value])
        add("trace", [*commands["trace"], "--save-trace", value])
        add("cfg-sweep", [*commands["cfg-sweep"], "--html", value])
    for value in ["nan", "inf", "-inf", "1e400", "-1", "abc", "", "1,,nan"]:
        add("cfg-sweep", [*commands["cfg-sweep"], "--scales", value])
    for value in ["0", "abc", "", "999999"]:
        add("cfg-sweep", [*commands["cfg-sweep"], "--rows-steps", value])
    for value in ["guidance=nan,1", "guidance=inf", "guidance=1e400", "guidance=-1", "karras=maybe", "steps=a,b",
                  "steps=0", "steps=", "", "bogus=1", "seed=-1", "sampler=nope"]:
        add("compare", [*commands["compare"], "--x", value])
    add("compare", [*commands["compare"], "--y", "sampler=ddim"])
    noise = ["noise", "picture.png", "--timesteps", "0,500"]
    for value in ["-1", "1000", "abc", ""]:
        add("noise", [*noise, "--timesteps", value])
    for value in ["", "bogus"]:
        add("noise", [*noise, "--schedules", value])
    for value in ["0", "-32", "abc", "1000000"]:
        add("noise", [*noise, "--size", value])
    for value in OUTPUTS:
        add("noise", [*noise, "--out", value])
    for value in ANIMATIONS:
        add("noise", [*noise, "--gif", value])
    for value in INPUTS:
        add("noise", ["noise", value])
    for value in ["-1", "0", "abc"]:
        add("noise", [*noise, "--frame-ms", value])
    render = ["render", "notatrace.safetensors"]
    for value in OUTPUTS:
        add("render", [*render, "--out", value])
    for value in ANIMATIONS:
        add("render", [*render, "--gif", value])
    for value in ["-1", "0", "abc"]:
        add("render", [*render, "--frame-ms", value])
    for value in ["missing.safetensors", "afolder", "afile", "notatrace.safetensors"]:
        add("render", ["render", value])
        add("report", ["report", value, "--html", "r.html"])
    for value in ["existing.html", "afile/r.html", "afolder"]:
        add("report", ["report", "notatrace.safetensors", "--html", value])
    drawing_x0 = {name: commands[name] for name in ("denoise", "trace", "cfg-sweep")}
    drawing_x0.update(attention=loaders["attention"], invert=loaders["invert"], render=render,
                      report=["report", "notatrace.safetensors", "--html", "r.html"])
    for name, base in drawing_x0.items():  # every command that draws x̂0 takes --preview, checked first
        for value in ["sharp", ""]:
            add(name, [*base, "--preview", value])
    return cases


CASES = _cases()


def _snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize(("case", "args"), CASES, ids=[case for case, _ in CASES])
def test_bad_input_is_refused_in_one_line(case, args, tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIFFX_MODEL", raising=False)
    monkeypatch.setattr("diffx.files.mp4_available", lambda: False)
    Image.new("RGB", (32, 32), (200, 40, 40)).save("picture.png")
    Image.new("L", (8, 8), 255).save("small.png")
    for name in ("existing.png", "existing.gif", "existing.html"):
        (tmp_path / name).write_bytes(b"keep me")
    (tmp_path / "afile").write_bytes(b"a file, not a folder")
    (tmp_path / "notpicture.png").write_bytes(b"not a picture")
    (tmp_path / "notatrace.safetensors").write_bytes(b"not a trace")
    (tmp_path / "afolder").mkdir()
    before = _snapshot(tmp_path)
    model = [] if args[0] in ("noise", "render", "report") else ["--model", str(tiny_model_dir)]
    result = CliRunner().invoke(app, [*args, *model])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (case, result.output, result.stderr, repr(result.exception))
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, result.stderr)
    assert len(lines[0]) <= 300, lines[0]
    assert "Traceback" not in result.output + result.stderr
    assert _snapshot(tmp_path) == before, case


def test_case_count():
    assert len(CASES) >= 250
