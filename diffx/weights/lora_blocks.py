"""Where an adapted layer sits, for the LoRA inspector (`diffx.weights.lora_inspect`): its kind (attention,
feed-forward, convolution…), the block of the denoiser or the text-encoder layer it belongs to, and every such block
in the order the model runs them — a U-Net's input blocks (down), middle block and output blocks (up); an MMDiT's
joint blocks, first to last (SD3); each text encoder's layers, first to last.
"""

from __future__ import annotations

import re

from torch import nn

from diffx.models.any_model import AnyModel
from diffx.models.sd3 import StableDiffusion3
from diffx.weights.lora_layers import AdapterLayer

UNET_GROUPS = {"in": "U-Net input blocks (down)", "mid": "U-Net middle block", "out": "U-Net output blocks (up)",
               "other": "U-Net embeddings, final convolution"}
MMDIT_GROUPS = {"blocks": "MMDiT joint blocks", "other": "MMDiT embeddings, final layer"}
CORE_GROUPS = (UNET_GROUPS["in"], UNET_GROUPS["mid"], UNET_GROUPS["out"], MMDIT_GROUPS["blocks"])
TEXT_LAYER = re.compile(r"(?:layers|resblocks|block)\.(\d+)\.")  # CLIP, OpenCLIP, T5
SD3_ENCODERS = ("clip_l", "clip_g", "t5xxl")  # text encoders 1, 2, 3
MMDIT_LABELS = {"x_embedder": "patch embedding", "t_embedder": "time embedding", "y_embedder": "pooled embedding",
                "context_embedder": "context embedding", "final_layer": "final layer"}


def text_encoder_name(layer: AdapterLayer) -> str:
    """"text encoder"; SDXL's "text encoder 1" (CLIP-L, `embedders.0.`) / "text encoder 2" (bigG); SD3's 1-3 (CLIP-L,
    bigG, T5)."""
    head = layer.target.module_path.split(".")
    if head[0] == "embedders":
        return f"text encoder {int(head[1]) + 1}"
    return f"text encoder {SD3_ENCODERS.index(head[0]) + 1}" if head[0] in SD3_ENCODERS else "text encoder"


def layer_part(layer: AdapterLayer, module: nn.Module) -> str:
    """The kind of layer: U-Net attention, feed-forward, transformer projection, convolution or other; MMDiT
    attention or MLP of the image or text stream, adaLN modulation or other; a text encoder's attention, MLP or
    other."""
    path = layer.target.module_path
    if layer.target.component == "text_encoder":
        attention = any(name in path for name in (".self_attn.", ".attn.", ".SelfAttention."))
        kind = "attention" if attention else "MLP" if ".mlp." in path or ".DenseReluDense." in path else "other"
        return f"{text_encoder_name(layer)} {kind}"
    if layer.target.component == "transformer":
        stream = " (image)" if ".x_block." in path else " (text)" if ".context_block." in path else ""
        kind = "attention" if ".attn" in path else "MLP" if ".mlp." in path else \
            "adaLN modulation" if ".adaLN_modulation." in path else "embeddings, final layer"
        return f"MMDiT {kind}{stream}"
    if ".attn1." in path or ".attn2." in path:
        return "U-Net attention (" + ("self" if ".attn1." in path else "cross") + ")"
    if ".ff." in path:
        return "U-Net feed-forward"
    if path.endswith((".proj_in", ".proj_out")):
        return "U-Net transformer proj_in / proj_out"
    return "U-Net convolution" if isinstance(module, nn.Conv2d) else "U-Net other linear (embeddings)"


def _short(encoder: str) -> str:
    return encoder.replace("text encoder", "TE").replace(" ", "")


def _unet_label(name: str, index: int | None) -> str:
    labels = {"input_blocks": "input block", "output_blocks": "output block", "middle_block": "middle block",
              "time_embed": "time embedding", "label_emb": "SDXL y embedding", "out": "final convolution"}
    return labels.get(name, name) + ("" if index is None else f" {index}")


def block_key(layer: AdapterLayer) -> tuple[str, str]:
    """(group, label) of the denoiser block or text-encoder layer a layer sits in."""
    path = layer.target.module_path
    head = path.split(".")
    if layer.target.component == "text_encoder":
        encoder = text_encoder_name(layer)
        found = TEXT_LAYER.search(path)
        return encoder, f"{_short(encoder)} layer {found.group(1)}" if found else f"{_short(encoder)} other"
    if layer.target.component == "transformer":
        if head[0] == "joint_blocks":
            return MMDIT_GROUPS["blocks"], f"joint block {head[1]}"
        return MMDIT_GROUPS["other"], MMDIT_LABELS.get(head[0], head[0])
    section = layer.target.unet_section
    return UNET_GROUPS[section], _unet_label(head[0], int(head[1]) if section in ("in", "out") else None)


def network_slots(model: AnyModel) -> list[tuple[str, str]]:
    """(group, label) of every block of the denoiser in the order they run: embeddings first, then the U-Net's
    input, middle and output blocks or the MMDiT's joint blocks, the final layer last."""
    if isinstance(model, StableDiffusion3):
        other = MMDIT_GROUPS["other"]
        embeddings = [(other, MMDIT_LABELS[name]) for name in ("x_embedder", "t_embedder", "y_embedder",
                                                                "context_embedder")]
        blocks = [(MMDIT_GROUPS["blocks"], f"joint block {i}") for i in range(model.config.mmdit.depth)]
        return [*embeddings, *blocks, (other, MMDIT_LABELS["final_layer"])]
    unet = model.unet
    slots = [(UNET_GROUPS["other"], _unet_label("time_embed", None))]
    if hasattr(unet, "label_emb"):
        slots.append((UNET_GROUPS["other"], _unet_label("label_emb", None)))
    slots += [(UNET_GROUPS["in"], _unet_label("input_blocks", i)) for i in range(len(unet.input_blocks))]
    slots.append((UNET_GROUPS["mid"], _unet_label("middle_block", None)))
    slots += [(UNET_GROUPS["out"], _unet_label("output_blocks", i)) for i in range(len(unet.output_blocks))]
    return [*slots, (UNET_GROUPS["other"], _unet_label("out", None))]


def text_slots(model: AnyModel) -> list[tuple[str, str]]:
    """(group, label) of every text-encoder layer, first to last, each encoder's other layers after them."""
    config = model.config
    if isinstance(model, StableDiffusion3):
        configs = (config.clip_l, config.clip_g, config.t5)
        layers = [(f"text encoder {i}", getattr(c, "num_hidden_layers", None) or c.num_layers)
                  for i, c in enumerate(configs, 1) if c is not None]
    elif config.text_encoder_2 is None:
        layers = [("text encoder", config.text_encoder.num_hidden_layers)]
    else:
        layers = [("text encoder 1", config.text_encoder.num_hidden_layers),
                  ("text encoder 2", config.text_encoder_2.num_hidden_layers)]
    slots = []
    for name, count in layers:
        slots += [(name, f"{_short(name)} layer {i}") for i in range(count)]
        slots.append((name, f"{_short(name)} other"))
    return slots
