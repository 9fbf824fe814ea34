"""Where a training stage ran, as the model card and training.json record it: the GPU's name or the CPU's
architecture and threads, torch's version, the number of DDP processes, and for a stage resumed on another
machine each machine in turn."""

from __future__ import annotations

import platform

import torch

from diffx.embedded.distributed import Ranks


def describe_hardware(device: torch.device, ranks: Ranks = Ranks()) -> str:
    """Where a stage ran, for the model card: e.g. "NVIDIA H100 80GB HBM3, torch 2.11.0+cu130"; under
    torchrun with the number of processes first ("2 processes (DDP) x ...")."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{platform.machine()} {device.type.upper()}, {torch.get_num_threads()} threads"
    processes = f"{ranks.world_size} processes (DDP) x " if ranks.parallel else ""
    return f"{processes}{where}, torch {torch.__version__}"


def joined_hardware(earlier: str, now: str) -> str:
    """Hardware of a stage that resumed elsewhere: "A; then B" (each machine named once)."""
    parts = [part for part in earlier.split("; then ") if part]
    return "; then ".join(parts if parts and parts[-1] == now else [*parts, now])
