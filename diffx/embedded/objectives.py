"""What the denoiser of each model family learns: the loss one training step minimises.

- A U-Net model (`ModelConfig`): L_simple on the model's β schedule, ε or v target (DDPM Algorithm 1, eq. 14;
  Salimans & Ho 2022), told the text encoder's hidden states (`sampling.schedules.training_loss`).
- An SD3-family model (`SD3Config`, the embedded flow model): rectified flow's velocity loss with logit-normal
  times and the model's shift (Esser et al. 2024, eq. 3, 19, 23; `sampling.flow_training.flow_training_loss`),
  told the text encoder's (context, pooled) pair.

Both keep the text encoder's call apart from the denoiser's, so the attention-grounding loss can observe the
U-Net's cross-attention alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffx.models.any_model import AnyConfig
from diffx.models.sd3 import SD3Config
from diffx.sampling.flow_training import flow_training_loss
from diffx.sampling.schedules import NoiseSchedule, training_loss

Conditioning = tuple[Tensor, ...]  # (context,) for a U-Net, (context, pooled) for an MMDiT


class DenoisingObjective:
    """The loss of one family's denoiser, and its name in progress lines and on the loss curve."""

    def __init__(self, config: AnyConfig):
        self.flow = isinstance(config, SD3Config)
        self.scheduler = config.scheduler
        self.schedule = None if self.flow else NoiseSchedule.from_config(config.scheduler)
        self.network_name = "MMDiT" if self.flow else "U-Net"
        target = "velocity" if self.flow else config.scheduler.prediction_type
        self.title = (f"{self.network_name} loss ("
                      f"{'rectified flow' if self.flow else 'L_simple'}, {target} target)")

    def condition(self, text_encoder: Callable[[Tensor], Tensor | tuple[Tensor, Tensor]], ids: Tensor
                  ) -> Conditioning:
        """What the denoiser is told of the captions `ids` (B, 77): (context,) or (context, pooled)."""
        encoded = text_encoder(ids)  # (B, 77, width) or ((B, L, width), (B, width))
        return encoded if self.flow else (encoded,)

    def loss(self, network: Callable[..., Tensor], conditioning: Conditioning, x0: Tensor,
             generator: torch.Generator) -> Tensor:
        """The scalar loss on scaled latents x0 (B, C, h, w), noise and times drawn from `generator`."""
        if self.flow:
            context, pooled = conditioning
            return flow_training_loss(lambda x, t: network(x, t, context, pooled), x0, generator,
                                      self.scheduler.shift)
        return training_loss(network, self.schedule, x0, conditioning[0], generator, self.scheduler.prediction_type)
