"""What a `finetune` run leaves: the LoRA in kohya's format or the embedding in A1111's, its loss curve, the
before/after pictures, and the judge's verdict on the concept.

- **kohya / sd-scripts LoRA** `.safetensors`: per adapted layer `<kohya name>.lora_down.weight` (A, (r, in)),
  `.lora_up.weight` (B, (out, r)) and `.alpha` (a scalar; the update is (alpha / r) · B A, Hu et al. 2021 eq. 3),
  the names of `weights.lora_names.kohya_names` (`lora_unet_` + diffusers' path, `lora_te_` + transformers'), and
  sd-scripts' `ss_*` header (network module, dim, alpha, steps, learning rate, base model, `ss_tag_frequency` with
  the token), read by diffx's `--lora`, `diffx lora`, diffusers' `load_lora_weights` and A1111;
- **A1111 textual inversion** `.safetensors`: `emb_params` (N, width) (Gal et al. 2022), read by `--embedding`
  (the word: `<file stem>`, or `FILE:TOKEN`) and by A1111.

Beside the file: the loss per step, a before/after grid (prompts using the token, the base model beside the
fine-tuned one, same seeds) and the token's cross-attention map before and after.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from diffx.embedded.concept import WorldConcept, drawn_right, held_out_prompts
from diffx.embedded.finetune import DEFAULT_LR, FinetuneResult
from diffx.embedded.world_quality import generate_pictures
from diffx.experiments.lora_attention import attention_rows, word_attention
from diffx.files import companion_path, write_atomic
from diffx.models.stable_diffusion import StableDiffusion
from diffx.pipeline.settings import GenerationSettings
from diffx.render.grid import make_grid
from diffx.render.io import save_png
from diffx.render.plots import plot_loss_curve
from diffx.weights.lora_names import kohya_names

PICTURE_PROMPTS = 4  # before/after grid: this many held-out prompts (world concept), two seeds each


def lora_tensors(result: FinetuneResult, model: StableDiffusion) -> dict:
    """The kohya tensors of the run's LoRA: down, up and alpha (= r · factor) per layer."""
    names = kohya_names(model)
    tensors = {}
    for layer in result.lora.layers:
        name = names[layer.target]
        rank = layer.down.shape[0]
        tensors[f"{name}.lora_down.weight"] = layer.down.detach().float().contiguous()
        tensors[f"{name}.lora_up.weight"] = layer.up.detach().float().contiguous()
        tensors[f"{name}.alpha"] = layer.down.new_tensor(rank * layer.factor).float()
    return tensors


def lora_metadata(result: FinetuneResult, model: StableDiffusion) -> dict[str, str]:
    """sd-scripts' `ss_*` header: what `diffx lora` and other inspectors read (every value a string)."""
    config = result.config
    rank = result.lora.layers[0].down.shape[0]
    concept = result.concept.words if isinstance(result.concept, WorldConcept) else "pictures"
    return {
        "ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(float(rank)),
        "ss_sd_model_name": model.config.name, "ss_base_model_version": f"diffx_{model.config.name}",
        "ss_max_train_steps": str(config.steps), "ss_steps": str(config.steps),
        "ss_learning_rate": str(config.lr or DEFAULT_LR[config.method]), "ss_num_train_images": str(config.pictures),
        "ss_resolution": f"({model.config.image_size}, {model.config.image_size})",
        "ss_training_comment": f"diffx finetune: {config.token} = {concept}",
        "ss_tag_frequency": json.dumps({concept: {config.token: config.pictures}}),
        "ss_output_name": config.token.strip("<>") or config.token,
    }


def save_result(result: FinetuneResult, model: StableDiffusion, out: str | Path, force: bool = False) -> Path:
    """Write the LoRA (kohya) or the embedding (A1111 `emb_params`) to `out`, atomically."""
    if result.lora is not None:
        tensors, metadata = lora_tensors(result, model), lora_metadata(result, model)
    else:
        tensors, metadata = {"emb_params": result.embedding.vectors[0].contiguous()}, {}
    return write_atomic(out, lambda path: save_file(tensors, str(path), metadata=metadata), force)


def companion_files(out: str | Path) -> dict[str, Path]:
    """The pictures written beside `out`: `<out>_loss.png`, `<out>_before_after.png`, `<out>_attention.png`."""
    return {name: companion_path(out, name) for name in ("loss", "before_after", "attention")}


def picture_prompts(result: FinetuneResult) -> list[str]:
    """Prompts using the token for the before/after grid: held-out prompts of a world concept, else "a <tok>"."""
    token = result.config.token
    if isinstance(result.concept, WorldConcept):
        return [prompt for prompt, _ in held_out_prompts(result.concept, token, PICTURE_PROMPTS, seed=1)]
    return [f"a {token}", f"a {token} on a white background"]


def before_after(model: StableDiffusion, result: FinetuneResult, prompts: Sequence[str], seeds: Sequence[int],
                 steps: int | None = None):
    """A labelled grid: a row per prompt and seed, the base model's picture beside the fine-tuned one's."""
    runs = [(prompt, seed) for prompt in prompts for seed in seeds]
    with result.base(model):
        before = generate_pictures(model, [p for p, _ in runs], [s for _, s in runs], steps=steps)
    after = generate_pictures(model, [p for p, _ in runs], [s for _, s in runs], steps=steps)
    method = "LoRA" if result.lora is not None else "textual inversion"
    return make_grid([[b, a] for b, a in zip(before, after, strict=True)],
                     row_labels=[f"{prompt} · seed {seed}" for prompt, seed in runs],
                     col_labels=["base model", f"fine-tuned ({method})"],
                     title=f"{result.config.token} before and after fine-tuning")


def write_pictures(model: StableDiffusion, result: FinetuneResult, out: str | Path, force: bool = False,
                   steps: int | None = None) -> list[Path]:
    """The loss curve and the before/after grid beside `out` (`companion_files`)."""
    files = companion_files(out)
    curve = plot_loss_curve(list(range(1, len(result.losses) + 1)), result.losses,
                            title=f"{result.config.method} fine-tuning loss ({result.config.token})")
    prompts = picture_prompts(result)
    grid = before_after(model, result, prompts, (0, 1), steps)
    attention = attention_grid(model, result, prompts[0], 0, steps)
    return [save_png(curve, files["loss"], force), save_png(grid, files["before_after"], force),
            save_png(attention, files["attention"], force)]


def attention_grid(model: StableDiffusion, result: FinetuneResult, prompt: str, seed: int, steps: int | None = None):
    """The token's cross-attention map before and after (LoRA at scale 0 and 1; the base tokenizer and the taught
    one): a row each, the picture beside the map over it, labelled with the map's mean (the share of the
    picture's attention the token draws; `experiments.lora_attention`)."""
    token, rows = result.config.token, []
    settings = GenerationSettings(prompt=prompt, seed=seed, steps=steps)
    with result.base(model):
        rows.append(word_attention(model, settings, token))
    rows.append(word_attention(model, settings, token))
    before = "LoRA scale 0" if result.lora is not None else "base tokenizer"
    after = "LoRA scale 1" if result.lora is not None else f"{token} taught"
    return attention_rows(rows, [before, after], token, f"{prompt} · seed {seed}")


def concept_rate(model: StableDiffusion, concept: WorldConcept, token: str, n: int = 50, seed: int = 0,
                 steps: int | None = None) -> float:
    """The share of `n` held-out prompts using the token whose picture (prompt i at seed `seed` + i, the model's
    sampler and guidance) the world judge reads as the concept (`concept.drawn_right`)."""
    pairs = held_out_prompts(concept, token, n, seed)
    pictures = generate_pictures(model, [prompt for prompt, _ in pairs], [seed + i for i in range(n)], steps=steps)
    return float(np.mean([drawn_right(words, picture) for (_, words), picture in zip(pairs, pictures, strict=True)]))
