"""Where a stage ran, as the model card records it: the device, torch, the DDP processes, each machine once."""

import torch

from diffx.embedded.distributed import Ranks
from diffx.embedded.hardware import describe_hardware, joined_hardware


def test_hardware_history_names_each_machine_once_in_order():
    cpu = describe_hardware(torch.device("cpu"))
    assert "CPU" in cpu and torch.__version__ in cpu
    assert joined_hardware("", "A") == "A"
    assert joined_hardware("A", "A") == "A"  # resumed on the same machine
    assert joined_hardware("A", "B") == "A; then B"
    assert joined_hardware("A; then B", "B") == "A; then B"


def test_the_hardware_record_names_the_processes():
    assert describe_hardware(torch.device("cpu"), Ranks(0, 2)).startswith("2 processes (DDP) x ")
    assert "DDP" not in describe_hardware(torch.device("cpu"))
