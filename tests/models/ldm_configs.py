"""Our dataclass configs written as the original LDM yaml (`v1-inference.yaml`) and as diffusers configs.

diffusers' offline single-file helpers (`create_*_diffusers_config_from_ldm`, `convert_ldm_*_checkpoint`)
read the original yaml as a dict; writing ours in that layout lets tests convert a diffx state dict with
diffusers' own key mapping, so the key names are checked by an independent witness.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils
from torch import Tensor

from diffx.models.configs import ModelConfig, UNetConfig, VAEConfig

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


def ldm_unet_params(cfg: UNetConfig) -> dict:
    """`model.params.unet_config.params` of the original yaml (without `image_size`); SD2's yaml gives
    `num_head_channels: 64` and `use_linear_in_transformer: True` instead of `num_heads`."""
    heads = ({"num_heads": cfg.num_heads} if cfg.num_head_channels == -1 else
             {"num_head_channels": cfg.num_head_channels, "use_linear_in_transformer": cfg.use_linear_in_transformer})
    return {
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "model_channels": cfg.model_channels,
        # LDM names attention levels by their downsampling factor ds = 2**level.
        "attention_resolutions": [2**level for level in cfg.attention_levels],
        "num_res_blocks": cfg.num_res_blocks,
        "channel_mult": list(cfg.channel_mult),
        **heads,
        "use_spatial_transformer": True,
        "transformer_depth": cfg.transformer_depth if isinstance(cfg.transformer_depth, int) else
        list(cfg.transformer_depth),
        "context_dim": cfg.context_dim,
        "legacy": False,
        # SDXL (`sd_xl_base.yaml`): the added vector y enters through `label_emb` ("sequential" classes).
        **({"num_classes": "sequential", "adm_in_channels": cfg.adm_in_channels} if cfg.adm_in_channels else {}),
    }


def ldm_vae_params(cfg: VAEConfig) -> dict:
    """`model.params.first_stage_config.params.ddconfig` of the original yaml (without `resolution`)."""
    return {
        "double_z": True,
        "z_channels": cfg.z_channels,
        "in_channels": cfg.in_channels,
        "out_ch": cfg.out_ch,
        "ch": cfg.ch,
        "ch_mult": list(cfg.ch_mult),
        "num_res_blocks": cfg.num_res_blocks,
        "attn_resolutions": [],
        "dropout": 0.0,
    }


def ldm_original_config(model_config: ModelConfig) -> dict:
    """The original yaml as the dict diffusers' `create_*_diffusers_config_from_ldm` expect."""
    latent_size = model_config.image_size // model_config.vae.downsample_factor
    return {
        "model": {
            "params": {
                "scale_factor": model_config.vae.scaling_factor,
                "unet_config": {"params": {"image_size": latent_size, **ldm_unet_params(model_config.unet)}},
                "first_stage_config": {
                    "params": {
                        "embed_dim": model_config.vae.embed_dim,
                        "ddconfig": {
                            "resolution": model_config.image_size, **ldm_vae_params(model_config.vae)
                        },
                    }
                },
            }
        }
    }


def diffusers_unet_config(model_config: ModelConfig, checkpoint: dict) -> dict:
    """`UNet2DConditionModel(**config)` arguments; the yaml has no GroupNorm group count nor attention upcast
    (an environment variable of the LDM code, `ATTN_PRECISION`), so add ours."""
    original = ldm_original_config(model_config)
    config = single_file_utils.create_unet_diffusers_config_from_ldm(original, checkpoint)
    if model_config.unet.adm_in_channels:  # diffusers tells SDXL by its context width (2048): say it for any width
        config.update(class_embed_type=None, addition_embed_type="text_time", addition_time_embed_dim=256)
    return {**config, "norm_num_groups": model_config.unet.norm_num_groups,
            "upcast_attention": model_config.unet.upcast_attention}


def diffusers_vae_config(model_config: ModelConfig, checkpoint: dict) -> dict:
    """`AutoencoderKL(**config)` arguments; the yaml has no GroupNorm group count, so add ours."""
    original = ldm_original_config(model_config)
    config = single_file_utils.create_vae_diffusers_config_from_ldm(original, checkpoint)
    return {**config, "norm_num_groups": model_config.vae.norm_num_groups}


def reference_unet(model_config: ModelConfig, state_dict: dict[str, Tensor]) -> UNet2DConditionModel:
    """diffusers' U-Net holding the weights of a diffx `UNet.state_dict()`, mapped by diffusers' converter.

    The model is built on the meta device and takes the tensors themselves (`assign=True`): no second copy.
    """
    checkpoint = {UNET_PREFIX + key: value for key, value in state_dict.items()}
    config = diffusers_unet_config(model_config, checkpoint)
    with torch.device("meta"):
        reference = UNet2DConditionModel(**config)
    converted = single_file_utils.convert_ldm_unet_checkpoint(checkpoint, config)
    reference.load_state_dict(converted, strict=True, assign=True)
    return reference.eval()


def reference_vae(model_config: ModelConfig, state_dict: dict[str, Tensor]) -> AutoencoderKL:
    """diffusers' AutoencoderKL holding the weights of a diffx `AutoencoderKL.state_dict()`."""
    checkpoint = {VAE_PREFIX + key: value for key, value in state_dict.items()}
    config = diffusers_vae_config(model_config, checkpoint)
    with torch.device("meta"):
        reference = AutoencoderKL(**config)
    converted = single_file_utils.convert_ldm_vae_checkpoint(checkpoint, config)
    reference.load_state_dict(converted, strict=True, assign=True)
    return reference.eval()
