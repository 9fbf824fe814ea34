"""Read a model's weights and load them into a `StableDiffusion`, without the network (finding one on disk is
`diffx.discovery`'s job).

Three layouts are understood, all converted to the original single-file keys that diffx's modules
mirror (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`):

- *single file*: an original SD1.x checkpoint (`v1-5-pruned-emaonly.ckpt` / `.safetensors`), read with
  `safetensors` or with diffx's code-free unpickler (`diffx.safe_checkpoint`);
- *diffusers folder*: `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/` with config.json
  files; U-Net and VAE names are mapped back by prefix rules generated from the config;
- *diffx folder*: `model.safetensors` (original keys) + `config.json` (`ModelConfig.to_dict()`), the
  format of the embedded model.

Models are built with parameters on the `meta` device and the checkpoint tensors are assigned, not
copied, so loading needs about one model's worth of memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from diffx.architecture import recognise, unsupported_family
from diffx.discovery import COMPONENT_WEIGHT_FILES, ModelSource, read_json, resolve_model_source
from diffx.errors import CheckpointError, ModelNotFoundError, check_choice
from diffx.files import atomic_output
from diffx.models.configs import (
    PREDICTION_TYPES,
    ModelConfig,
    SchedulerConfig,
    TextEncoderConfig,
    UNetConfig,
    VAEConfig,
)
from diffx.models.stable_diffusion import ORIGINAL_PREFIXES, StableDiffusion, build_without_weights
from diffx.models.tokenizer import ClipTokenizer
from diffx.safe_checkpoint import load_torch_zip

# EMA copies of the U-Net weights in original training checkpoints: `model_ema.diffusion_modelout0weight`.
EMA_PREFIX = "model_ema."


# ---------------------------------------------------------------------------------------------------
# Reading tensors


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a .safetensors, .ckpt, .pt, .pth or .bin file, memory-mapped; no pickled code runs.

    A Lightning checkpoint's weights under a top-level `state_dict` key are returned directly.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"no checkpoint file at {path}; check the path")
    if path.suffix.lower() == ".safetensors":
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except SafetensorError as error:
            raise CheckpointError(f"{path} is not a valid .safetensors file ({error})") from error
    else:
        tree = load_torch_zip(path)
        if isinstance(tree, dict) and isinstance(tree.get("state_dict"), dict):
            tree = tree["state_dict"]
        if not isinstance(tree, dict):
            raise CheckpointError(f"{path} holds a pickled {type(tree).__name__}, not a dict of weights")
        tensors = {key: value for key, value in tree.items() if isinstance(value, Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors")
    return tensors


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, without reading the data: a .safetensors header, or a .ckpt's memory-mapped tensors."""
    if path.suffix.lower() == ".safetensors":
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        except SafetensorError as error:
            raise CheckpointError(f"{path} is not a valid .safetensors file ({error})") from error
    return {key: tuple(tensor.shape) for key, tensor in read_state_dict(path).items()}


# ---------------------------------------------------------------------------------------------------
# diffusers names -> original (LDM) names
#
# A rule maps a diffusers module path to the LDM module path; a key is renamed by its longest module
# prefix that has a rule (the transformer blocks inside attentions keep their names, so one rule per
# attention suffices). The rules follow the block layout of `UNet`/`AutoencoderKL` for a config.

UNET_RESNET_LEAVES = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection",
}
VAE_RESNET_LEAVES = {"conv_shortcut": "nin_shortcut"}
# Newer diffusers names first, then the names of diffusers < 0.14 (query/key/value/proj_attn).
VAE_ATTENTION_LEAVES = {
    "group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
    "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out",
}


def _add_rule(rules: dict[str, str], diffusers: str, original: str, leaves: dict[str, str] | None = None
              ) -> None:
    rules[diffusers] = original
    for diffusers_leaf, original_leaf in (leaves or {}).items():
        rules[f"{diffusers}.{diffusers_leaf}"] = f"{original}.{original_leaf}"


def unet_rename_rules(config: UNetConfig) -> dict[str, str]:
    """diffusers `UNet2DConditionModel` module paths -> LDM `UNetModel` module paths."""
    rules = {
        "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
    }
    num_levels, per_level = len(config.channel_mult), config.num_res_blocks
    block = 1  # input_blocks.0 is conv_in
    for level in range(num_levels):
        for i in range(per_level):
            _add_rule(rules, f"down_blocks.{level}.resnets.{i}", f"input_blocks.{block}.0",
                      UNET_RESNET_LEAVES)
            if level in config.attention_levels:
                _add_rule(rules, f"down_blocks.{level}.attentions.{i}", f"input_blocks.{block}.1")
            block += 1
        if level != num_levels - 1:
            _add_rule(rules, f"down_blocks.{level}.downsamplers.0.conv", f"input_blocks.{block}.0.op")
            block += 1
    _add_rule(rules, "mid_block.resnets.0", "middle_block.0", UNET_RESNET_LEAVES)
    _add_rule(rules, "mid_block.attentions.0", "middle_block.1")
    _add_rule(rules, "mid_block.resnets.1", "middle_block.2", UNET_RESNET_LEAVES)
    block = 0
    for up, level in enumerate(reversed(range(num_levels))):  # up_blocks.0 is the deepest level
        has_attention = level in config.attention_levels
        for i in range(per_level + 1):
            _add_rule(rules, f"up_blocks.{up}.resnets.{i}", f"output_blocks.{block}.0", UNET_RESNET_LEAVES)
            if has_attention:
                _add_rule(rules, f"up_blocks.{up}.attentions.{i}", f"output_blocks.{block}.1")
            if level != 0 and i == per_level:  # the upsampler follows the last resnet (and attention)
                _add_rule(rules, f"up_blocks.{up}.upsamplers.0.conv",
                          f"output_blocks.{block}.{2 if has_attention else 1}.conv")
            block += 1
    return rules


def vae_rename_rules(config: VAEConfig) -> dict[str, str]:
    """diffusers `AutoencoderKL` module paths -> LDM `AutoencoderKL` module paths."""
    rules = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
    num_levels, per_level = len(config.ch_mult), config.num_res_blocks
    for level in range(num_levels):
        for i in range(per_level):
            _add_rule(rules, f"encoder.down_blocks.{level}.resnets.{i}", f"encoder.down.{level}.block.{i}",
                      VAE_RESNET_LEAVES)
        if level != num_levels - 1:
            _add_rule(rules, f"encoder.down_blocks.{level}.downsamplers.0.conv",
                      f"encoder.down.{level}.downsample.conv")
    for up, level in enumerate(reversed(range(num_levels))):  # decoder.up_blocks.0 is LDM's up.{last}
        for i in range(per_level + 1):
            _add_rule(rules, f"decoder.up_blocks.{up}.resnets.{i}", f"decoder.up.{level}.block.{i}",
                      VAE_RESNET_LEAVES)
        if level != 0:
            _add_rule(rules, f"decoder.up_blocks.{up}.upsamplers.0.conv", f"decoder.up.{level}.upsample.conv")
    for part in ("encoder", "decoder"):
        for i in range(2):
            _add_rule(rules, f"{part}.mid_block.resnets.{i}", f"{part}.mid.block_{i + 1}", VAE_RESNET_LEAVES)
        _add_rule(rules, f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", VAE_ATTENTION_LEAVES)
    return rules


def rename_key(key: str, rules: dict[str, str]) -> str:
    """Rename `key` by the rule of its longest module prefix; keys without a rule keep their name."""
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in rules:
            return ".".join([rules[prefix], *parts[end:]])
    return key


def unet_from_diffusers(state_dict: dict[str, Tensor], config: UNetConfig) -> dict[str, Tensor]:
    """A diffusers U-Net state dict -> original keys (`model.diffusion_model.*`)."""
    rules = unet_rename_rules(config)
    return {ORIGINAL_PREFIXES["unet"] + rename_key(key, rules): tensor for key, tensor in state_dict.items()}


def vae_from_diffusers(state_dict: dict[str, Tensor], config: VAEConfig) -> dict[str, Tensor]:
    """A diffusers VAE state dict -> original keys (`first_stage_model.*`).

    The mid-block attention of the LDM VAE uses 1x1 convolutions where diffusers uses Linear layers:
    same numbers, weight (C, C) -> (C, C, 1, 1).
    """
    rules = vae_rename_rules(config)
    converted = {}
    for key, tensor in state_dict.items():
        original = rename_key(key, rules)
        if ".mid.attn_1." in original and original.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        converted[ORIGINAL_PREFIXES["vae"] + original] = tensor
    return converted


def text_encoder_from_transformers(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A transformers `CLIPTextModel` state dict -> original keys (`cond_stage_model.transformer.*`).

    transformers < 5 saved the keys under `text_model.` (as all SD folders on the hub have them);
    transformers 5 saves them without it.
    """
    prefix = ORIGINAL_PREFIXES["text_encoder"]
    return {
        prefix + ("" if key.startswith("text_model.") else "text_model.") + key: tensor
        for key, tensor in state_dict.items() if not key.endswith("embeddings.position_ids")
    }


# ---------------------------------------------------------------------------------------------------
# Configs


def _not_sd1(path: Path, family: str) -> CheckpointError:
    return CheckpointError(f"{path}: {unsupported_family(family)}")


def config_from_diffusers(folder: Path) -> ModelConfig:
    """Our `ModelConfig` from the config.json files of a diffusers Stable Diffusion folder."""
    unet = read_json(folder / "unet" / "config.json")
    vae = read_json(folder / "vae" / "config.json")
    text = read_json(folder / "text_encoder" / "config.json")
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler = read_json(scheduler_file) if scheduler_file.is_file() else {}

    if unet.get("addition_embed_type") == "text_time":
        raise _not_sd1(folder, "SDXL")
    if unet.get("use_linear_projection") or unet.get("cross_attention_dim") == 1024:
        raise _not_sd1(folder, "SD2.x")
    # A diffusers quirk: for SD1.x, `attention_head_dim` holds the number of heads (8), not their width.
    heads = unet.get("num_attention_heads") or unet.get("attention_head_dim", 8)
    if isinstance(heads, list):
        if len(set(heads)) != 1:
            raise CheckpointError(f"{folder}: a U-Net with per-level head counts {heads}; diffx's SD1.x U-Net "
                                  "has the same number of heads at every level")
        heads = heads[0]
    unet_channels = unet["block_out_channels"]
    vae_channels = vae["block_out_channels"]
    vae_config = VAEConfig(
        in_channels=vae.get("in_channels", 3), out_ch=vae.get("out_channels", 3), ch=vae_channels[0],
        ch_mult=tuple(c // vae_channels[0] for c in vae_channels),
        num_res_blocks=vae.get("layers_per_block", 2),
        z_channels=vae.get("latent_channels", 4), embed_dim=vae.get("latent_channels", 4),
        norm_num_groups=vae.get("norm_num_groups", 32), scaling_factor=vae.get("scaling_factor", 0.18215),
    )
    defaults = SchedulerConfig()
    return ModelConfig(
        name=folder.name,
        text_encoder=TextEncoderConfig(**{
            name: text[name] for name in TextEncoderConfig.__dataclass_fields__ if name in text
        }),
        unet=UNetConfig(
            in_channels=unet.get("in_channels", 4), out_channels=unet.get("out_channels", 4),
            model_channels=unet_channels[0], channel_mult=tuple(c // unet_channels[0] for c in unet_channels),
            num_res_blocks=unet.get("layers_per_block", 2),
            attention_levels=tuple(
                level for level, kind in enumerate(unet["down_block_types"]) if kind.startswith("CrossAttn")
            ),
            num_heads=heads, transformer_depth=unet.get("transformer_layers_per_block", 1),
            context_dim=unet.get("cross_attention_dim", 768), norm_num_groups=unet.get("norm_num_groups", 32),
        ),
        vae=vae_config,
        scheduler=SchedulerConfig(**{
            name: scheduler.get(name, getattr(defaults, name))
            for name in SchedulerConfig.__dataclass_fields__
        }),
        image_size=unet.get("sample_size", 64) * vae_config.downsample_factor,
    )


# ---------------------------------------------------------------------------------------------------
# Loading and saving


def _tokenizer_near(*folders: Path) -> ClipTokenizer:
    """The tokenizer of the first folder holding vocab.json + merges.txt, else CLIP's shipped vocabulary."""
    for folder in folders:
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            return ClipTokenizer.from_folder(folder)
    return ClipTokenizer.default()


WEIGHT_CHOICES = ("ema", "main")


def _select_weights(state_dict: dict[str, Tensor], choice: str) -> tuple[dict[str, Tensor], str]:
    """The U-Net weights asked for, and a phrase saying which were taken.

    A training checkpoint (CompVis' `sd-v1-4-full-ema.ckpt`) holds the trained weights and their
    exponential moving average, the EMA copy under `model_ema.<key without its dots>`; the EMA weights
    sample better and are what CompVis' scripts load (`use_ema`), so "ema" takes them when every U-Net
    tensor has a copy (diffusers' `from_single_file` takes the main ones). "main" takes the others.
    """
    check_choice("weights", choice, WEIGHT_CHOICES)
    weights = {key: tensor for key, tensor in state_dict.items() if not key.startswith(EMA_PREFIX)}
    unet_keys = [key for key in weights if key.startswith(ORIGINAL_PREFIXES["unet"])]
    copies = {key: EMA_PREFIX + key.removeprefix("model.").replace(".", "") for key in unet_keys}
    if not all(flat in state_dict for flat in copies.values()):
        return weights, "the U-Net's one set of weights (the file has no EMA copy)"
    if choice == "main":
        return weights, "the main U-Net weights (--weights main; the file also has EMA ones)"
    return {**weights, **{key: state_dict[flat] for key, flat in copies.items()}}, \
        "the U-Net's EMA weights (the file also has the main ones: --weights main takes those)"


def _modern_text_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Older SD1.x files store CLIP as `cond_stage_model.transformer.embeddings…` (transformers < 4.20, without
    `text_model.`): the same tensors, named as transformers' CLIPTextModel names them now."""
    prefix = ORIGINAL_PREFIXES["text_encoder"]
    old = [key for key in state_dict if key.startswith(prefix) and not key.startswith(prefix + "text_model.")]
    return {**{key: t for key, t in state_dict.items() if key not in old},
            **{prefix + "text_model." + key.removeprefix(prefix): state_dict[key] for key in old}}


def _read_single_file(path: Path, config: ModelConfig | None, choice: str) -> tuple[ModelConfig, dict, str]:
    """The config (given, or recognised from the tensors), the weights, and a note on what was recognised."""
    state_dict, taken = _select_weights(_modern_text_keys(read_state_dict(path)), choice)
    # Other keys (the schedule tables `betas`, `alphas_cumprod`..., the text encoder's position ids) are
    # not weights of diffx's modules.
    position_ids = ORIGINAL_PREFIXES["text_encoder"] + "text_model.embeddings.position_ids"
    state_dict = {key: tensor for key, tensor in state_dict.items() if key != position_ids}
    if config is not None:
        note = f"the {config.name} config as given"
    else:
        try:
            recognised = recognise({key: tuple(t.shape) for key, t in state_dict.items()})
        except CheckpointError as error:
            raise CheckpointError(f"{path}: {error}") from None
        config, note = recognised.config, f"recognised {recognised.summary()}"
    modules = tuple(ORIGINAL_PREFIXES.values())
    return config, {key: t for key, t in state_dict.items() if key.startswith(modules)}, f"{note}; {taken}"


def _component_state_dict(folder: Path) -> dict[str, Tensor]:
    for name in COMPONENT_WEIGHT_FILES:
        if (folder / name).is_file():
            return read_state_dict(folder / name)
    raise CheckpointError(f"{folder} holds no weights; expected one of: {', '.join(COMPONENT_WEIGHT_FILES)}")


def _read_diffusers(folder: Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    config = config_from_diffusers(folder)
    return config, {
        **text_encoder_from_transformers(_component_state_dict(folder / "text_encoder")),
        **unet_from_diffusers(_component_state_dict(folder / "unet"), config.unet),
        **vae_from_diffusers(_component_state_dict(folder / "vae"), config.vae),
    }


def load_model(
    source: str | Path | ModelSource | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    weights: str = "ema",
    config: ModelConfig | None = None,
    note: Callable[[str], None] | None = None,
) -> StableDiffusion:
    """Load a model from a checkpoint file, a diffusers folder or a diffx folder (see `resolve_model_source`).

    A single file's architecture is recognised from its tensors (`diffx.architecture.recognise`) unless
    `config` gives it. `weights`: "ema" takes the U-Net's EMA weights when a single file holds both (as
    CompVis' scripts do), "main" the others. `note(line)` hears, for a single file, one line saying what
    was recognised and which weights were taken (a folder's config says it already).
    """
    found = source if isinstance(source, ModelSource) else resolve_model_source(source)
    path = found.path
    check_choice("weights", weights, WEIGHT_CHOICES)
    if found.format == "single-file":
        config, state_dict, what = _read_single_file(path, config, weights)
        tokenizer = _tokenizer_near(path.parent, path.parent / "tokenizer")
    elif found.format == "diffusers":
        config, state_dict = _read_diffusers(path)
        tokenizer = _tokenizer_near(path / "tokenizer")
    else:
        config = ModelConfig.from_dict(read_json(path / "config.json"))
        state_dict = read_state_dict(path / "model.safetensors")
        tokenizer = _tokenizer_near(path)
    if config.scheduler.prediction_type not in PREDICTION_TYPES:
        raise CheckpointError(f"{path}: model {config.name!r} predicts {config.scheduler.prediction_type!r}; "
                              f"diffx runs {' and '.join(PREDICTION_TYPES)} models")
    # Cast first (a no-op when the file already has `dtype`), then hand the tensors to the modules.
    state_dict = {key: t.to(dtype) if t.is_floating_point() else t for key, t in state_dict.items()}
    model = build_without_weights(config, tokenizer, str(path))
    model.load_original_state_dict(state_dict)
    del state_dict
    if note is not None and found.format == "single-file":
        note(f"{path.name}: {what}; predicts {config.scheduler.prediction_type}")
    return model.to(device=device).eval()


def describe_architecture(source: ModelSource) -> str:
    """What a model found on disk is, in a few words (the `diffx models` column): the family recognised from
    a single file's tensors, or from a folder's config; for a file diffx cannot load, why."""
    try:
        if source.format == "single-file":
            return recognise(_modern_text_keys(read_shapes(source.path))).summary()
        config = config_from_diffusers(source.path) if source.format == "diffusers" else \
            ModelConfig.from_dict(read_json(source.path / "config.json"))
    except CheckpointError as error:
        return str(error).removeprefix(f"{source.path}: ")
    return f"SD1.x ({config.name}), predicts {config.scheduler.prediction_type}"


def save_model(model: StableDiffusion, folder: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write `model` as a diffx folder: model.safetensors (original keys, floats as `dtype`) + config.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        key: (t.to(dtype) if t.is_floating_point() else t).detach().to("cpu").contiguous()
        for key, t in model.original_state_dict().items()
    }
    metadata = {"format": "pt", "diffx_model": model.config.name}
    with atomic_output(folder / "model.safetensors", force=True) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    config_text = json.dumps(model.config.to_dict(), indent=2) + "\n"
    with atomic_output(folder / "config.json", force=True) as tmp:
        tmp.write_text(config_text, encoding="utf-8")
    return folder
