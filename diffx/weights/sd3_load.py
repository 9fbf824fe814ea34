"""Loading SD3 / SD3.5 from a diffusers folder: its configs read into `SD3Config`, its tensors renamed to the
single-file keys diffx's modules have (`diffx.models.sd3`).

A folder as diffusers saves `StableDiffusion3Pipeline`: `transformer/` (SD3Transformer2DModel), `text_encoder/` and
`text_encoder_2/` (CLIPTextModelWithProjection: CLIP-L, bigG), `text_encoder_3/` (T5EncoderModel, often in
shards), `tokenizer{,_2,_3}/`, `vae/` (AutoencoderKL, 16 channels), `scheduler/` (FlowMatchEulerDiscreteScheduler).
Without `text_encoder_3/` (a folder saved with `text_encoder_3=None`) the model runs without T5, as diffusers does:
256 zero rows stand for its part of the context.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from diffx.errors import CheckpointError, InvalidArgumentError
from diffx.models.sd3 import SD3_PREFIXES, SD3Config, StableDiffusion3, build_sd3, clip_g, clip_l, flow_scheduler
from diffx.models.t5 import T5Config
from diffx.models.t5_tokenizer import T5Tokenizer
from diffx.models.tokenizer import ClipTokenizer
from diffx.weights.diffusers_layout import pad_token_of, text_config, vae_config_from_diffusers, vae_from_diffusers
from diffx.weights.discovery import read_json
from diffx.weights.sd3_layout import diffusers_to_diffx, read_sd3_config

T5_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets",
             "relative_attention_max_distance", "layer_norm_epsilon")


def is_sd3_folder(folder: Path) -> bool:
    """Whether a diffusers folder holds an SD3-family pipeline (an MMDiT under `transformer/`)."""
    return (folder / "transformer" / "config.json").is_file()


def _t5_config(folder: Path) -> T5Config | None:
    """`text_encoder_3/config.json` as a `T5Config`; None when the folder has no T5."""
    path = folder / "text_encoder_3" / "config.json"
    if not path.is_file():
        return None
    data = read_json(path)
    if data.get("feed_forward_proj", "gated-gelu") != "gated-gelu":
        raise CheckpointError(f"{path} is not a T5 v1.1 encoder (feed_forward_proj "
                              f"{data.get('feed_forward_proj')!r}); SD3's text_encoder_3 is T5-XXL v1.1")
    return T5Config(**{name: data[name] for name in T5_FIELDS if name in data})


def sd3_config_from_diffusers(folder: Path) -> SD3Config:
    """The `SD3Config` of a diffusers SD3 folder, from its components' config files."""
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler = read_json(scheduler_file) if scheduler_file.is_file() else {}
    if scheduler.get("use_dynamic_shifting"):
        raise CheckpointError(f"{scheduler_file}: resolution-dependent shifting (use_dynamic_shifting) is Flux's, "
                              "not SD3's; diffx runs SD3's fixed shift")
    first = read_json(folder / "text_encoder" / "config.json")
    second = read_json(folder / "text_encoder_2" / "config.json")
    return SD3Config(
        name=folder.name, mmdit=read_sd3_config(folder),
        clip_l=text_config(first, **_used_as(clip_l()), pad_token=pad_token_of(folder, False),
                           projection_dim=first.get("projection_dim", 768)),
        clip_g=text_config(second, **_used_as(clip_g()), pad_token=pad_token_of(folder, True, "tokenizer_2"),
                           projection_dim=second.get("projection_dim", 1280)),
        t5=_t5_config(folder), vae=vae_config_from_diffusers(read_json(folder / "vae" / "config.json")),
        scheduler=flow_scheduler(float(scheduler.get("shift", 3.0))))


def _used_as(preset: object) -> dict:
    """How SD3 reads an encoder, whatever its sizes: the penultimate block, no final norm."""
    return {"skipped_layers": preset.skipped_layers, "final_norm": preset.final_norm}


def _clip_keys(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """CLIPTextModelWithProjection's tensors under `prefix`: `text_model.*` (transformers 5 saves them without
    that prefix: it is put back) and `text_projection.weight`; the constant position ids dropped."""
    return {prefix + (key if key.startswith(("text_model.", "text_projection.")) else "text_model." + key): tensor
            for key, tensor in state_dict.items() if not key.endswith("embeddings.position_ids")}


def _t5_keys(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """T5EncoderModel's tensors under `prefix`; its one embedding table under both names the module has
    (`shared.weight` and `encoder.embed_tokens.weight`, tied), whichever the file keeps."""
    table = state_dict.get("shared.weight", state_dict.get("encoder.embed_tokens.weight"))
    if table is None:
        raise CheckpointError("text_encoder_3 has no token embedding (shared.weight); is it a T5 encoder?")
    tensors = {**state_dict, "shared.weight": table, "encoder.embed_tokens.weight": table}
    return {prefix + key: tensor for key, tensor in tensors.items()}


def check_flow_prediction(folder: Path, prediction_type: str | None) -> None:
    """An SD3-family model predicts the flow's velocity: any other `prediction_type` asked of it is an error."""
    if prediction_type not in (None, "flow"):
        raise InvalidArgumentError(f"{folder.name} is an SD3 model: it predicts a flow velocity, not "
                                   f"{prediction_type}; leave --prediction-type out")


def load_sd3_folder(folder: Path, component_state_dict: Callable[[Path], dict[str, Tensor]], *,
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                    prediction_type: str | None = None) -> StableDiffusion3:
    """An SD3 / SD3.5 model from a diffusers folder. `component_state_dict(folder)`: a component's tensors (one
    file or shards), from `diffx.weights.load`."""
    check_flow_prediction(folder, prediction_type)
    config = sd3_config_from_diffusers(folder)
    text = SD3_PREFIXES["text_encoder"]
    state_dict = {
        **{SD3_PREFIXES["transformer"] + key: tensor for key, tensor in diffusers_to_diffx(
            component_state_dict(folder / "transformer"), config.mmdit, str(folder / "transformer")).items()},
        **vae_from_diffusers(component_state_dict(folder / "vae"), config.vae),
        **_clip_keys(component_state_dict(folder / "text_encoder"), text + "clip_l.transformer."),
        **_clip_keys(component_state_dict(folder / "text_encoder_2"), text + "clip_g.transformer."),
    }
    if config.t5 is not None:
        state_dict.update(_t5_keys(component_state_dict(folder / "text_encoder_3"), text + "t5xxl.transformer."))
    tokenizer = ClipTokenizer.from_folder(folder / "tokenizer")
    t5_tokenizer = T5Tokenizer.from_file(folder / "tokenizer_3" / "tokenizer.json") if config.t5 else None
    model = build_sd3(config, tokenizer, t5_tokenizer, str(folder), weights=False)
    model.load_original_state_dict(state_dict)  # the file's dtypes; `to` casts (T5's `wo` kept fp32 in fp16)
    del state_dict
    return model.to(device=device, dtype=dtype).eval()
