"""Model configurations as dataclasses, with the SD1.5 and SD2.x presets and small sizes.

Field names follow the original (CompVis/LDM) configs so a reader can compare them with
`v1-inference.yaml`, `v2-inference(-v).yaml` and `sd_xl_base.yaml`; `sd15()`, `sd21_v()` and `sdxl_base()` reproduce
those files' numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

# Text-encoder checkpoint layouts: OpenAI CLIP as transformers names it (SD1.x, `cond_stage_model.transformer.*`)
# and OpenCLIP's (SD2.x, `cond_stage_model.model.*`: fused in_proj, `resblocks`, `ln_final`).
TEXT_LAYOUTS = ("clip", "open_clip")


@dataclass
class TextEncoderConfig:
    """CLIP text transformer (Radford et al. 2021): ViT-L/14's text tower for SD1.x, OpenCLIP ViT-H/14's for SD2.x.

    `skipped_layers`: the last blocks whose output is not used; SD2 reads the penultimate block's output
    (LDM's `FrozenOpenCLIPEmbedder(layer="penultimate")`) and then applies `ln_final`, so it skips 1 of 24.
    `pad_token`: what fills the 77 positions after the end token: `<|endoftext|>` for SD1.x, `!` (id 0,
    as `open_clip.tokenize` pads with zeros) for SD2.x.
    `final_norm`: whether the final LayerNorm is applied to the used block's output (SD1.x, SD2.x); SDXL reads
    both its encoders' penultimate hidden states without it (`hidden_states[-2]`).
    `projection_dim`: the width of the pooled output's `text_projection` (OpenCLIP bigG in SDXL: 1280); 0 = none.
    """

    vocab_size: int = 49408
    max_position_embeddings: int = 77
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    layout: str = "clip"
    skipped_layers: int = 0
    pad_token: str = "<|endoftext|>"
    final_norm: bool = True
    projection_dim: int = 0


@dataclass
class UNetConfig:
    """The LDM U-Net (Rombach et al. 2022, `openaimodel.UNetModel`) with spatial transformers."""

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    # Levels (0 = full latent resolution) whose blocks carry a spatial transformer; the middle always does.
    attention_levels: tuple[int, ...] = (0, 1, 2)
    num_heads: int = 8
    # Blocks per spatial transformer: one number, or one per level (SDXL: 0, 2, 10; the middle block takes the
    # deepest level's, as `sd_xl_base.yaml`'s `transformer_depth_middle` defaults to).
    transformer_depth: int | tuple[int, ...] = 1
    context_dim: int = 768
    norm_num_groups: int = 32
    # SD2.x: heads of a fixed width (64) instead of a fixed count (num_head_channels = -1 keeps num_heads),
    # Linear instead of 1x1-conv proj_in/proj_out, and attention computed in fp32 (SD2-768, `ATTN_PRECISION`).
    num_head_channels: int = -1
    use_linear_in_transformer: bool = False
    upcast_attention: bool = False
    # SDXL: the width of the vector y (pooled text + embedded size/crop ids) that `label_emb` maps onto the
    # timestep embedding (`adm_in_channels`, 2816); 0 = no added conditioning.
    adm_in_channels: int = 0

    def depth_at(self, level: int) -> int:
        """The transformer depth at `level` (0 = full resolution); the middle block's is the deepest level's."""
        depth = self.transformer_depth
        return depth if isinstance(depth, int) else depth[level]

    def heads_at(self, channels: int) -> int:
        """The attention heads of a transformer `channels` wide: num_heads, or channels / num_head_channels."""
        return self.num_heads if self.num_head_channels == -1 else channels // self.num_head_channels

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4


@dataclass
class VAEConfig:
    """AutoencoderKL (Rombach et al. 2022, `ldm.models.autoencoder`); f = 2**(len(ch_mult) - 1)."""

    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    # SD3's VAE: its latents are centred before scaling, z_scaled = (z − shift_factor) · scaling_factor (SD3: 0.0609,
    # 1.5305), and it has no 1x1 convs into and out of the latent space (diffusers' `use_quant_conv=False`).
    shift_factor: float = 0.0
    use_quant_conv: bool = True
    # Decode in fp32 when the model runs in fp16 (diffusers' `force_upcast`, which its SDXL pipeline honours):
    # SDXL's VAE overflows in fp16 and decodes to black or NaN pictures.
    force_upcast: bool = False
    # Latent -> RGB preview, fitted per model (None = SD1.5's linear factors): rgb = zᵀ factors + bias, or
    # with a hidden layer rgb = SiLU(zᵀ W + b_h)ᵀ factors + bias (see diffx.render.latents.latent_to_rgb_fast).
    latent_rgb_factors: tuple[tuple[float, float, float], ...] | None = None
    latent_rgb_bias: tuple[float, float, float] | None = None
    latent_rgb_hidden_weight: tuple[tuple[float, ...], ...] | None = None
    latent_rgb_hidden_bias: tuple[float, ...] | None = None

    def latent_preview(self) -> dict:
        """The preview's parameters as the keyword arguments of `latent_to_rgb_fast` (nested lists)."""
        return {"factors": self.latent_rgb_factors, "bias": self.latent_rgb_bias,
                "hidden_weight": self.latent_rgb_hidden_weight, "hidden_bias": self.latent_rgb_hidden_bias}

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


# What the U-Net's output is: the noise ε (DDPM), or v = √ᾱ ε − √(1−ᾱ) x_0 (Salimans & Ho 2022, SD2-768).
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass
class SchedulerConfig:
    """The training noise schedule and the default sampling settings that go with a model.

    `rescale_betas_zero_snr`: β rescaled so that the last timestep is pure noise (Lin et al. 2023,
    Algorithm 1; diffusers' name), for models trained that way (with v-prediction).
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    timestep_spacing: str = "leading"
    steps_offset: int = 1
    prediction_type: str = "epsilon"
    rescale_betas_zero_snr: bool = False
    # Rectified-flow models (beta_schedule "flow", SD3): the sampler's time shift s ↦ shift·s/(1 + (shift − 1)·s).
    shift: float = 1.0

    def trained_for(self, prediction_type: str, zero_snr: bool) -> SchedulerConfig:
        """This schedule for a model trained to predict `prediction_type` ("epsilon" or "v_prediction"), with β
        rescaled to zero terminal SNR if `zero_snr`. Such a model samples with trailing spacing, from
        t = T − 1, where x_T is pure noise as it was in training (Lin et al. 2023 §3.3)."""
        spacing = "trailing" if zero_snr else self.timestep_spacing
        return replace(self, prediction_type=prediction_type, rescale_betas_zero_snr=zero_snr,
                       timestep_spacing=spacing)


@dataclass
class ModelConfig:
    """Everything needed to build one text-to-image model."""

    name: str
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    # SDXL's second text encoder (OpenCLIP ViT-bigG/14), its context concatenated to the first's; None otherwise.
    text_encoder_2: TextEncoderConfig | None = None
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    image_size: int = 512
    default_sampler: str = "ddim"
    default_steps: int = 50
    default_guidance: float = 7.5
    # SDXL (diffusers' default): no negative prompt (None, not "") conditions the unconditional branch on zeros.
    force_zeros_for_empty_prompt: bool = False

    def to_dict(self) -> dict:
        """JSON-native (tuples become lists): what `from_dict` reads back."""
        return json_lists(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return cls(
            name=data["name"],
            text_encoder=TextEncoderConfig(**tuples(data["text_encoder"])),
            text_encoder_2=TextEncoderConfig(**data["text_encoder_2"]) if data.get("text_encoder_2") else None,
            unet=UNetConfig(**tuples(data["unet"])),
            vae=VAEConfig(**tuples(data["vae"])),
            scheduler=SchedulerConfig(**data["scheduler"]),
            **{k: data[k] for k in ("image_size", "default_sampler", "default_steps", "default_guidance",
                                    "force_zeros_for_empty_prompt") if k in data},
        )


def sd15() -> ModelConfig:
    """Stable Diffusion v1.5 (`v1-inference.yaml`): 860 M-parameter U-Net, CLIP ViT-L/14, f8 VAE."""
    return ModelConfig(name="sd15")


def sd15_inpainting() -> ModelConfig:
    """SD1.5 inpainting: the U-Net also sees the mask (1 channel) and the masked image latent (4)."""
    config = sd15()
    config.name = "sd15-inpainting"
    config.unet.in_channels = 9
    return config


def sd21_v() -> ModelConfig:
    """Stable Diffusion 2.1-v (`v2-inference-v.yaml`): OpenCLIP ViT-H/14 text tower (1024 wide, 24 blocks, the
    penultimate one's output used), 64-wide U-Net heads (5, 10, 20, 20), Linear proj_in/out, context 1024,
    v-prediction at 768 px; attention in fp32 (diffusers' `upcast_attention`: in fp16 it overflows)."""
    return ModelConfig(
        name="sd21-v",
        text_encoder=TextEncoderConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                       num_attention_heads=16, hidden_act="gelu", layout="open_clip",
                                       skipped_layers=1, pad_token="!"),
        unet=UNetConfig(num_head_channels=64, use_linear_in_transformer=True, context_dim=1024,
                        upcast_attention=True),
        scheduler=SchedulerConfig(prediction_type="v_prediction"),
        image_size=768,
    )


def sd21_base() -> ModelConfig:
    """Stable Diffusion 2.x-base (`v2-inference.yaml`): the same shapes as 2.1-v, ε-prediction at 512 px."""
    config = sd21_v()
    config.name, config.image_size = "sd21-base", 512
    config.unet.upcast_attention = False
    config.scheduler.prediction_type = "epsilon"
    return config


def sd2_inpainting() -> ModelConfig:
    """SD2 inpainting (`v2-inpainting-inference.yaml`, from 2.0-base): 9 input channels, ε, 512 px."""
    config = sd21_base()
    config.name = "sd2-inpainting"
    config.unet.in_channels = 9
    return config


def sdxl_base() -> ModelConfig:
    """SDXL 1.0 base (`sd_xl_base.yaml`; Podell et al. 2023): two text encoders, CLIP ViT-L/14 (768) and OpenCLIP
    ViT-bigG/14 (1280 wide, 20 heads, 32 blocks), both read at the penultimate block without the final norm and
    concatenated into a 2048-wide context; bigG's pooled, projected end token (1280) and the six size/crop ids
    (6 x 256) form the 2816-wide y added to the timestep embedding. U-Net 320/640/1280 with no attention at the
    top level, 2 and 10 transformer blocks below (10 in the middle), 64-wide heads, Linear proj_in/out.
    f8 VAE of SD's shape with scaling factor 0.13025; 1024 px, ε-prediction, guidance 5."""
    return ModelConfig(
        name="sdxl-base",
        text_encoder=TextEncoderConfig(skipped_layers=1, final_norm=False),
        text_encoder_2=TextEncoderConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                         num_attention_heads=20, hidden_act="gelu", layout="open_clip",
                                         skipped_layers=1, pad_token="!", final_norm=False, projection_dim=1280),
        unet=UNetConfig(channel_mult=(1, 2, 4), attention_levels=(1, 2), transformer_depth=(0, 2, 10),
                        context_dim=2048, num_head_channels=64, use_linear_in_transformer=True, adm_in_channels=2816),
        vae=VAEConfig(scaling_factor=0.13025, force_upcast=True),
        image_size=1024,
        default_sampler="euler",
        default_guidance=5.0,
        force_zeros_for_empty_prompt=True,
    )


def sd3_vae() -> VAEConfig:
    """The 16-channel AutoencoderKL of SD3 and SD3.5 (Esser et al. 2024, §5.2.1: more latent channels, better
    reconstructions): LDM's VAE with 16 latent channels, no quant convs, latents centred and scaled."""
    return VAEConfig(z_channels=16, embed_dim=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                     latent_rgb_factors=SD3_LATENT_RGB_FACTORS, latent_rgb_bias=(0.2394, 0.2135, 0.1925))


# SD3's latent -> RGB preview: a linear fit of the 16 scaled latent channels to the decoded colours (ComfyUI's
# `latent_formats.SD3`, the numbers its live previews use).
SD3_LATENT_RGB_FACTORS = (
    (-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458), (0.0856, 0.0339, 0.0902),
    (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309), (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358),
    (-0.0194, 0.0020, 0.0669), (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
    (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293), (-0.1448, -0.1463, -0.1189),
)


def tiny() -> ModelConfig:
    """A few-kB model with every architectural feature of SD1.5, for fast tests."""
    return ModelConfig(
        name="tiny",
        text_encoder=TextEncoderConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4),
        unet=UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(0, 1),
                        num_heads=2, context_dim=32, norm_num_groups=8),
        vae=VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, norm_num_groups=8),
        image_size=64,
        default_steps=10,
    )


def shapes_world() -> ModelConfig:
    """The first embedded model (v1): SD1.x architecture at toy size, trained on the shapes world.

    64x64 pixels, an f4 VAE (16x16x4 latents: at f8 the shapes' corners blur away), a 2-layer
    CLIP text encoder on the real CLIP vocabulary (64 wide: its 49408-token embedding table is most
    of the text encoder) and a 3-level U-Net (40/80/160 channels) with cross-attention at every level.
    About 10 M parameters: 21 MB as fp16 safetensors.
    """
    return ModelConfig(
        name="shapes-world",
        text_encoder=TextEncoderConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                       num_attention_heads=4),
        unet=UNetConfig(model_channels=40, channel_mult=(1, 2, 4), num_res_blocks=1, attention_levels=(0, 1, 2),
                        num_heads=4, context_dim=64, norm_num_groups=8),
        vae=VAEConfig(ch=24, ch_mult=(1, 2, 4), num_res_blocks=1, norm_num_groups=8),
        image_size=64,
        default_sampler="ddim",
        default_steps=25,
        default_guidance=5.0,
    )


def shapes_world_2() -> ModelConfig:
    """The embedded default model (v2): the richer world of `diffx.embedded.world` at 128x128 pixels.

    SD's own f8 VAE layout (four levels, 16x16x4 latents at 128 px as SD's 64x64x4 at 512 px), a 3-layer
    64-wide CLIP text encoder (the longer, looser captions) and a 3-level U-Net of 48/96/192 channels with
    cross-attention at every level: about 16.5 M parameters, 33 MB as fp16 safetensors.
    """
    return ModelConfig(
        name="shapes-world-2",
        text_encoder=TextEncoderConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                                       num_attention_heads=4),
        unet=UNetConfig(model_channels=48, channel_mult=(1, 2, 4), num_res_blocks=1, attention_levels=(0, 1, 2),
                        num_heads=4, context_dim=64, norm_num_groups=8),
        vae=VAEConfig(ch=32, ch_mult=(1, 2, 4, 4), num_res_blocks=1, norm_num_groups=8),
        image_size=128,
        default_sampler="ddim",
        default_steps=25,
        default_guidance=7.5,
    )


PRESETS = {"sd15": sd15, "sd15-inpainting": sd15_inpainting, "sd21-v": sd21_v, "sd21-base": sd21_base,
           "sd2-inpainting": sd2_inpainting, "sdxl-base": sdxl_base, "tiny": tiny, "shapes-world": shapes_world,
           "shapes-world-2": shapes_world_2}


def json_lists(value: object) -> object:
    """Tuples → lists, all the way down, so a config dict compares equal after a JSON round trip."""
    if isinstance(value, dict):
        return {key: json_lists(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_lists(item) for item in value]
    return value


def tuples(fields: dict) -> dict:
    """A config section read from JSON with its lists back as tuples (the dataclasses' field types)."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in fields.items()}
