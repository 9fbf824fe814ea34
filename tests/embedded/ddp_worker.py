"""Run by tests/embedded/test_distributed.py under torchrun: a few data-parallel steps of a small model.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/embedded/ddp_worker.py OUT

Every rank trains (`diffx.embedded.train.train`) and writes what it holds: rank<r>.safetensors (its final
weights), rank<r>.json (its summary: the final loss of each stage is its own share's). Rank 0 also writes
initial.safetensors, the weights training started from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from diffx.embedded.config import TrainConfig
from diffx.embedded.distributed import from_environment
from diffx.embedded.train import train
from diffx.embedded.worlds import get_world
from diffx.models.configs import ModelConfig
from diffx.models.stable_diffusion import StableDiffusion, build


def weights(model: StableDiffusion) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": tensor.contiguous() for name, module in model.modules().items()
            for key, tensor in module.state_dict().items()}


def main() -> None:
    out = Path(sys.argv[1])
    ranks = from_environment()
    config = TrainConfig(out_dir=str(out / "run"), vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4,
                         pool_size=16, threads=1, device="cpu", checkpoint_every=1, world="shapes",
                         model=get_world("shapes").model_config().to_dict())
    if ranks.main:
        torch.manual_seed(config.seed)  # as `train` builds its model
        save_file(weights(build(ModelConfig.from_dict(config.model))), out / "initial.safetensors")
    model, summary = train(config)
    save_file(weights(model), out / f"rank{ranks.rank}.safetensors")
    (out / f"rank{ranks.rank}.json").write_text(json.dumps(summary, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
