"""What the optimiser and the weight average follow step by step: the learning rate (linear warm-up, then one
cosine decay) and the EMA decay (warmed up to the configured one); and `swapped_in`, which lends the EMA
weights to the live parameters while a preview is drawn."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def learning_rate(step: int, base: float, warmup: int, total: int) -> float:
    """The learning rate at (0-based) `step`: linear warm-up, then one cosine decay to 10% of `base`.

    Warm-up: base * (step + 1) / warmup for the first `warmup` steps, the gradual warm-up of Goyal et al.
    2017 ("Accurate, Large Minibatch SGD", section 2.2). Then, with p = (step - warmup) / (total - warmup)
    and lr_min = 0.1 * base, lr = lr_min + (base - lr_min) * (1 + cos(pi * p)) / 2: the cosine annealing of
    SGDR (Loshchilov & Hutter 2017, eq. 5) as a single cycle with no restarts. Past `total` it stays at
    lr_min.
    """
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def ema_decay(step: int, decay: float) -> float:
    """The EMA decay at (0-based) update `step`: min(decay, (1 + step) / (10 + step)).

    The cap (0.1, 0.18, 0.25, ... -> 1) lets the average forget the random initialisation within a few
    dozen steps instead of ~1 / (1 - decay). The formula is TensorFlow's `tf.train.ExponentialMovingAverage`
    with `num_updates` = step, and the same sequence as diffusers' `EMAModel.get_decay` with
    `use_ema_warmup=False` (except that diffusers' first update copies the weights, decay 0). Keeping an EMA
    of the weights for sampling follows DDPM (Ho et al. 2020, appendix B: decay 0.9999).
    """
    return min(decay, (1 + step) / (10 + step))


@contextmanager
def swapped_in(params: list[torch.nn.Parameter], ema: list[torch.Tensor]) -> Iterator[None]:
    """Temporarily load the EMA weights into the live parameters (for previews), then restore them."""
    backup = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, shadow in zip(params, ema, strict=True):
            p.copy_(shadow)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, saved in zip(params, backup, strict=True):
                p.copy_(saved)
