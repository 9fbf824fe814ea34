"""The Stable Diffusion v1/v2 model stack in one object: tokenizer, text encoder, U-Net, VAE.

Its weights are exchanged in the *original* single-file layout of CompVis/Runway/Stability checkpoints
(`v1-5-pruned-emaonly.ckpt`, `v2-1_768-ema-pruned.safetensors`), where each component sits under one
prefix. The modules mirror those keys exactly, so converting is only adding or removing the prefix.
SD1.x keeps its CLIP text encoder under `cond_stage_model.transformer.`, SD2.x its OpenCLIP one under
`cond_stage_model.model.` (`TextEncoder.checkpoint_prefix`, `OpenClipTextEncoder.checkpoint_prefix`), SDXL its two
under `conditioner.` (`SdxlTextEncoders`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from diffx.errors import check_choice
from diffx.models.clip import TextEncoder
from diffx.models.configs import TEXT_LAYOUTS, ModelConfig
from diffx.models.fast_cpu import FAST_DTYPE, use_channels_last, use_packed_convolutions
from diffx.models.open_clip import OPEN_CLIP_PREFIX, OpenClipTextEncoder
from diffx.models.parts import ModelParts
from diffx.models.sdxl import SDXL_PREFIX, SdxlTextEncoders
from diffx.models.tiny_decoder import TinyDecoder
from diffx.models.tokenizer import END_TOKEN, ClipTokenizer
from diffx.models.unet import UNet
from diffx.models.vae import AutoencoderKL

# Component attribute -> its key prefix in an original SD1.x checkpoint (SD2.x: the text encoder's differs).
ORIGINAL_PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": TextEncoder.checkpoint_prefix,
}
# Every prefix a diffx model's tensors may have in a single file.
ALL_PREFIXES = (*ORIGINAL_PREFIXES.values(), OPEN_CLIP_PREFIX, SDXL_PREFIX)


@dataclass
class StableDiffusion(ModelParts):
    """Everything a pipeline needs to turn a prompt into an image, plus where its weights came from."""

    family: ClassVar[str] = "stable-diffusion"  # its parts as the pipeline calls them: diffx.pipeline.families
    network_part: ClassVar[str] = "unet"
    network_name: ClassVar[str] = "U-Net"
    family_hint: ClassVar[str] = "a model of that family and size"

    config: ModelConfig
    tokenizer: ClipTokenizer
    text_encoder: TextEncoder | OpenClipTextEncoder | SdxlTextEncoders
    unet: UNet
    vae: AutoencoderKL
    source: str
    # Optional: a distilled decoder for cheap x̂0 previews (`models.tiny_decoder`); fp32 always, it is tiny.
    tiny_decoder: TinyDecoder | None = None

    def prefixes(self) -> dict[str, str]:
        """Component attribute -> its key prefix in this model's single-file layout."""
        return {**ORIGINAL_PREFIXES, "text_encoder": self.text_encoder.checkpoint_prefix}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
           ) -> StableDiffusion:
        """Move (and cast floating-point weights of) every component, in place; returns self.

        On the CPU the convolution weights are stored channels-last (`fast_cpu`), in every dtype: oneDNN's
        convolutions want NHWC, and in fp32 too a plain NCHW map is reordered around each one (benchmarks/
        channels_last.py on a 2-core AVX2 CPU: the embedded U-Net's fp32 forward 0.75-0.84x the NCHW time;
        SD1.5's at 64x64 latents the same within noise), except weights mapped from a file at its own dtype,
        which a copy would hold twice. bf16 there is the fast path: the convolutions also run on prepacked
        weights."""
        for module in self.modules().values():
            module.to(device=device, dtype=dtype)
        if self.tiny_decoder is not None:
            self.tiny_decoder.to(device=device)
        if self.device.type == "cpu":
            fast = self.dtype == FAST_DTYPE
            use_channels_last(self.modules().values(), keep_mapped=not fast)
            if fast:
                use_packed_convolutions(self.modules().values())
        return self


def build(
    config: ModelConfig, tokenizer: ClipTokenizer | None = None, source: str = "random init"
) -> StableDiffusion:
    """A model with freshly initialised weights (or meta tensors, inside `torch.device("meta")`).

    The tokenizer pads with the config's pad token (SD2.x: `!`; SDXL: the first encoder's, `<|endoftext|>`)."""
    text = config.text_encoder
    tokenizer = (tokenizer or ClipTokenizer.default()).padded_with(text.pad_token)
    encoder = OpenClipTextEncoder if check_choice("layout", text.layout, TEXT_LAYOUTS) == "open_clip" else TextEncoder
    if config.text_encoder_2 is not None:
        text_encoder = SdxlTextEncoders(text, config.text_encoder_2, tokenizer.vocab[END_TOKEN],
                                        tokenizer.vocab[config.text_encoder_2.pad_token])
    else:
        text_encoder = encoder(text)
    return StableDiffusion(
        config=config,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=UNet(config.unet),
        vae=AutoencoderKL(config.vae),
        source=source,
    )


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
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


def build_without_weights(
    config: ModelConfig, tokenizer: ClipTokenizer | None = None, source: str = "no weights yet"
) -> StableDiffusion:
    """A model whose parameters are shape-only placeholders (`meta`), for a checkpoint's tensors to be assigned to."""
    with parameters_on_meta():
        return build(config, tokenizer, source=source)
