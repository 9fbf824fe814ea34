"""The training history kept beside a model (training.json): every run that trained it, oldest first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from diffx.files import atomic_output, write_atomic

HISTORY_FILE = "training.json"


def run_record(train_config: dict, states: dict, pool_scenes: int | None = None) -> dict:
    """One training run for the history: its settings (without the model config, but with its U-Net's target
    and schedule: `prediction_type`, `zero_snr`; an SD3-family model's run: its `family`) and, per stage, the
    steps reached, the seconds spent in training steps (`step_seconds`) and in all (`wall_seconds`: with the pool,
    loss curves, previews and checkpoints; `TrainState`), the final loss (mean of the last 100 steps) and the
    hardware; and `pool_scenes`, the scenes its pool held (`TrainConfig.pool_scenes`), when given. Runs recorded before
    there were two clocks have `seconds`: their step seconds; before toy pools, no `pool_scenes`: `pool_size`."""
    settings = {key: value for key, value in train_config.items() if key != "model"}
    if (train_config.get("model") or {}).get("family"):  # an SD3-family model's run (diffx.models.any_model)
        settings["family"] = train_config["model"]["family"]
    scheduler = train_config.get("model", {}).get("scheduler", {})
    if scheduler:  # what the U-Net learnt to predict, on which schedule: the model config is not kept per run
        settings["prediction_type"] = scheduler["prediction_type"]
        settings["zero_snr"] = scheduler["rescale_betas_zero_snr"]
    stages = {name: {"steps": state["step"], "step_seconds": round(state["seconds"]),
                     "wall_seconds": round(state.get("wall_seconds", 0.0)),
                     "final_loss": float(np.mean(state["losses"][-100:])) if state["losses"] else None,
                     "hardware": state.get("hardware", "")}
              for name, state in states.items()}
    if states["unet"].get("grounding_losses"):
        stages["unet"]["final_grounding_loss"] = float(np.mean(states["unet"]["grounding_losses"][-100:]))
    pool = {} if pool_scenes is None else {"pool_scenes": pool_scenes}
    return {"settings": settings, **pool, **stages}


def read_runs(folder: str | Path) -> list[dict]:
    """The runs recorded in `folder`'s history; none when it has no history file."""
    path = Path(folder) / HISTORY_FILE
    return json.loads(path.read_text(encoding="utf-8"))["runs"] if path.is_file() else []


def write_runs(folder: str | Path, runs: list[dict]) -> Path:
    """Write `runs` as `folder`'s history (atomically)."""
    path = Path(folder) / HISTORY_FILE
    with atomic_output(path, force=True) as tmp:
        tmp.write_text(json.dumps({"runs": runs}, indent=2), encoding="utf-8")
    return path


def copy_history(source: str | Path, dest: str | Path) -> None:
    """Copy `source`'s history, if it has one, into the folder `dest` (atomically, byte for byte)."""
    path = Path(source) / HISTORY_FILE
    if path.is_file():
        write_atomic(Path(dest) / HISTORY_FILE, lambda tmp: shutil.copyfile(path, tmp), force=True)
