"""diffx: Stable Diffusion from scratch in PyTorch, traced step by step."""

__version__ = "0.1.0"
