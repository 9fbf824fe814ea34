"""The lab's ε-model: a small MLP told the timestep (and optionally a class), ε_θ(x_t, t, c) for 2-D points.

It is an ε-prediction network like the U-Net, only small enough to train in seconds: the timestep enters
through the same sinusoidal embedding (`models.unet.timestep_embedding`, Vaswani et al. 2017 §3.5), the
class through a learned embedding with one extra "null" class — the unconditional branch of
classifier-free guidance (Ho & Salimans 2022, §3.2), trained by dropping labels to the null class.

flow.py trains the very same network to predict the flow-matching velocity ε − x_0 instead (told t · 1000).

`guided_eps` turns it into the samplers' denoiser `eps_model(x_t, t)`, so every sampler in
`diffx.samplers` runs on it unchanged: ε̂ = ε_θ(x_t, t, ∅) + w (ε_θ(x_t, t, c) − ε_θ(x_t, t, ∅)).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from diffx.errors import InvalidArgumentError, check_finite
from diffx.models.unet import timestep_embedding
from diffx.sampling.samplers import EpsModel


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one CPU thread inside the block, then restore the setting. The lab's matrices are tiny
    ((1024, 64) @ (64, 64)): a second thread costs more in synchronisation than it saves, and on a busy
    machine its spin-waits make a training step ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class LabModel(nn.Module):
    """ε_θ(x_t, t, c): (B, 2) points, (B,) timesteps, (B,) labels in 0 … num_classes (num_classes = null).

    h = W_in x + MLP(emb(t)) + E[c];  h ← h + MLP(SiLU(LayerNorm(h))) `depth` times;  ε̂ = W_out SiLU(h).
    The residual blocks keep the gradient path short, so a few thousand Adam steps are enough.

    `outputs` is W_out's width: 2 for ε̂; the lessons reuse the same trunk with other heads — 4 for ε̂ and the
    learned-variance interpolation v (`lab.variance`), K class logits for a noisy classifier with
    num_classes = 0, told no class (`lab.classifier`).
    """

    def __init__(self, num_classes: int = 1, width: int = 128, depth: int = 3, time_dim: int = 64,
                 outputs: int = 2):
        super().__init__()
        self.num_classes, self.time_dim = num_classes, time_dim
        self.input = nn.Linear(2, width)
        self.time = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.label = nn.Embedding(num_classes + 1, width)  # the last row is the null class ∅
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
            for _ in range(depth))
        self.output = nn.Sequential(nn.SiLU(), nn.Linear(width, outputs))

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(self, x_t: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """(B, 2), (B,) or 0-dim t, (B,) labels or None (= the null class) -> ε̂ (B, outputs)."""
        batch = x_t.shape[0]
        t = t.expand(batch) if t.dim() == 0 else t  # the samplers pass one 0-dim t for the whole batch
        if labels is None:
            labels = torch.full((batch,), self.null_class, dtype=torch.long, device=x_t.device)
        emb = timestep_embedding(t, self.time_dim).to(x_t.dtype)  # fp32; a float64 copy of the model gets float64
        h = self.input(x_t) + self.time(emb) + self.label(labels)  # (B, width)
        for block in self.blocks:
            h = h + block(h)
        return self.output(h)  # (B, width) -> (B, outputs)


def guided_eps(model: LabModel, labels: Tensor | None = None, guidance: float = 1.0) -> EpsModel:
    """The denoiser `eps_model(x_t, t)` the samplers call, with classifier-free guidance.

    `labels` None: unconditional (the null class). With labels (B,): ε̂ = ε_∅ + w (ε_c − ε_∅) (Ho & Salimans
    2022, eq. 6 written with w = 1 + their w): w = 1 is the conditional model, w = 0 the unconditional
    one, w > 1 pushes samples towards what distinguishes their class. Both branches in one batch.
    """
    check_finite("guidance", guidance)
    if labels is not None and not 0 <= int(labels.min()) <= int(labels.max()) < model.num_classes:
        raise InvalidArgumentError(f"labels must be classes 0 to {model.num_classes - 1} of the lab model")

    def eps_model(x_t: Tensor, t: Tensor) -> Tensor:
        if labels is None:
            return model(x_t, t)
        null = torch.full_like(labels, model.null_class)
        eps_null, eps_cond = model(torch.cat([x_t, x_t]), t, torch.cat([null, labels])).chunk(2)  # 2 x (B, 2)
        return eps_null + guidance * (eps_cond - eps_null)

    return eps_model
