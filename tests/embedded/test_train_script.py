"""scripts/train_v2.sh, the one prepared run for the v2 embedded model, end to end at toy size (SMOKE=1).

The real run needs a GPU for ten minutes (or a CPU for hours); this runs every stage of the same script on the
CPU in about 35 s a run: the scene pool, `diffx train --world shapes2`, the export and the quality benchmark with
its last line, all under a temporary folder; then once more from that model (INIT, `diffx train --init-from`).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffx.weights.load import load_model

SCRIPT = Path(__file__).parents[2] / "scripts" / "train_v2.sh"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, subprocess.CompletedProcess]:
    """The script's first run at toy size: (its run folder, its model folder, its environment, the process)."""
    folder = tmp_path_factory.mktemp("smoke")
    run, model = folder / "run", folder / "model"
    env = {**os.environ, "SMOKE": "1", "RUN": str(run), "MODEL": str(model), "PYTHON": sys.executable}
    completed = subprocess.run(["bash", str(SCRIPT)], cwd=SCRIPT.parents[1], env=env, capture_output=True,
                               text=True, timeout=600)
    return run, model, env, completed


def test_smoke_run_trains_exports_and_measures(smoke):
    run, model, env, completed = smoke
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert (model / "model.safetensors").is_file() and (model / "MODEL_CARD.md").is_file()
    assert (run / "quality.json").is_file()
    last = [line for line in completed.stdout.splitlines() if line.startswith("color=")]
    assert last and all(f"{key}=" in last[-1] for key in ("shape", "position", "pointing", "gap", "diversity_drop"))
    # a second call finds every stage done and redoes nothing
    again = subprocess.run(["bash", str(SCRIPT)], cwd=SCRIPT.parents[1], env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0 and again.stdout.count("up to date") == 3
    tuning = json.loads((model / "guidance_tuning.json").read_text(encoding="utf-8"))
    assert load_model(model).config.default_guidance == tuning["chosen"] and tuning["scales"] == [1.0, 5.0]
    assert "## How the default guidance was chosen" in (model / "MODEL_CARD.md").read_text(encoding="utf-8")


def test_init_goes_on_from_the_smoke_model(smoke, tmp_path):
    """INIT: go on from that model folder; its VAE is kept as it is, the lineage grows by one run."""
    _, model, env, completed = smoke
    assert completed.returncode == 0, "the first smoke run failed (see the test before)"
    run2, model2 = tmp_path / "run2", tmp_path / "model2"
    onward = subprocess.run(["bash", str(SCRIPT)], cwd=SCRIPT.parents[1], capture_output=True, text=True, timeout=600,
                            env={**env, "RUN": str(run2), "MODEL": str(model2), "INIT": str(model),
                                 "OBJECT_COUNTS": "0,1,1"})
    assert onward.returncode == 0, onward.stdout[-3000:] + onward.stderr[-3000:]
    runs = json.loads((model2 / "training.json").read_text(encoding="utf-8"))["runs"]
    assert [r["settings"]["init_from"] for r in runs] == [None, str(model)]
    assert runs[1]["settings"]["object_counts"] == [0.0, 1.0, 1.0]
    first, second = load_model(model), load_model(model2)
    for name, tensor in first.vae.state_dict().items():
        assert torch.equal(tensor, second.vae.state_dict()[name]), name
