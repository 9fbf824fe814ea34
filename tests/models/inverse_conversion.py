"""Single files written by the *inverse* of diffusers' own LDM converters, for tests.

Each converter (`convert_ldm_unet_checkpoint`, `convert_open_clip_checkpoint`...) is run once on a template file
whose every number is its own index (exact in float64); where each index lands in the converted state dict says
where that diffusers tensor's numbers came from, and the diffusers models' tensors are put back there.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor

from diffx.models.configs import ModelConfig
from diffx.models.stable_diffusion import build_without_weights
from tests.models.ldm_configs import diffusers_unet_config, diffusers_vae_config
from tests.models.sd2_models import randomise_norms
from tests.models.tokenizer_files import write_vocab_folder


def reference_models(config: ModelConfig, text_encoders: Callable[[], dict[str, torch.nn.Module]], seed: int = 0
                     ) -> dict[str, torch.nn.Module]:
    """diffusers' U-Net and VAE shaped as `config`, and the text encoders `text_encoders()` builds, with random
    weights (norms too), in eval mode."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        template = build_without_weights(config).original_state_dict()
    models = {"unet": UNet2DConditionModel(**diffusers_unet_config(config, template)),
              "vae": AutoencoderKL(**diffusers_vae_config(config, template)), **text_encoders()}
    for model in models.values():
        randomise_norms(model, seed)
    return {name: model.eval() for name, model in models.items()}


def index_template(shapes: Mapping[str, torch.Size]) -> dict[str, Tensor]:
    """A state dict of `shapes` whose numbers are 0, 1, 2... across all its tensors, in float64."""
    total = sum(shape.numel() for shape in shapes.values())
    index, template, start = torch.arange(total, dtype=torch.float64), {}, 0
    for key, shape in shapes.items():
        template[key] = index[start:start + shape.numel()].reshape(shape)
        start += shape.numel()
    return template


def invert_converters(shapes: Mapping[str, torch.Size], models: Mapping[str, torch.nn.Module],
                      converters: Mapping[str, Callable[[dict[str, Tensor]], dict[str, Tensor]]],
                      seed: int = 1) -> dict[str, Tensor]:
    """The original single file whose conversion by `converters[name]` gives `models[name]`'s weights.

    Numbers no diffusers tensor fills (a block the converter skips, a contrastive head) are random. Keys are
    matched with or without transformers' `text_model.` prefix (transformers >= 5.6 saves CLIPTextModel's
    without it); converted keys the model lacks (CLIPTextModel has no text_projection) are ignored.
    """
    template = index_template(shapes)
    total = sum(shape.numel() for shape in shapes.values())
    flat = torch.randn(total, generator=torch.Generator().manual_seed(seed))
    for name, model in models.items():
        weights = {key.removeprefix("text_model."): t for key, t in model.state_dict().items()}
        for key, positions in converters[name](template).items():
            key = key.removeprefix("text_model.")
            if key in weights:
                flat[positions.flatten().long()] = weights[key].detach().flatten().float()
    return {key: flat[positions.long()] for key, positions in template.items()}  # each tensor's own numbers


def write_diffusers_folder(folder: Path, models: Mapping[str, torch.nn.Module], tokenizers: Mapping[str, str | None],
                           scheduler: dict, pipeline: dict) -> Path:
    """A diffusers pipeline folder of `models` (each saved under its name), CLIP vocabularies under each name of
    `tokenizers` (with that pad token, None = the vocabulary's own), the scheduler's config and model_index.json
    (`pipeline`: its "_class_name" and any flags)."""
    for name, model in models.items():
        model.save_pretrained(folder / name)
    for name, pad_token in tokenizers.items():
        write_vocab_folder(folder / name)
        if pad_token is not None:
            (folder / name / "special_tokens_map.json").write_text(json.dumps({"pad_token": pad_token}))
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    (folder / "model_index.json").write_text(json.dumps(pipeline))
    return folder
