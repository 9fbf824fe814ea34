"""Stable Diffusion 3 and 3.5 in one object: three text encoders, the MMDiT, the 16-channel VAE.

Esser et al. 2024 ("Scaling Rectified Flow Transformers for High-Resolution Image Synthesis", §4, fig. 2):

    CLIP-L (penultimate, 77 × 768) ‖ OpenCLIP bigG (penultimate, 77 × 1280)  -> (77, 2048), zero-padded to 4096
    T5-XXL v1.1 encoder (256 × 4096; absent: 256 zero rows, as diffusers without `text_encoder_3`)
    context = [CLIP part ; T5 part]                                          (77 + 256, 4096)
    pooled  = [CLIP-L projected end token ; bigG projected end token]        (2048,)
    v̂ = MMDiT(x_s, s · 1000, context, pooled)                               (16, h, w)

Module paths are the keys of Stability's single files: the MMDiT under `model.diffusion_model.`, the VAE under
`first_stage_model.`, the encoders under `text_encoders.{clip_l,clip_g,t5xxl}.transformer.` in transformers'
layouts (CLIP with its `text_projection`, T5's `encoder.*` and `shared`). The VAE's latents are centred and scaled
(`VAEConfig.shift_factor`, `scaling_factor`); the scheduler is rectified flow with SD3's time shift 3
(`diffx.sampling.flow`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from diffx.models.clip import TextEncoder
from diffx.models.configs import SchedulerConfig, TextEncoderConfig, VAEConfig, json_lists, sd3_vae, tuples
from diffx.models.fast_cpu import use_channels_last
from diffx.models.mmdit import MMDiT, MMDiTConfig, sd3_medium, sd35_large, sd35_medium
from diffx.models.parts import ModelParts
from diffx.models.stable_diffusion import parameters_on_meta
from diffx.models.t5 import T5Config, T5Encoder
from diffx.models.t5_tokenizer import T5Tokenizer
from diffx.models.tiny_decoder import TinyDecoder
from diffx.models.tokenizer import END_TOKEN, ClipTokenizer
from diffx.models.vae import AutoencoderKL

T5_MAX_LENGTH = 256  # diffusers' StableDiffusion3Pipeline `max_sequence_length`
CLIP_LENGTH = 77


def clip_l() -> TextEncoderConfig:
    """SD3's CLIP ViT-L/14 (`text_encoder/`): read at its penultimate block, no final norm; pooled 768."""
    return TextEncoderConfig(skipped_layers=1, final_norm=False, projection_dim=768)


def clip_g() -> TextEncoderConfig:
    """SD3's OpenCLIP ViT-bigG/14 in transformers' layout (`text_encoder_2/`): 32 blocks, 1280 wide, exact GELU,
    penultimate block, no final norm; pooled 1280; its tokenizer pads with "!"."""
    return TextEncoderConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                             hidden_act="gelu", skipped_layers=1, final_norm=False, projection_dim=1280,
                             pad_token="!")


def flow_scheduler(shift: float = 3.0) -> SchedulerConfig:
    """Rectified flow with SD3's time shift (diffusers' FlowMatchEulerDiscreteScheduler, `shift=3.0`)."""
    return SchedulerConfig(beta_schedule="flow", prediction_type="flow", timestep_spacing="trailing", steps_offset=0,
                           shift=shift)


@dataclass
class SD3Config:
    """Everything needed to build an SD3 / SD3.5 model. `t5` None: no T5 (its context part: t5_max_length zero rows).

    An SD3-shaped model of another size may drop the second CLIP (`clip_g` None: the context and pooled vector are
    CLIP-L's alone, `clip_l.projection_dim` 0: its pooled vector is the normed end-token feature, unprojected), the
    T5 part (`t5_max_length` 0) and the tail of CLIP's 77 rows (`clip_length`: CLIP is causal, so the first n rows
    are what a 77-row run gives them), as the embedded flow model does (`diffx.embedded.flow_model`).
    """

    name: str
    mmdit: MMDiTConfig = field(default_factory=sd3_medium)
    clip_l: TextEncoderConfig = field(default_factory=clip_l)
    clip_g: TextEncoderConfig | None = field(default_factory=clip_g)
    t5: T5Config | None = field(default_factory=T5Config)
    vae: VAEConfig = field(default_factory=sd3_vae)
    scheduler: SchedulerConfig = field(default_factory=flow_scheduler)
    image_size: int = 1024
    default_sampler: str = "euler"
    default_steps: int = 28
    default_guidance: float = 7.0
    t5_max_length: int = T5_MAX_LENGTH
    clip_length: int = CLIP_LENGTH

    @property
    def clip_width(self) -> int:
        """The CLIP part's width before padding to the MMDiT's context width (SD3: 768 + 1280 = 2048)."""
        return self.clip_l.hidden_size + (self.clip_g.hidden_size if self.clip_g is not None else 0)

    def to_dict(self) -> dict:
        """JSON-native: what `from_dict` reads back."""
        return json_lists(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> SD3Config:
        return cls(name=data["name"], mmdit=MMDiTConfig(**tuples(data["mmdit"])),
                   clip_l=TextEncoderConfig(**data["clip_l"]),
                   clip_g=TextEncoderConfig(**data["clip_g"]) if data.get("clip_g") else None,
                   t5=T5Config(**data["t5"]) if data.get("t5") else None, vae=VAEConfig(**tuples(data["vae"])),
                   scheduler=SchedulerConfig(**data["scheduler"]),
                   **{k: data[k] for k in ("image_size", "default_sampler", "default_steps", "default_guidance",
                                           "t5_max_length", "clip_length") if k in data})


def sd3_medium_model() -> SD3Config:
    """SD3-medium as Stability ships it: the 2 B MMDiT, CLIP-L, bigG, T5-XXL, the 16-channel VAE."""
    return SD3Config("sd3-medium")


def sd35_medium_model() -> SD3Config:
    """SD3.5-medium: the MMDiT-X (QK-norm, `attn2` in blocks 0-12) with SD3's encoders and VAE."""
    return SD3Config("sd3.5-medium", mmdit=sd35_medium())


def sd35_large_model() -> SD3Config:
    """SD3.5-large: the 8 B MMDiT (38 blocks, QK-norm) with SD3's encoders and VAE."""
    return SD3Config("sd3.5-large", mmdit=sd35_large())


class _Transformer(nn.Module):
    """`text_encoders.<name>`: one encoder under `transformer.` (sgm's embedders keep it there)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.transformer = encoder


class SD3TextEncoders(nn.Module):
    """The three encoders (`text_encoders.clip_l`, `.clip_g`, `.t5xxl`): prompts -> (context, pooled)."""

    checkpoint_prefix = "text_encoders."

    def __init__(self, config: SD3Config, end_id: int, g_pad_id: int):
        super().__init__()
        self.config = config
        self.end_id, self.g_pad_id = end_id, g_pad_id
        self.clip_l = _Transformer(TextEncoder(config.clip_l))
        if config.clip_g is not None:
            self.clip_g = _Transformer(TextEncoder(config.clip_g))
        if config.t5 is not None:
            self.t5xxl = _Transformer(T5Encoder(config.t5))

    def clip_context(self, clip_ids: Tensor) -> Tensor:
        """The CLIP part of the context alone, (B, 77) -> (B, 77, 768 + 1280): what word weights scale (and what
        views of the text encoders' output show)."""
        context_l, _ = self.clip_l.transformer.encode(clip_ids, self.end_id)
        if self.config.clip_g is None:
            return context_l
        context_g, _ = self.clip_g.transformer.encode(self.g_ids(clip_ids), self.end_id)
        return torch.cat([context_l, context_g], dim=-1)

    def g_ids(self, input_ids: Tensor) -> Tensor:
        """bigG's tokenizer's ids: CLIP-L's up to the first end token, "!" after it (diffusers' tokenizer_2)."""
        is_end = (input_ids == self.end_id).long()
        after_end = (is_end.cumsum(dim=-1) - is_end) > 0  # (B, 77): strictly after the first end token
        return input_ids.masked_fill(after_end, self.g_pad_id)

    def forward(self, clip_ids: Tensor, t5_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`encode` as the module's call, so training's data-parallel wrapper sees it."""
        return self.encode(clip_ids, t5_ids)

    def encode(self, clip_ids: Tensor, t5_ids: Tensor | None) -> tuple[Tensor, Tensor]:
        """(context (B, 77 + L_t5, 4096), pooled (B, 2048)) for CLIP ids (B, 77) and T5 ids (B, L_t5) or None.
        Without bigG: (B, clip_length + L_t5, context_dim) and CLIP-L's pooled vector alone."""
        context_l, pooled_l = self.clip_l.transformer.encode(clip_ids, self.end_id)  # (B, 77, 768), (B, 768)
        if self.config.clip_g is None:
            clip, pooled = context_l[:, :self.config.clip_length], pooled_l  # (B, clip_length, 768)
        else:
            context_g, pooled_g = self.clip_g.transformer.encode(self.g_ids(clip_ids), self.end_id)  # 1280 wide
            clip = torch.cat([context_l, context_g], dim=-1)  # (B, 77, 2048)
            pooled = torch.cat([pooled_l, pooled_g], dim=-1)  # (B, 2048)
        width = self.config.mmdit.context_dim
        clip = nn.functional.pad(clip, (0, width - clip.shape[-1]))  # (B, 77, 2048) -> (B, 77, 4096)
        if t5_ids is None or self.config.t5 is None:
            # (B, 256, 4096): diffusers 0.42's stand-in for a missing T5 (`_get_t5_prompt_embeds`)
            t5 = clip.new_zeros(clip.shape[0], self.config.t5_max_length, width)
        else:
            t5 = self.t5xxl.transformer(t5_ids).to(clip.dtype)  # (B, L_t5, 4096)
        return torch.cat([clip, t5], dim=1), pooled


# Component attribute -> its key prefix in a Stability single file.
SD3_PREFIXES = {"transformer": "model.diffusion_model.", "vae": "first_stage_model.",
                "text_encoder": SD3TextEncoders.checkpoint_prefix}


@dataclass
class StableDiffusion3(ModelParts):
    """SD3 / SD3.5: what the pipeline calls (`diffx.pipeline.families`, family "sd3"), and where it came from."""

    family: ClassVar[str] = "sd3"
    network_part: ClassVar[str] = "transformer"
    network_name: ClassVar[str] = "MMDiT"
    family_hint: ClassVar[str] = "an SD3 / SD3.5 model of that size"

    config: SD3Config
    tokenizer: ClipTokenizer
    t5_tokenizer: T5Tokenizer | None
    text_encoder: SD3TextEncoders
    transformer: MMDiT
    vae: AutoencoderKL
    source: str
    tiny_decoder: TinyDecoder | None = None

    def prefixes(self) -> dict[str, str]:
        return dict(SD3_PREFIXES)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> StableDiffusion3:
        """Move (and cast floating-point weights of) every component, in place; returns self. In fp16, T5 keeps
        its feed-forward outputs in fp32 (`T5Encoder.to_dtype`), as transformers does: they overflow fp16. On the
        CPU the convolution weights (the VAE's, the patch embedding's) are stored channels-last, as
        `StableDiffusion.to` stores them."""
        for name, module in self.modules().items():
            if name == "text_encoder" and self.config.t5 is not None:
                for part in (module.clip_l, module.clip_g):
                    part.to(device=device, dtype=dtype)
                t5 = module.t5xxl.transformer.to(device=device)
                if dtype is not None:
                    t5.to_dtype(dtype)
            else:
                module.to(device=device, dtype=dtype)
        if self.device.type == "cpu":
            use_channels_last(self.modules().values(), keep_mapped=True)
        return self


def build_sd3(config: SD3Config, tokenizer: ClipTokenizer | None = None, t5_tokenizer: T5Tokenizer | None = None,
              source: str = "random init", *, weights: bool = True) -> StableDiffusion3:
    """An SD3 model with freshly initialised weights, or (`weights=False`) shape-only ones for a checkpoint's
    tensors to be assigned to. The CLIP tokenizer pads with `<|endoftext|>` (CLIP-L's); bigG's "!" is applied
    by `SD3TextEncoders.g_ids`."""
    tokenizer = (tokenizer or ClipTokenizer.default()).padded_with(config.clip_l.pad_token)

    def parts() -> tuple[SD3TextEncoders, MMDiT, AutoencoderKL]:
        g_pad = config.clip_g.pad_token if config.clip_g is not None else config.clip_l.pad_token
        encoders = SD3TextEncoders(config, tokenizer.vocab[END_TOKEN], tokenizer.vocab[g_pad])
        return encoders, MMDiT(config.mmdit), AutoencoderKL(config.vae)

    if weights:
        text_encoder, transformer, vae = parts()
    else:
        with parameters_on_meta():
            text_encoder, transformer, vae = parts()
    return StableDiffusion3(config=config, tokenizer=tokenizer, t5_tokenizer=t5_tokenizer,
                            text_encoder=text_encoder, transformer=transformer, vae=vae, source=source)

