"""What a LoRA file says about itself: its key format, and the training metadata trainers write in the header.

kohya's sd-scripts store their training arguments as `ss_*` strings in the `.safetensors` header (`ss_network_dim`,
`ss_network_alpha`, `ss_base_model_version`, `ss_max_train_steps`, and `ss_tag_frequency`: per dataset folder, how
often each caption tag occurred — the words the LoRA was taught, its trigger words); the ModelSpec standard adds
`modelspec.*` (`modelspec.title`, `modelspec.architecture`, `modelspec.trigger_phrase`). Every value is text:
numbers and JSON are read only where shown, and a malformed value is shown as it is, never an error — the file's
tensors, not its header, decide whether it loads (`diffx.weights.lora`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Collection
from pathlib import Path

from safetensors import safe_open

# The training facts worth a line, in the order shown, with their label.
TRAINING_KEYS = {
    "ss_output_name": "output name",
    "ss_base_model_version": "base model version",
    "ss_sd_model_name": "trained on",
    "ss_network_module": "network module",
    "ss_network_dim": "network dim (rank)",
    "ss_network_alpha": "network alpha",
    "ss_network_args": "network args",
    "ss_training_comment": "training comment",
    "ss_resolution": "resolution",
    "ss_num_train_images": "training images",
    "ss_max_train_steps": "max train steps",
    "ss_steps": "steps trained",
    "ss_epoch": "epoch",
    "ss_num_epochs": "epochs",
    "ss_learning_rate": "learning rate",
    "ss_training_started_at": "started at (Unix time)",
}
# Header values that are not for reading: a picture as base64, per-image data.
SKIPPED_MODELSPEC = ("modelspec.thumbnail",)
VALUE_CHARS = 200  # a header value longer than this is shown elided
TRIGGER_WORDS = 10  # the most frequent tags shown

# How each format names its tensors (`lora_names.PART_PATTERNS`), for the format line.
FORMATS = (
    (r"\.lora_down\.weight$", "kohya / A1111 (lora_down, lora_up, alpha)"),
    (r"\.lora_A\.weight$", "diffusers / PEFT (lora_A, lora_B)"),
    (r"\.lora\.down\.weight$", "diffusers, older (lora.down, lora.up)"),
    (r"\.lora_linear_layer\.down\.weight$", "diffusers, older (lora_linear_layer)"),
    (r"_lora\.down\.weight$", "diffusers attention processors (to_q_lora …)"),
    (r"\.hada_w1_a$", "LyCORIS LoHa (hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b, alpha)"),
    (r"\.lokr_w1(?:_a)?$", "LyCORIS LoKr (lokr_w1, lokr_w2 or their low-rank halves, alpha)"),
)


def _shortened(value: str) -> str:
    return value if len(value) <= VALUE_CHARS else f"{value[:VALUE_CHARS]}… ({len(value)} characters)"


def header_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` strings of a `.safetensors` header; {} for other files (.pt, .bin: no header)."""
    if path.suffix.lower() != ".safetensors":
        return {}
    with safe_open(path, framework="pt", device="cpu") as file:
        return dict(file.metadata() or {})


def key_format(keys: Collection[str]) -> str:
    """The naming format(s) of a LoRA file's keys, in words (several joined by " + ": a mixed file)."""
    found = [name for pattern, name in FORMATS if any(re.search(pattern, key) for key in keys)]
    return " + ".join(found) or "unknown"


def training_facts(metadata: dict[str, str]) -> dict[str, str]:
    """label → value of the kohya training facts present (`TRAINING_KEYS`, in that order), then every
    `modelspec.*` key under its own name (the thumbnail left out); long values elided."""
    facts = {label: _shortened(metadata[key]) for key, label in TRAINING_KEYS.items() if metadata.get(key)}
    facts |= {key: _shortened(value) for key, value in sorted(metadata.items())
              if key.startswith("modelspec.") and key not in SKIPPED_MODELSPEC and value}
    return facts


def trigger_words(metadata: dict[str, str], count: int = TRIGGER_WORDS) -> list[tuple[str, int]]:
    """The `count` most frequent caption tags of `ss_tag_frequency` ({dataset folder: {tag: occurrences}}), summed
    over the folders, most frequent first (ties: alphabetical); [] when there is none or it is not that JSON."""
    try:
        folders = json.loads(metadata.get("ss_tag_frequency") or "{}")
    except json.JSONDecodeError:
        return []
    if not isinstance(folders, dict):
        return []
    totals: Counter[str] = Counter()
    for tags in folders.values():
        if isinstance(tags, dict):
            totals.update({str(tag).strip(): int(n) for tag, n in tags.items()
                           if isinstance(n, int | float) and str(tag).strip()})
    return sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:count]
