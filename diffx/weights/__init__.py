"""Checkpoints in every form a user brings, read safely and mapped onto diffx's modules.

- safe_pickle.py: a pickle reader that never runs code (.ckpt); discovery.py: which models are on disk
- architecture.py: a single file's family and configuration from its tensors' names and shapes
- diffusers_layout.py: a diffusers folder's configs and tensor names in diffx's terms
- load.py: `load_model` / `save_model` (EMA or main weights, fp16, folders and single files)
- lora.py, lora_names.py, lora_apply.py: LoRA files read, matched to the model's layers, checked and applied on the
  fly (`load_model_with_loras`, `apply_lora`)
- lora_inspect.py, lora_metadata.py: a LoRA file inspected — its metadata, trigger words, the layers it adapts and
  its update strength ‖ΔW‖_F per U-Net block and text-encoder layer (`inspect_lora`)
- embedding.py: textual inversion embeddings read, checked and taught to the tokenizer and text encoder
  (`load_embedding`)
"""

from diffx.weights.architecture import recognise
from diffx.weights.discovery import ModelSource, find_models, resolve_model_source
from diffx.weights.embedding import EmbeddingSpec, load_embedding
from diffx.weights.load import load_model, read_state_dict, save_model
from diffx.weights.lora import LoraSpec
from diffx.weights.lora_apply import AppliedLora, apply_lora, load_model_with_loras
from diffx.weights.lora_inspect import LoraReport, inspect_lora

__all__ = [
    "AppliedLora",
    "EmbeddingSpec",
    "LoraReport",
    "LoraSpec",
    "ModelSource",
    "apply_lora",
    "find_models",
    "inspect_lora",
    "load_embedding",
    "load_model",
    "load_model_with_loras",
    "read_state_dict",
    "recognise",
    "resolve_model_source",
    "save_model",
]
