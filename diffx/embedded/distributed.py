"""Data-parallel training under torchrun: PyTorch DDP, one process per CPU socket or GPU.

    torchrun --nproc_per_node 2 -m diffx train --world shapes2 ...    # 2 processes: gloo on CPUs, NCCL on GPUs

Every process (a *rank*) holds a whole copy of the model and draws its own share of each batch: `--batch` is
the global batch, split evenly. `DistributedDataParallel` copies rank 0's weights to the others when it
wraps a module, and during backward it averages the gradients over the ranks (an all-reduce). Every rank then
takes the same optimiser step from the same gradient, so the copies stay identical, and the step is the one a
single process would take on the whole batch (the mean of the per-sample gradients). Li et al. 2020,
"PyTorch Distributed: Experiences on Accelerating Data Parallel Training", section 3.

Rank 0 alone writes checkpoints, loss curves and previews and shows progress; its loss curve is its own share
of each batch. Launched without torchrun (no WORLD_SIZE in the environment), nothing here does anything and
training runs in one process, draw for draw as before.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from diffx.errors import InvalidArgumentError

# Rank r > 0 seeds its generators with seed + r * RANK_SEED_STRIDE (a prime): streams no two ranks share.
RANK_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: `rank` of `world_size` processes, `local_rank` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and reports."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    def seed(self, seed: int) -> int:
        """The seed of this rank's random streams; rank 0 keeps `seed`, so one process draws as before."""
        return seed + RANK_SEED_STRIDE * self.rank

    def share(self, batch: int, option: str) -> int:
        """This rank's part of a global batch of `batch` (which must split evenly)."""
        if batch % self.world_size:
            raise InvalidArgumentError(f"{option} {batch} does not split evenly over {self.world_size} processes; "
                                       f"use a multiple of {self.world_size}")
        return batch // self.world_size


def from_environment() -> Ranks:
    """The ranks torchrun announces in RANK, WORLD_SIZE and LOCAL_RANK; one process without them."""
    if "WORLD_SIZE" not in os.environ:
        return Ranks()
    return Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def start(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on the CPU) and return this rank's device: on CUDA, the
    GPU numbered `local_rank`. One process: `device` unchanged."""
    if not ranks.parallel:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def data_parallel(module: nn.Module, ranks: Ranks, device: torch.device) -> nn.Module:
    """`module` in DDP when several processes train (rank 0's weights are copied to all at once), else itself.

    Call the returned module's forward (DDP's hooks average the gradients of what it computed); the
    optimiser, checkpoints and EMA keep using the plain module's parameters, which are the same tensors.
    """
    if not ranks.parallel:
        return module
    # A 1x1 convolution's weight (C_out, C_in, 1, 1) is NCHW and NHWC at once; oneDNN's backward may hand its
    # gradient with NHWC strides, and DDP then copies it into its bucket (a few kB) and warns once per layer.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def restore_stream(generator: torch.Generator, saved: dict, ranks: Ranks, seed: int, step: int) -> None:
    """Resume a generator from a checkpoint: rank 0's state is the one saved; other ranks start fresh streams
    seeded by rank and step (reproducible, though not the draws an unbroken run would have made)."""
    if ranks.main:
        generator.set_state(saved["generator"])
    else:
        generator.manual_seed(ranks.seed(seed) + step)


def barrier(ranks: Ranks) -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written a file the others read)."""
    if ranks.parallel:
        dist.barrier()


def stop(ranks: Ranks) -> None:
    """Leave the process group at the end of training."""
    if ranks.parallel and dist.is_initialized():
        dist.destroy_process_group()
