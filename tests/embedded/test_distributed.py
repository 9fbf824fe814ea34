"""Data-parallel training (diffx/embedded/distributed.py) under torchrun: 2 CPU processes, gloo.

The check that matters: after training steps on different data, both ranks hold identical weights (DDP
averaged their gradients) and those weights moved from where training started.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from diffx.embedded.distributed import RANK_SEED_STRIDE, Ranks, from_environment
from diffx.errors import InvalidArgumentError

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_cpu_processes_end_with_identical_weights(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
         str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=WORKER.parents[2])
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    initial, rank0, rank1 = (load_file(tmp_path / f"{name}.safetensors") for name in ("initial", "rank0", "rank1"))
    assert rank0.keys() == rank1.keys() == initial.keys()
    assert all((rank0[key] == rank1[key]).all() for key in rank0), "the ranks' weights differ"
    moved = [key for key in rank0 if not (rank0[key] == initial[key]).all()]
    assert any(key.startswith("vae.") for key in moved) and any(key.startswith("unet.") for key in moved)
    summaries = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # each rank's loss is its own share's: different numbers mean the ranks drew different data
    for stage in ("vae", "unet"):
        assert summaries[0][stage]["final_loss"] != summaries[1][stage]["final_loss"]
    run = tmp_path / "run"
    assert (run / "vae_state.pt").is_file() and (run / "unet_state.pt").is_file()  # written by rank 0


def test_ranks_read_from_torchrun_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert from_environment() == Ranks() and not Ranks().parallel and Ranks().main
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert from_environment() == Ranks(rank=3, world_size=4, local_rank=1)


def test_rank_zero_keeps_the_seed_and_others_get_their_own():
    assert Ranks(0, 2).seed(7) == 7 and Ranks(1, 2).seed(7) == 7 + RANK_SEED_STRIDE


def test_a_batch_that_does_not_split_evenly_is_refused():
    assert Ranks(0, 4).share(64, "--batch") == 16
    with pytest.raises(InvalidArgumentError, match=r"--batch 6 does not split evenly over 4 processes; use a "
                                                   r"multiple of 4"):
        Ranks(1, 4).share(6, "--batch")

