"""scripts/train_flow.sh, the prepared run of the embedded flow model, end to end at toy size (SMOKE=1): the scene
pool, 2 steps of `diffx train --family sd3` from shapes-world-2, the export, the guidance tuning, the quality
benchmark and the steps comparison, all under a temporary folder (about 40 s)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffx.models.sd3 import StableDiffusion3
from diffx.paths import EMBEDDED_MODEL_DIR
from diffx.weights.load import load_model

SCRIPT = Path(__file__).parents[2] / "scripts" / "train_flow.sh"


def test_smoke_run_trains_an_mmdit_on_shapes_world_2s_latents(tmp_path):
    run, model = tmp_path / "run", tmp_path / "model"
    env = {**os.environ, "SMOKE": "1", "RUN": str(run), "MODEL": str(model), "PYTHON": sys.executable}
    completed = subprocess.run(["bash", str(SCRIPT)], cwd=SCRIPT.parents[1], env=env, capture_output=True,
                               text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "== 1. scene pool (64 scenes, on every core)" in completed.stdout and (run / "pool.pt").is_file()
    flow, unet = load_model(model), load_model(EMBEDDED_MODEL_DIR)
    assert isinstance(flow, StableDiffusion3) and flow.config.scheduler.prediction_type == "flow"
    for name, tensor in unet.vae.state_dict().items():  # the VAE taken over frozen: one latent space for both
        assert torch.equal(tensor.float(), flow.vae.state_dict()[name].float()), name
    # ... so shapes-world-2's tiny preview decoder, trained on those latents, comes along
    assert flow.tiny_decoder is not None
    for name, tensor in unet.tiny_decoder.state_dict().items():
        assert torch.equal(tensor, flow.tiny_decoder.state_dict()[name]), name
    runs = json.loads((model / "training.json").read_text(encoding="utf-8"))["runs"]
    assert runs[-1]["settings"]["attention_loss"] == 0.01 and runs[-1]["unet"]["final_grounding_loss"] > 0
    tuning = json.loads((model / "guidance_tuning.json").read_text(encoding="utf-8"))
    assert flow.config.default_guidance == tuning["chosen"] and (run / "quality.json").is_file()
    last = completed.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{unet.config.name}@2=") and f" {flow.config.name}@2=" in last


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, GPU=1 would start the real run")
def test_gpu_mode_refuses_a_machine_without_cuda_before_any_work(tmp_path):
    """GPU=1 on a machine without CUDA: one line naming the problem and the fix, exit 2, nothing written."""
    run = tmp_path / "run"
    env = {**os.environ, "GPU": "1", "RUN": str(run), "MODEL": str(tmp_path / "model"), "PYTHON": sys.executable}
    completed = subprocess.run(["bash", str(SCRIPT)], cwd=SCRIPT.parents[1], env=env, capture_output=True,
                               text=True, timeout=120)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert completed.stderr.strip() == ("no CUDA device: GPU=1 is for a CUDA machine; on the CPU leave GPU unset "
                                        "(SMOKE=1: the smoke test)")
    assert not run.exists() and "==" not in completed.stdout
