"""Which diffx layer each key of a LoRA file adapts: the names LoRA trainers give layers, mapped to diffx's.

A LoRA file names each adapted layer after the model it was trained on, in one of three schemes:

- kohya / A1111 (`.safetensors` from sd-scripts): `lora_unet_<path>`, `lora_te_<path>` (SDXL: `lora_te1_`,
  `lora_te2_`), the module path with its dots turned into underscores, where `<path>` is diffusers'
  (`down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`) or, for SDXL files, the original SGM one
  (`input_blocks_4_1_transformer_blocks_0_attn1_to_q`); text encoders in transformers' names
  (`text_model_encoder_layers_0_self_attn_q_proj`);
- diffusers / PEFT: `unet.<diffusers path>`, `text_encoder.<transformers path>` (SDXL: and `text_encoder_2.`);
- diffusers' older attention-processor files: `unet.<attention>.processor.to_q_lora`, `to_out_lora` (= `to_out.0`),
  `text_encoder.<attention>.to_q_lora` (= `q_proj`) and `.lora_linear_layer.`.

SD3 / SD3.5 (`_mmdit_names`): sd-scripts' `lora_unet_<Stability's path>` and `lora_te1_`/`lora_te2_`/`lora_te3_`
(CLIP-L, bigG, T5), diffusers' `transformer.<diffusers path>` and `text_encoder`/`_2`/`_3`; diffusers' q, k and v
are thirds of Stability's stacked `qkv`.

Underscores cannot be split back into dots unambiguously (`transformer_blocks` vs `input_blocks_4`), so the map
runs the other way: every Linear and Conv2d of the model is listed under every name a scheme gives it, and a
file's names are looked up there. diffx's module paths are the original checkpoint's; diffusers' are derived from
them by the inverse of `diffusers_layout.unet_rename_rules`, transformers' names of OpenCLIP's layers by the
inverse of `diffusers_layout.OPEN_CLIP_LEAVES`. OpenCLIP's stacked `in_proj` (W_q; W_k; W_v) is three targets,
one third of its output rows each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from diffx.models.open_clip import OpenClipTextEncoder, StackedProjection
from diffx.models.sd3 import StableDiffusion3
from diffx.models.stable_diffusion import StableDiffusion
from diffx.models.unet import UNet
from diffx.weights.diffusers_layout import OPEN_CLIP_LEAVES, rename_key, unet_rename_rules
from diffx.weights.sd3_layout import module_sources, swapped_modules

# The part of an update a key holds, by how the key ends: down (A: in -> rank), up (B: rank -> out) or alpha; a
# LyCORIS LoHa's or LoKr's factors by their own names (part None: the name the key ends with).
PART_PATTERNS: tuple[tuple[re.Pattern, str | None], ...] = (
    (re.compile(r"(.+)\.(?:lora_down|lora_A|lora\.down|lora_linear_layer\.down)\.weight"), "down"),
    (re.compile(r"(.+)\.(?:lora_up|lora_B|lora\.up|lora_linear_layer\.up)\.weight"), "up"),
    (re.compile(r"(.+)\.alpha"), "alpha"),
    (re.compile(r"(.+_lora)\.down\.weight"), "down"),  # diffusers' attention processors: `to_q_lora.down.weight`
    (re.compile(r"(.+_lora)\.up\.weight"), "up"),
    (re.compile(r"(.+)\.(hada_w[12]_[ab]|hada_t[12]|lokr_w[12](?:_[ab])?|lokr_t2)"), None),
)
# The U-Net's three runs of blocks, by their module lists' names: a target's section (`LoraTarget.unet_section`).
UNET_SECTIONS = {"input_blocks": "in", "middle_block": "mid", "output_blocks": "out"}
# diffusers' attention-processor LoRAs: `<attention>[.processor].to_q_lora` is the layer `<attention>.to_q`.
PROCESSOR_LORA = re.compile(r"(.+?)(?:\.processor)?\.(to_[qkv]|to_out)_lora")
TEXT_PROCESSOR_LEAVES = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


@dataclass(frozen=True)
class LoraTarget:
    """One layer a LoRA can adapt: the component (`unet` or `text_encoder`), the module's path inside it (the original
    checkpoint's key without its prefix and `.weight`), and for OpenCLIP's stacked projection the output rows it
    owns."""

    component: str
    module_path: str
    rows: tuple[int, int] | None = None

    def module(self, model: StableDiffusion | StableDiffusion3) -> nn.Module:
        return getattr(model, self.component).get_submodule(self.module_path)

    @property
    def unet_section(self) -> str | None:
        """Where in the U-Net the layer runs: "in" (input blocks, the way down), "mid" (the middle block), "out"
        (output blocks, the way up) or "other" (the time and class embeddings, the final convolution); None for a
        text encoder's layer."""
        if self.component != "unet":
            return None
        return UNET_SECTIONS.get(self.module_path.split(".")[0], "other")


def split_lora_key(key: str) -> tuple[str, str] | None:
    """`key` -> (the layer's name in its file's scheme, "down" / "up" / "alpha" / a LyCORIS factor's name such as
    "hada_w1_a"); None for a key of no update."""
    for pattern, part in PART_PATTERNS:
        if match := pattern.fullmatch(key):
            part = part or match.group(2)
            name = match.group(1)
            if processor := PROCESSOR_LORA.fullmatch(name):
                attention, leaf = processor.groups()
                text = attention.startswith("text_encoder")
                name = f"{attention}.{TEXT_PROCESSOR_LEAVES[leaf] if text else leaf.replace('to_out', 'to_out.0')}"
            return name, part
    return None


def _adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear | nn.Conv2d | StackedProjection)


def _diffusers_unet_paths(unet: UNet) -> dict[str, str]:
    """diffx's path of each adaptable U-Net layer -> diffusers' (`input_blocks.1.1.…` -> `down_blocks.0.…`)."""
    inverse = {original: diffusers for diffusers, original in unet_rename_rules(unet.config).items()}
    return {path: rename_key(path + ".weight", inverse).removesuffix(".weight")
            for path, module in unet.named_modules() if _adaptable(module)}


def _unet_names(unet: UNet) -> dict[str, LoraTarget]:
    names = {}
    for path, diffusers in _diffusers_unet_paths(unet).items():
        target = LoraTarget("unet", path)
        for name in ("lora_unet_" + path.replace(".", "_"), "lora_unet_" + diffusers.replace(".", "_"),
                     "unet." + diffusers):
            names[name] = target
    return names


def _transformers_paths(encoder: nn.Module, within: str) -> dict[str, LoraTarget]:
    """transformers' path (`text_model.encoder.layers.0.self_attn.q_proj`) -> target, for a CLIP or OpenCLIP encoder
    found at `within` inside the model's text encoder."""
    paths = {}
    for path, module in encoder.named_modules():
        if not _adaptable(module):
            continue
        if not isinstance(encoder, OpenClipTextEncoder):  # CLIP: diffx's paths are transformers' already
            paths[path] = LoraTarget("text_encoder", within + path)
            continue
        name = re.sub(r"^transformer\.resblocks\.(\d+)\.", r"text_model.encoder.layers.\1.", path)
        if isinstance(module, StackedProjection):  # rows 0..w: W_q, w..2w: W_k, 2w..3w: W_v
            width = encoder.config.hidden_size
            for index, which in enumerate("qkv"):
                paths[name.replace("attn.in_proj", f"self_attn.{which}_proj")] = LoraTarget(
                    "text_encoder", within + path, (index * width, (index + 1) * width))
            continue
        for transformers, open_clip in OPEN_CLIP_LEAVES.items():
            if name.endswith("." + open_clip):
                name = name.removesuffix(open_clip) + transformers
                break
        paths[name] = LoraTarget("text_encoder", within + path)
    return paths


def _text_encoders(model: StableDiffusion | StableDiffusion3) -> list[tuple[nn.Module, str, str, str]]:
    """(encoder, its path inside the model's text encoder, kohya's prefix, diffusers' component) per text encoder."""
    if isinstance(model, StableDiffusion3):  # CLIP-L, bigG, T5: te1-te3 / text_encoder - text_encoder_3
        encoders = model.text_encoder
        present = [(name, index) for index, name in enumerate(("clip_l", "clip_g", "t5xxl"), 1)
                   if hasattr(encoders, name)]
        return [(getattr(encoders, name).transformer, f"{name}.transformer.", f"te{index}",
                 "text_encoder" if index == 1 else f"text_encoder_{index}") for name, index in present]
    if model.config.text_encoder_2 is not None:  # SDXL: CLIP-L is te1 / text_encoder, bigG te2 / text_encoder_2
        return [(model.text_encoder.embedders[0].transformer, "embedders.0.transformer.", "te1", "text_encoder"),
                (model.text_encoder.embedders[1].model, "embedders.1.model.", "te2", "text_encoder_2")]
    return [(model.text_encoder, "", "te", "text_encoder")]


def _text_names(model: StableDiffusion | StableDiffusion3) -> dict[str, LoraTarget]:
    names = {}
    for encoder, within, kohya, diffusers in _text_encoders(model):
        for path, target in _transformers_paths(encoder, within).items():
            # transformers >= 5.6 saves CLIPTextModel's keys without `text_model.`; PEFT files follow the model.
            for name in (f"lora_{kohya}_" + path.replace(".", "_"), f"{diffusers}.{path}",
                         f"{diffusers}.{path.removeprefix('text_model.')}"):
                names[name] = target
    return names


def _mmdit_names(model: StableDiffusion3) -> dict[str, LoraTarget]:
    """An SD3 MMDiT's layers under Stability's paths (sd-scripts' `lora_unet_joint_blocks_0_x_block_attn_qkv`) and
    diffusers' (`transformer.transformer_blocks.0.attn.to_q`, and `lora_transformer_…` with underscores): diffusers'
    to_q / to_k / to_v are thirds of the stacked `qkv` (rows W_q; W_k; W_v). The 2-vector adaLNs whose halves
    diffusers stores swapped (`sd3_layout.swapped_modules`) are adaptable under Stability's names only."""
    config = model.config.mmdit
    sources, swapped, names = module_sources(config), swapped_modules(config), {}
    for path, module in model.transformer.named_modules():
        if not _adaptable(module):
            continue
        whole = LoraTarget("transformer", path)
        names["lora_unet_" + path.replace(".", "_")] = whole
        stacked = sources.get(path, ()) if path not in swapped else ()
        for index, source in enumerate(stacked):
            target = whole
            if len(stacked) > 1:  # q, k, v: a third of the stacked Linear's rows each
                width = module.out_features // len(stacked)
                target = LoraTarget("transformer", path, (index * width, (index + 1) * width))
            names["transformer." + source] = names["lora_transformer_" + source.replace(".", "_")] = target
    return names


def lora_targets(model: StableDiffusion | StableDiffusion3) -> dict[str, LoraTarget]:
    """Every name a LoRA file may give one of `model`'s adaptable layers -> that layer (works on a model built
    without weights, so a file can be checked before any weight is read)."""
    if isinstance(model, StableDiffusion3):
        return {**_mmdit_names(model), **_text_names(model)}
    return {**_unet_names(model.unet), **_text_names(model)}


def kohya_names(model: StableDiffusion) -> dict[LoraTarget, str]:
    """The name kohya's sd-scripts give each of `model`'s adaptable layers — `lora_unet_` + diffusers' U-Net path,
    `lora_te_` (SDXL: `lora_te1_`, `lora_te2_`) + transformers' text-encoder path, dots as underscores: what a LoRA
    file diffx writes (`diffx finetune`) calls it, so that sd-scripts, diffusers and A1111 read it."""
    names = {LoraTarget("unet", path): "lora_unet_" + diffusers.replace(".", "_")
             for path, diffusers in _diffusers_unet_paths(model.unet).items()}
    for encoder, within, kohya, _ in _text_encoders(model):
        for path, target in _transformers_paths(encoder, within).items():
            names[target] = f"lora_{kohya}_" + path.replace(".", "_")
    return names
