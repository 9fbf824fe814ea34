"""`check_train_inputs` from Python: the checks `diffx train` makes before any work (tested table-driven through
the CLI in test_train_inputs.py) hold for a caller of the library too."""

import pytest

from diffx.embedded.config import TrainConfig
from diffx.embedded.preflight import check_train_inputs
from diffx.errors import InvalidArgumentError


def test_exporting_into_the_training_folder_is_refused(tmp_path):
    config = TrainConfig(out_dir=str(tmp_path / "run"), device="cpu")
    with pytest.raises(InvalidArgumentError, match="is the training folder --out-dir; export to another folder"):
        check_train_inputs(config, tmp_path / "run" / ".." / "run")
    check_train_inputs(config, tmp_path / "model")  # another folder: fine
    assert not (tmp_path / "run").exists() and not (tmp_path / "model").exists()
