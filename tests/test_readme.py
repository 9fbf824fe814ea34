"""The README's commands work as written: run in order in an empty folder, as a newcomer would after the
quick start, every `diffx` command of its bash blocks succeeds on the embedded model.

Left out, each for its own reason: `diffx train` (minutes to hours; tests/embedded covers it), `diffx tour` (every
command of the tour again, minutes; tests/test_tour.py runs it with --quick) and `diffx studio` (a server that runs
until Ctrl-C; tests/studio drives it in a real browser)."""

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diffx.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    """Every `diffx …` command in the README's bash blocks, in order, continuation lines joined, comments cut;
    the quick start's `… && diffx trace …` counts as a command."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if "&& diffx " in line:
                line = line[line.index("&& diffx ") + 3:]
            if line.startswith("diffx "):
                commands.append(line)
    return commands


def runnable(command: str) -> bool:
    return not command.startswith(("diffx train", "diffx tour", "diffx studio"))


def test_the_readme_names_the_commands_a_newcomer_runs():
    commands = readme_commands()
    assert commands[0] == 'diffx trace --prompt "a yellow heart above a blue circle" --seed 3 --gif trace.gif'
    names = {shlex.split(command)[1] for command in commands if runnable(command)}
    assert {"noise", "denoise", "trace", "cfg-sweep", "compare", "paths", "render", "attention", "edit",
            "weights", "tokens", "invert", "report", "lab"} <= names


RUNNABLE = [command for command in readme_commands() if runnable(command)]


@pytest.fixture(scope="module")
def newcomer_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One empty folder for all the commands: later ones read what earlier ones wrote (trace.png, saved traces)."""
    return tmp_path_factory.mktemp("newcomer")


@pytest.mark.parametrize("command", RUNNABLE, ids=[f"{i:02d}-{shlex.split(c)[1]}" for i, c in enumerate(RUNNABLE)])
def test_every_readme_command_runs_in_order(command, newcomer_folder, monkeypatch):
    """One test per command, in the README's order (each well under a minute; together about two)."""
    monkeypatch.chdir(newcomer_folder)
    result = CliRunner().invoke(app, shlex.split(command)[1:])
    assert result.exit_code == 0, f"{command}\n{result.stderr or result.output}"
