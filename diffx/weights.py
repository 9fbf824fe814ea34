"""Find a model on disk, read its weights and load them into a `StableDiffusion`, without the network.

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

import contextlib
import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from diffx.errors import CheckpointError, InvalidArgumentError, ModelNotFoundError, check_choice
from diffx.models.configs import (
    PRESETS,
    ModelConfig,
    SchedulerConfig,
    TextEncoderConfig,
    UNetConfig,
    VAEConfig,
    sd15,
    sd15_inpainting,
)
from diffx.models.stable_diffusion import ORIGINAL_PREFIXES, StableDiffusion, build
from diffx.models.tokenizer import ClipTokenizer
from diffx.paths import DATA_DIR, EMBEDDED_MODEL_DIR
from diffx.render.io import atomic_output
from diffx.safe_checkpoint import load_torch_zip

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
MODEL_ALIASES = {"embedded": EMBEDDED_MODEL_DIR, "shapes-world": EMBEDDED_MODEL_DIR}
SD15_FILE_NAMES = ("v1-5-pruned-emaonly.safetensors", "v1-5-pruned-emaonly.ckpt")
SD_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")
# diffusers/transformers weight file names, preferred first.
COMPONENT_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors", "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",
    "diffusion_pytorch_model.bin", "pytorch_model.bin",
)
# EMA copies of the U-Net weights in original training checkpoints: `model_ema.diffusion_modelout0weight`.
EMA_PREFIX = "model_ema."


@dataclass(frozen=True)
class ModelSource:
    """A model found on disk: where, in which layout ("single-file", "diffusers", "diffx"), and a summary."""

    path: Path
    format: str
    description: str


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


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; the model folder is incomplete") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON ({error})") from error


def _not_sd1(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path} looks like {what}; diffx supports SD1.x models only")


def config_from_diffusers(folder: Path) -> ModelConfig:
    """Our `ModelConfig` from the config.json files of a diffusers Stable Diffusion folder."""
    unet = _read_json(folder / "unet" / "config.json")
    vae = _read_json(folder / "vae" / "config.json")
    text = _read_json(folder / "text_encoder" / "config.json")
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler = _read_json(scheduler_file) if scheduler_file.is_file() else {}

    if unet.get("addition_embed_type") == "text_time":
        raise _not_sd1(folder, "an SDXL model")
    if unet.get("use_linear_projection") or unet.get("cross_attention_dim") == 1024:
        raise _not_sd1(folder, "an SD2.x model")
    # A diffusers quirk: for SD1.x, `attention_head_dim` holds the number of heads (8), not their width.
    heads = unet.get("num_attention_heads") or unet.get("attention_head_dim", 8)
    if isinstance(heads, list):
        if len(set(heads)) != 1:
            raise _not_sd1(folder, f"a U-Net with per-level head counts {heads}")
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


@functools.cache
def _expected_shapes(preset: str) -> dict[str, tuple[int, ...]]:
    model = _build_without_weights(PRESETS[preset](), None, preset)
    return {key: tuple(tensor.shape) for key, tensor in model.original_state_dict().items()}


def _signature_fits(config: ModelConfig, state_dict: dict[str, Tensor]) -> bool:
    """Do the first layers of the three components have this config's shapes?"""
    unet, vae, text = config.unet, config.vae, config.text_encoder
    signature = {
        "model.diffusion_model.input_blocks.0.0.weight": (unet.model_channels, unet.in_channels, 3, 3),
        "first_stage_model.encoder.conv_in.weight": (vae.ch, vae.in_channels, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight":
            (text.vocab_size, text.hidden_size),
    }
    return all(key in state_dict and state_dict[key].shape == shape for key, shape in signature.items())


def infer_config(state_dict: dict[str, Tensor], path: Path) -> ModelConfig:
    """The preset whose shapes an state dict fits, else SD1.5 (loading then says what differs)."""
    keys = state_dict.keys()
    if any(key.startswith("conditioner.") for key in keys):
        raise _not_sd1(path, "an SDXL checkpoint")
    if any(key.startswith("cond_stage_model.model.") for key in keys):
        raise _not_sd1(path, "an SD2.x checkpoint (OpenCLIP text encoder)")
    if not any(key.startswith(ORIGINAL_PREFIXES["unet"]) for key in keys):
        if any(key.startswith(("encoder.", "decoder.")) for key in keys):
            raise _not_sd1(path, "a standalone VAE file, not a whole model")
        if any("lora" in key for key in keys):
            raise _not_sd1(path, "a LoRA adapter, not a whole model")
        raise CheckpointError(f"{path} is not an SD checkpoint (it has no model.diffusion_model.* keys)")
    context_widths = {t.shape[-1] for key, t in state_dict.items() if key.endswith("attn2.to_k.weight")}
    if 1024 in context_widths:
        raise _not_sd1(path, "an SD2.x checkpoint (1024-d text context)")

    for preset, make_config in PRESETS.items():
        if not _signature_fits(make_config(), state_dict):  # cheap test before building the preset's shapes
            continue
        expected = _expected_shapes(preset)
        if all(key in state_dict and state_dict[key].shape == shape for key, shape in expected.items()):
            return PRESETS[preset]()
    first_conv = state_dict.get(ORIGINAL_PREFIXES["unet"] + "input_blocks.0.0.weight")
    return sd15_inpainting() if first_conv is not None and first_conv.shape[1] == 9 else sd15()


# ---------------------------------------------------------------------------------------------------
# Loading and saving


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Within this block, new modules get shape-only (`meta`) parameters, to be assigned from a checkpoint.

    Buffers stay real, so values computed at construction survive. (What `accelerate.init_empty_weights`
    does.) The `torch.nn.init` functions do nothing meanwhile (as in transformers' `no_init_weights`):
    random initialisation is wasted on weights about to be replaced, and on meta tensors `normal_` would
    import torch._dynamo, about a second and a half of the first load.
    """
    register_parameter = nn.Module.register_parameter
    initialisers = {name: getattr(nn.init, name) for name in dir(nn.init)
                    if name.endswith("_") and not name.startswith("_") and callable(getattr(nn.init, name))}

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register_parameter(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    def skip_init(tensor: Tensor, *args: object, **kwargs: object) -> Tensor:
        return tensor

    nn.Module.register_parameter = register_on_meta
    for name in initialisers:
        setattr(nn.init, name, skip_init)
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter
        for name, function in initialisers.items():
            setattr(nn.init, name, function)


def _build_without_weights(
    config: ModelConfig, tokenizer: ClipTokenizer | None, source: str
) -> StableDiffusion:
    with _parameters_on_meta():
        return build(config, tokenizer, source=source)


def _tokenizer_near(*folders: Path) -> ClipTokenizer:
    """The tokenizer of the first folder holding vocab.json + merges.txt, else CLIP's shipped vocabulary."""
    for folder in folders:
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            return ClipTokenizer.from_folder(folder)
    return ClipTokenizer.default()


def _select_ema(state_dict: dict[str, Tensor], use_ema: bool) -> dict[str, Tensor]:
    """Replace U-Net weights by their EMA copies (`model_ema.<key without dots>`) when asked and present."""
    weights = {key: tensor for key, tensor in state_dict.items() if not key.startswith(EMA_PREFIX)}
    if use_ema:
        for key in weights:
            flat = EMA_PREFIX + key.removeprefix("model.").replace(".", "")
            if key.startswith(ORIGINAL_PREFIXES["unet"]) and flat in state_dict:
                weights[key] = state_dict[flat]
    return weights


def _read_single_file(path: Path, config: ModelConfig | None, use_ema: bool) -> tuple[ModelConfig, dict]:
    state_dict = read_state_dict(path)
    config = config or infer_config(state_dict, path)
    state_dict = _select_ema(state_dict, use_ema)
    # Other keys (the schedule tables `betas`, `alphas_cumprod`..., the text encoder's position ids) are
    # not weights of diffx's modules.
    position_ids = ORIGINAL_PREFIXES["text_encoder"] + "text_model.embeddings.position_ids"
    return config, {
        key: tensor for key, tensor in state_dict.items()
        if key.startswith(tuple(ORIGINAL_PREFIXES.values())) and key != position_ids
    }


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
    use_ema: bool = True,
    config: ModelConfig | None = None,
) -> StableDiffusion:
    """Load a model from a checkpoint file, a diffusers folder or a diffx folder (see `resolve_model_source`).

    `use_ema`: take the U-Net's EMA weights when a single-file checkpoint holds both (as diffusers'
    `extract_ema`). `config`: the architecture of a single-file checkpoint, if it is none of the presets.
    """
    found = source if isinstance(source, ModelSource) else resolve_model_source(source)
    path = found.path
    if found.format == "single-file":
        config, state_dict = _read_single_file(path, config, use_ema)
        tokenizer = _tokenizer_near(path.parent, path.parent / "tokenizer")
    elif found.format == "diffusers":
        config, state_dict = _read_diffusers(path)
        tokenizer = _tokenizer_near(path / "tokenizer")
    else:
        config = ModelConfig.from_dict(_read_json(path / "config.json"))
        state_dict = read_state_dict(path / "model.safetensors")
        tokenizer = _tokenizer_near(path)

    # Cast first (a no-op when the file already has `dtype`), then hand the tensors to the modules.
    state_dict = {key: t.to(dtype) if t.is_floating_point() else t for key, t in state_dict.items()}
    model = _build_without_weights(config, tokenizer, str(path))
    model.load_original_state_dict(state_dict)
    del state_dict
    return model.to(device=device).eval()


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


# ---------------------------------------------------------------------------------------------------
# Finding a model


def detect_format(path: Path) -> str:
    """"single-file", "diffusers" or "diffx" for a path that exists; CheckpointError for anything else."""
    if path.is_file():
        if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            return "single-file"
        raise CheckpointError(
            f"{path} is not a checkpoint file; expected one of: {', '.join(SINGLE_FILE_SUFFIXES)}"
        )
    if (path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file():
        return "diffusers"
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return "diffx"
    raise CheckpointError(
        f"{path} is not a model folder: expected a diffusers folder (model_index.json, unet/, vae/, "
        "text_encoder/) or a diffx folder (config.json + model.safetensors)"
    )


def _model_source(path: Path) -> ModelSource:
    kind = detect_format(path)
    if kind == "single-file":
        description = f"checkpoint file, {path.stat().st_size / 2**20:.0f} MB"
    elif kind == "diffusers":
        description = "diffusers folder"
    else:
        description = f"diffx folder ({_read_json(path / 'config.json').get('name', '?')})"
    return ModelSource(path=path, format=kind, description=description)


def _is_model(path: Path) -> bool:
    try:
        detect_format(path)
    except CheckpointError:
        return False
    return True


def hub_cache_dirs() -> list[Path]:
    """Hugging Face hub caches (only read): $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub."""
    candidates = [os.environ.get("HF_HUB_CACHE")]
    if os.environ.get("HF_HOME"):
        candidates.append(str(Path(os.environ["HF_HOME"]) / "hub"))
    candidates.append(str(Path.home() / ".cache" / "huggingface" / "hub"))
    return list(dict.fromkeys(Path(c).expanduser() for c in candidates if c))


def _data_dir_models() -> list[Path]:
    """SD1.5 checkpoints in data/ (the usual file names first), then other checkpoints and model folders."""
    if not DATA_DIR.is_dir():
        return []
    entries = sorted(DATA_DIR.iterdir(), key=lambda p: (p.name not in SD15_FILE_NAMES, p.name))
    return [
        p for p in entries
        if p.resolve() != EMBEDDED_MODEL_DIR.resolve()
        and (p.suffix.lower() in (".ckpt", ".safetensors") if p.is_file() else _is_model(p))
    ]


def _hub_cache_models() -> list[Path]:
    """Snapshots of Stable Diffusion pipelines in the hub caches that hold U-Net weights."""
    found = []
    for cache in hub_cache_dirs():
        for index in sorted(cache.glob("models--*/snapshots/*/model_index.json")):
            try:
                pipeline = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
            except (OSError, json.JSONDecodeError):
                continue
            snapshot = index.parent
            has_weights = any((snapshot / "unet" / name).is_file() for name in COMPONENT_WEIGHT_FILES)
            if pipeline in SD_PIPELINES and has_weights:
                found.append(snapshot)
    return found


def find_models() -> list[ModelSource]:
    """Every model diffx can use without the network, in the order it prefers them.

    $DIFFX_MODEL, then checkpoints and model folders in data/, then Stable Diffusion snapshots in the
    Hugging Face hub cache, then the embedded model.
    """
    paths = []
    if os.environ.get("DIFFX_MODEL"):
        paths.append(Path(os.environ["DIFFX_MODEL"]).expanduser())
    paths += _data_dir_models() + _hub_cache_models() + [EMBEDDED_MODEL_DIR]
    unique = dict.fromkeys(p for p in paths if p.exists() and _is_model(p))
    return [_model_source(p) for p in unique]


def resolve_model_source(model: str | Path | None = None) -> ModelSource:
    """The model to use: `model` (a path or "embedded"), else $DIFFX_MODEL, else `find_models()[0]`."""
    where = "--model"
    if model is None and os.environ.get("DIFFX_MODEL"):
        model, where = os.environ["DIFFX_MODEL"], "DIFFX_MODEL"
    if model is not None:
        path = MODEL_ALIASES.get(str(model), Path(model).expanduser())
        if not path.exists():
            raise ModelNotFoundError(
                f"{where} {model}: no such file or folder; point it at an SD1.x .ckpt/.safetensors file, "
                "a diffusers folder or a diffx folder, or use 'embedded'"
            )
        return _model_source(path)
    found = find_models()
    if not found:
        caches = ", ".join(str(p) for p in hub_cache_dirs())
        raise ModelNotFoundError(
            f"no model found: diffx looked in {DATA_DIR} (e.g. {SD15_FILE_NAMES[1]}), the Hugging Face cache "
            f"({caches}) and the embedded model folder {EMBEDDED_MODEL_DIR}; "
            "pass --model PATH or set DIFFX_MODEL"
        )
    return found[0]


# ---------------------------------------------------------------------------------------------------
# Device and precision

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """"auto" (CUDA, else MPS, else CPU), "cpu", "cuda" (or "cuda:N") or "mps"; unavailable -> error."""
    kind = check_choice("device", name.split(":")[0], DEVICES)
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if kind == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (kind == "cuda" and not cuda) or (kind == "mps" and not mps):
        raise InvalidArgumentError(f"device {name!r} is not available on this machine; use --device cpu/auto")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"fp32", "fp16" (GPU only), "bf16", or "auto" (fp16 on a GPU, fp32 on the CPU)."""
    check_choice("dtype", name, ("auto", *DTYPES))
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if name == "fp16" and device.type == "cpu":
        raise InvalidArgumentError("fp16 is not supported on the CPU (missing kernels); use bf16 or fp32")
    return DTYPES[name]
