"""`check_train_inputs` from Python: the checks `diffx train` makes before any work (tested table-driven through
the CLI in test_train_inputs.py) hold for a caller of the library too."""

import pytest

from diffx.embedded.config import TrainConfig
from diffx.embedded.preflight import check_train_inputs
from diffx.embedded.train import train
from diffx.errors import CheckpointError, InvalidArgumentError


def test_exporting_into_the_training_folder_is_refused(tmp_path):
    config = TrainConfig(out_dir=str(tmp_path / "run"), device="cpu")
    with pytest.raises(InvalidArgumentError, match="is the training folder --out-dir; export to another folder"):
        check_train_inputs(config, tmp_path / "run" / ".." / "run")
    check_train_inputs(config, tmp_path / "model")  # another folder: fine
    assert not (tmp_path / "run").exists() and not (tmp_path / "model").exists()


def test_train_refuses_a_damaged_training_folder_before_writing(tmp_path):
    """`train` from Python checks the folder it resumes from first (the damaged folders are tested table-driven
    through the CLI in test_train_inputs.py): nothing is written, not even train_config.json."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "pool.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"run/pool\.pt: not a PyTorch checkpoint .*; delete it to re-make it, "
                                              "or use a new --out-dir$"):
        train(TrainConfig(out_dir=str(run), device="cpu"))
    assert [path.name for path in run.iterdir()] == ["pool.pt"]
