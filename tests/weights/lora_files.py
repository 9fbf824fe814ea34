"""Random LoRA files for tests, named as kohya's sd-scripts and diffusers/PEFT name them, from reference models'
own module names (diffusers' U-Net, transformers' CLIP, SGM's paths), not from diffx's name table; and the
comparison of diffx's LoRA with diffusers' (`lora_parity`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from diffusers.utils.peft_utils import delete_adapter_layers, scale_lora_layers
from safetensors.torch import save_file
from torch import Tensor, nn

from diffx.models.configs import ModelConfig
from diffx.models.stable_diffusion import StableDiffusion, build
from diffx.weights.lora_apply import apply_lora
from tests.models.sd2_models import randomise_norms

# The layers LoRA trainers adapt by default: attention projections, transformer in/out, feed-forward, CLIP's MLP.
ATTENTION_LEAVES = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                    "q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
# LoCon: kohya's conv_dim adapts the ResBlocks' 3x3 convolutions too.
CONV_LEAVES = ("conv1", "conv2")


def random_model(config: ModelConfig) -> StableDiffusion:
    """A diffx model of `config` with random weights (norms too: a swapped norm would show), in eval mode."""
    torch.manual_seed(0)
    model = build(config)
    randomise_norms(model.unet)
    randomise_norms(model.text_encoder, seed=1)
    return model.eval()


def adapted_layers(model: nn.Module, leaves: Iterable[str]) -> dict[str, nn.Linear | nn.Conv2d]:
    """`model`'s Linear and Conv2d layers whose path ends with one of `leaves`, by path (a layer peft has wrapped,
    and keeps wrapped after its adapter is deleted, by the wrapper's path)."""
    leaves = tuple(leaves)
    layers = {path.removesuffix(".base_layer"): module for path, module in model.named_modules()
              if isinstance(module, nn.Linear | nn.Conv2d)}
    return {path: module for path, module in layers.items() if path.endswith(leaves)}


def random_pair(module: nn.Linear | nn.Conv2d, rank: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(down, up) for `module`: A (rank, in[, kh, kw]), B (out, rank[, 1, 1]), large enough to change outputs."""
    if isinstance(module, nn.Conv2d):
        kernel = tuple(module.kernel_size)
        down = torch.randn(rank, module.in_channels, *kernel, generator=generator)
        up = torch.randn(module.out_channels, rank, 1, 1, generator=generator)
        fan_in = module.in_channels * kernel[0] * kernel[1]
    else:
        down = torch.randn(rank, module.in_features, generator=generator)
        up = torch.randn(module.out_features, rank, generator=generator)
        fan_in = module.in_features
    return down / fan_in ** 0.5, up * 0.2 / rank ** 0.5


def kohya_tensors(layers: dict[str, nn.Module], prefix: str, rank: int, alpha: float, seed: int,
                  rename: dict[str, str] | None = None) -> dict[str, Tensor]:
    """kohya's keys `<prefix><path with _ for .>.lora_down.weight` / `.lora_up.weight` / `.alpha` (`rename`: the
    path each layer is named by in the file, when not its own)."""
    generator, tensors = torch.Generator().manual_seed(seed), {}
    for path, module in layers.items():
        name = prefix + (rename or {}).get(path, path).replace(".", "_")
        tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"] = random_pair(module, rank, generator)
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    return tensors


def peft_tensors(layers: dict[str, nn.Module], prefix: str, rank: int, seed: int) -> dict[str, Tensor]:
    """diffusers/PEFT keys `<prefix><path>.lora_A.weight` / `.lora_B.weight` (no alpha: it is the rank)."""
    generator, tensors = torch.Generator().manual_seed(seed), {}
    for path, module in layers.items():
        tensors[f"{prefix}{path}.lora_A.weight"], tensors[f"{prefix}{path}.lora_B.weight"] = \
            random_pair(module, rank, generator)
    return tensors


def write_lora(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> Path:
    save_file({key: t.clone().contiguous() for key, t in tensors.items()}, str(path), metadata=metadata)
    return path


TOLERANCE = 2e-4
Outputs = Callable[[StableDiffusion, dict[str, nn.Module]], dict[str, tuple[Tensor, Tensor]]]


def lora_parity(model: StableDiffusion, theirs: dict[str, nn.Module], file: Path, outputs: Outputs,
                pipeline: type) -> dict[str, float]:
    """Max |diffx - diffusers| per output of `outputs(model, theirs)` ({name: (diffx's, diffusers')}) at scales 1
    and 0.5, with `file` loaded by diffx (`apply_lora`) and by `pipeline`'s LoRA loader into diffusers' U-Net and
    transformers' text encoders (peft backend), both taken off after. Fails if diffusers' outputs do not change
    (a LoRA that loads nowhere) or if diffx's are not back to the first ones after `remove()`."""
    before = outputs(model, theirs)
    # unet_config: what diffusers maps SGM's block names (`input_blocks_4_1`) by, as `load_lora_weights` gives it.
    state, alphas, metadata = pipeline.lora_state_dict(str(file), unet_config=theirs["unet"].config,
                                                       return_lora_metadata=True)
    pipeline.load_lora_into_unet(state, alphas, unet=theirs["unet"], adapter_name="test", metadata=metadata)
    for name in theirs:
        if name.startswith("text_encoder"):
            pipeline.load_lora_into_text_encoder(state, alphas, text_encoder=theirs[name], prefix=name,
                                                 adapter_name="test", metadata=metadata)
    applied = apply_lora(model, file)
    diffs = {}
    for scale in (1.0, 0.5):
        if scale != 1.0:
            applied.scale = scale
            for module in theirs.values():
                scale_lora_layers(module, scale)
        for name, (ours, reference) in outputs(model, theirs).items():
            assert (reference - before[name][1]).abs().max() > 100 * TOLERANCE, f"diffusers' {name} is unchanged"
            diffs[f"{name} @ {scale:g}"] = float((ours - reference).abs().max())
    applied.remove()
    for module in theirs.values():
        delete_adapter_layers(module, "test")
    assert all(torch.equal(ours, before[name][0]) for name, (ours, _) in outputs(model, theirs).items())
    return diffs
