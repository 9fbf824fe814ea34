"""The harness of the bad-input tables (tests/test_bad_input*.py, issues #13 and #31).

A `Case` is one command line with one bad value. `check_refused` runs it in a working folder filled by
`fill_folder` (good and bad pictures, files that exist, a folder, a plain file) and asserts what every case must
give: exit code 2, exactly one `error:` line on stderr of at most 300 characters (nothing before it, not even a
blank line), no traceback, and every file in the folder as it was. The work is made to fail if it starts (the
U-Net, the VAE's encoder, the lab's training, the forward process of `noise`, the studio's server): a bad value
is refused before.
"""

import functools
import socket
import struct
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import click
import pytest
import torch
import typer.main
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from diffx.cli import app

FLOATS = ["nan", "inf", "-inf", "-1", "1e400", "abc", ""]
INTS = ["-1", "abc", "", "99999999999999999999999"]
STEPS = ["0", "-1", "abc", "", "100000"]
SIZES = ["0", "-32", "abc", "", "1000000", "33", "8192"]
CHOICES = ["nope", ""]  # a name that is not one (any case of a valid one, e.g. DDIM, is accepted)
FRAME_MS = ["0", "-1", "abc"]
THREADS = ["0", "-1", "abc", "", "1e9"]  # not a count; more threads than CPUs
OUTPUTS = ["existing.png", "afile/o.png", "afolder", "o.bmp", ""]
ANIMATIONS = ["existing.gif", "afile/o.gif", "afolder", "o.txt", "o.mp4"]
FILES = ["existing.html", "afile/o.html", "afolder", ""]  # --html, --save-trace, … (any suffix)
PICTURES = ["missing.png", "afolder", "afile", "notpicture.png", "huge.png", ""]
TRACES = ["missing.safetensors", "afolder", "afile", "notatrace.safetensors"]
LONG_PROMPT = "a red circle (" + "and a blue square " * 556  # over 10,000 characters, a bracket never closed
PROMPTS = ["   ", LONG_PROMPT, "a [red:0.5] circle"]  # spaces; a bracket never closed; the webui's prompt editing
MODELS = ["missing-model", "afolder", "afile", ""]
DEVICES = ["cpu:abc", "tpu", "", "cuda:x", *([] if torch.cuda.is_available() else ["cuda:7"]),
           *([] if torch.backends.mps.is_available() else ["mps"])]
DTYPES = ["fp64", "", "fp16"]  # fp16 on the CPU (every case runs with --device cpu)
WEIGHTS = ["both", ""]
# --lora: no file, a folder, no LoRA suffix, not a safetensors file, a scale not finite or out of ±4, empty
LORAS = ["missing.safetensors", "afolder", "afile", "notatrace.safetensors", "picture.png", "afile.pt:nan",
         "notatrace.safetensors:9", ""]
# --embedding: no file, a folder, no embedding suffix, not a checkpoint, a bad token, a width not the model's, NaN,
# a token the vocabulary has, an unknown layout, empty
EMBEDDINGS = ["missing.pt", "afolder", "afile", "picture.png", "afile.pt", "notatrace.safetensors",
              "nanemb.safetensors:a b", "wideemb.safetensors", "nanemb.safetensors", "knownemb.safetensors",
              "twoemb.safetensors", "emptyemb.safetensors", ""]
CONFIGS = ["sd3", ""]
GENERATION = ["--steps", "2", "--size", "32", "--device", "cpu"]  # fast, valid settings for the tiny model
MODEL, TRACE = "{model}", "{trace}"  # in a case's arguments: the tiny model's folder, a trace of it (conftest.py)


def free_port() -> int:
    """A TCP port free on the loopback now (the studio's valid base must not be refused as "in use")."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# A valid command line of each command (bar lab's, tokens' and train's); a case adds one bad value (the last wins),
# and it must be that value which is refused: any other run would write files, which the case does not allow.
BASES = {
    "noise": ["noise", "picture.png", "--timesteps", "0,500"],
    "denoise": ["denoise", "--prompt", "a red circle", *GENERATION],
    "trace": ["trace", "--prompt", "a red circle", "--gif", "t.gif", *GENERATION],
    "render": ["render", TRACE, "--gif", "r.gif"],
    "attention": ["attention", "--prompt", "a red circle", *GENERATION],
    "edit": ["edit", "--prompt", "a red circle", "--to", "a red square", *GENERATION],
    "weights": ["weights", "--prompt", "a (red:1.5) circle", *GENERATION],
    "invert": ["invert", "picture.png", "--no-sweep", *GENERATION],
    "cfg-sweep": ["cfg-sweep", "--scales", "1,3", *GENERATION],
    "compare": ["compare", "--x", "sampler=ddim,euler", *GENERATION],
    "predict": ["predict", "--prompt", "a red circle", *GENERATION],
    "lora": ["lora", "tinylora.safetensors"],  # valid: it would print the report (and write nothing)
    # valid: it would train the tiny model (made to fail)
    "finetune": ["finetune", "--concept", "world:pink dotted hexagon", "--out", "ft.safetensors", "--judge", "0"],
    "paths": ["paths", "--samplers", "ddim", "--reference", "ddim:3", "--steps", "2", "--size", "32", "--device",
              "cpu"],
    "report": ["report", TRACE],
    "studio": ["studio", "--port", str(free_port()), "--device", "cpu"],  # valid: it would serve (made to fail)
    "tour": ["tour", "newtour", "--quick", "--device", "cpu"],  # valid: it would run the tour's commands
}
# The commands that load a model for every run get the tiny one (the others load one only when asked for; the
# tour passes it on to its commands).
MODEL_COMMANDS = ("denoise", "trace", "attention", "edit", "weights", "invert", "cfg-sweep", "compare", "predict",
                  "paths", "studio", "tour", "lora", "finetune")


class Case(NamedTuple):
    """`args` (a whole command line) with a bad value for `option` (an argument: its name in capitals)."""

    option: str
    args: tuple[str, ...]
    label: str

    @property
    def command(self) -> str:
        return self.args[0]


def _shown(arg: str) -> str:
    return arg if len(arg) <= 40 else f"<{len(arg)} characters>"


class Table(list[Case]):
    """A list of cases, added one option (or argument) and its bad values at a time."""

    def add(self, base: Sequence[str], option: str, values: Iterable[str], *context: str) -> None:
        """`base context option value` for each value (`context`: what makes the value matter, e.g. --image)."""
        for value in values:
            tail = (*context, option, value)
            self.append(Case(option, (*base, *tail), f"{base[0]}:{' '.join(map(_shown, tail))}"))

    def argument(self, command: str, name: str, values: Iterable[str], *rest: str) -> None:
        """`command value rest` for each value of the argument `name`."""
        for value in values:
            self.append(Case(name, (command, value, *rest), f"{command}:{name}={_shown(value)} {' '.join(rest)}"))


@functools.cache
def _group() -> click.Group:
    return typer.main.get_command(app)


def commands() -> list[str]:
    """The names of diffx's commands."""
    return list(_group().commands)


def options_of(command: str) -> dict[str, bool]:
    """Each option (an argument: its name in capitals) of `command` → whether it is a flag (takes no value)."""
    found = {}
    for param in _group().commands[command].params:
        if param.param_type_name == "argument":
            found[param.name.upper()] = False
        else:
            found[param.opts[0]] = param.is_flag
    return found


def huge_png(path: Path, side: int = 30000) -> None:
    """A 1x1 PNG whose header claims `side` x `side` pixels (IHDR width and height patched, its CRC redone)."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def fill_folder(folder: Path) -> None:
    """The files the cases name: pictures good and bad, outputs that exist (also as companions)."""
    Image.new("RGB", (32, 32), (200, 40, 40)).save(folder / "picture.png")
    Image.new("L", (8, 8), 255).save(folder / "small.png")
    Image.new("L", (8, 8), 0).save(folder / "black.png")
    huge_png(folder / "huge.png")
    existing = ["existing.png", "existing.gif", "existing.html", "existing.pt"]
    # of --out steps.png, attention.png, …, finetune's zig.safetensors (zig_loss.png)
    companions = [f"{name}_{name}.png" for name in ("steps", "attention", "heads", "self", "schedules", "convergence",
                                                    "guidance", "variance", "loss", "before_after")]
    for name in [*existing, *companions]:
        (folder / name).write_bytes(b"keep me")
    (folder / "afile").write_bytes(b"a file, not a folder")
    (folder / "afile.pt").write_bytes(b"not a pickle")
    (folder / "notpicture.png").write_bytes(b"not a picture")
    (folder / "notatrace.safetensors").write_bytes(b"not a trace")
    (folder / "afolder").mkdir()
    save_file({"emb_params": torch.randn(1, 1024)}, folder / "wideemb.safetensors")  # SD2's width
    save_file({"emb_params": torch.full((1, 32), float("nan"))}, folder / "nanemb.safetensors")
    save_file({"cat</w>": torch.randn(32)}, folder / "knownemb.safetensors")
    save_file({"a": torch.randn(32), "b": torch.randn(32)}, folder / "twoemb.safetensors")
    save_file({"emb_params": torch.zeros(0, 32)}, folder / "emptyemb.safetensors")
    layer = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_v"  # a LoRA of one of the tiny model's layers
    save_file({f"{layer}.lora_down.weight": torch.randn(2, 32), f"{layer}.lora_up.weight": torch.randn(32, 2)},
              folder / "tinylora.safetensors")
    (folder / "oldtour").mkdir()  # a folder holding a file of the tour (`diffx tour oldtour` without --force)
    (folder / "oldtour" / "noise.png").write_bytes(b"keep me")


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _no_work(what: str):
    def refuse(*_args, **_kwargs):
        raise AssertionError(f"{what} ran: the bad value was not refused before the work")

    return refuse


def check_refused(case: Case, folder: Path, monkeypatch: pytest.MonkeyPatch, model_dir: Path, trace_file: Path) -> None:
    """Run `case` in `folder` (filled here) and assert it is refused in one line, before any work, writing nothing."""
    monkeypatch.chdir(folder)
    monkeypatch.delenv("DIFFX_MODEL", raising=False)
    monkeypatch.delenv("DIFFX_THREADS", raising=False)
    monkeypatch.setattr("diffx.files.mp4_available", lambda: False)
    monkeypatch.setattr("diffx.models.unet.UNet.forward", _no_work("the U-Net"))
    monkeypatch.setattr("diffx.models.vae.AutoencoderKL.encode", _no_work("the VAE encoder"))
    monkeypatch.setattr("diffx.lab.job.train_lab_model", _no_work("the lab's training"))
    monkeypatch.setattr("diffx.experiments.sweeps.q_sample", _no_work("the forward process"))
    monkeypatch.setattr("diffx.studio.server.serve", _no_work("the studio's server"))
    fill_folder(folder)
    before = _snapshot(folder)
    args = [{MODEL: str(model_dir), TRACE: str(trace_file)}.get(arg, arg) for arg in case.args]
    given_model = {"--model", "-m"} & set(args)
    model = ["--model", str(model_dir)] if case.command in MODEL_COMMANDS and not given_model else []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a case loads the tiny model at most: one thread is fastest on a busy machine
    try:
        result = CliRunner().invoke(app, [*args, *model])
    finally:
        torch.set_num_threads(threads)
    lines = result.stderr.splitlines()  # a blank line before `error:` counts
    assert result.exit_code == 2, (case.label, result.output, result.stderr, repr(result.exception))
    assert len(lines) == 1 and lines[0].startswith("error: "), (case.label, result.stderr)
    assert len(lines[0]) <= 300, lines[0]
    assert "Traceback" not in result.output + result.stderr
    assert _snapshot(folder) == before, case.label
