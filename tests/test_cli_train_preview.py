"""`diffx train-preview` end to end on the tiny random model: the file lands in the model folder, `--model` then
finds it (`--preview tiny` works), and a second run without --force is refused in one line, the file kept."""

import shutil

from typer.testing import CliRunner

from diffx.cli import app
from diffx.weights.tiny_decoder import TINY_DECODER_FILE


def test_train_preview_writes_the_decoder_every_command_then_finds(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    runner = CliRunner()
    result = runner.invoke(app, ["train-preview", str(folder), "--runs", "1", "--steps", "5"])
    assert result.exit_code == 0, result.output + result.stderr
    assert (folder / TINY_DECODER_FILE).is_file() and "PSNR" in result.stdout
    written = (folder / TINY_DECODER_FILE).read_bytes()
    again = runner.invoke(app, ["train-preview", str(folder), "--runs", "1", "--steps", "5"])
    assert again.exit_code == 2 and again.stderr.count("\n") == 1 and "--force" in again.stderr
    assert (folder / TINY_DECODER_FILE).read_bytes() == written
    shown = runner.invoke(app, ["trace", "--prompt", "a red circle", "--model", str(folder), "--steps", "2",
                                "--size", "32", "--preview", "tiny", "--out", str(tmp_path / "t.png")])
    assert shown.exit_code == 0, shown.output + shown.stderr


def test_preview_tiny_without_a_decoder_is_one_line(tiny_model_dir, tmp_path):
    result = CliRunner().invoke(app, ["trace", "--prompt", "a red circle", "--model", str(tiny_model_dir),
                                      "--steps", "2", "--size", "32", "--preview", "tiny", "--out",
                                      str(tmp_path / "t.png")])
    assert result.exit_code == 2 and "tiny" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "t.png").exists()
