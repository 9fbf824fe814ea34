"""What every model object shares, whatever its family: its parts by name, each under its key prefix in the
family's single-file layout, and the bookkeeping over them (device, dtype, eval, parameter count, the whole state
dict under single-file keys, and taking one over with every key checked).

`StableDiffusion` (SD 1.x, 2.x, SDXL: `text_encoder`, `unet`, `vae`) and `StableDiffusion3` (`text_encoder`,
`transformer`, `vae`) are dataclasses that mix this in; they say which part carries the network (`network_part`)
and which prefixes their parts have (`prefixes`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from diffx.errors import CheckpointError

SHOWN = 5  # how many keys of each kind a mismatch error names


class ModelParts:
    """A mixin for model dataclasses with `source`, `config.name` and one attribute per part (module docstring)."""

    network_part: ClassVar[str]  # the part whose parameters tell the device and dtype ("unet", "transformer")
    network_name: ClassVar[str]  # what the denoiser is, in words ("U-Net", "MMDiT")
    family_hint: ClassVar[str]  # what a checkpoint that does not fit is asked to be, in the error

    source: str

    def prefixes(self) -> dict[str, str]:
        """Part attribute -> its key prefix in the family's single-file layout."""
        raise NotImplementedError

    def modules(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in self.prefixes()}

    @property
    def device(self) -> torch.device:
        """Where the weights live (every part is moved together by `to`)."""
        return next(getattr(self, self.network_part).parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The network's floating-point type."""
        return next(getattr(self, self.network_part).parameters()).dtype

    def eval(self) -> ModelParts:
        for module in self.modules().values():
            module.eval()
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for module in self.modules().values() for p in module.parameters())

    def original_state_dict(self) -> dict[str, Tensor]:
        """All weights under their single-file keys (`model.diffusion_model.input_blocks...`)."""
        prefixes = self.prefixes()
        return {prefixes[name] + key: tensor for name, module in self.modules().items()
                for key, tensor in module.state_dict().items()}

    def load_original_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True) -> None:
        """Take over the tensors of a single-file-layout state dict (no copy: `assign=True`).

        With `strict`, any missing, unexpected or mis-shaped key raises one `CheckpointError` that names the first
        few of each kind. Without it, only matching keys are loaded.
        """
        expected = {key: tuple(tensor.shape) for key, tensor in self.original_state_dict().items()}
        missing = [key for key in expected if key not in state_dict]
        unexpected = [key for key in state_dict if key not in expected]
        misshaped = [f"{key} {tuple(state_dict[key].shape)} != {shape}" for key, shape in expected.items()
                     if key in state_dict and tuple(state_dict[key].shape) != shape]
        if strict and (missing or unexpected or misshaped):
            kinds = {"missing": missing, "unexpected": unexpected, "mis-shaped": misshaped}
            problems = [f"{len(keys)} {kind} ({', '.join(keys[:SHOWN])}{', ...' if len(keys) > SHOWN else ''})"
                        for kind, keys in kinds.items() if keys]
            raise CheckpointError(f"weights from {self.source} do not fit the {self.config.name} model: "
                                  f"{'; '.join(problems)}; is this checkpoint {self.family_hint}?")
        loadable = set(expected) - set(missing) - {entry.split(" ")[0] for entry in misshaped}
        prefixes = self.prefixes()
        for name, module in self.modules().items():
            prefix = prefixes[name]
            part = {key[len(prefix):]: state_dict[key] for key in loadable if key.startswith(prefix)}
            module.load_state_dict(part, strict=strict, assign=True)
