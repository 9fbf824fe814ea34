"""A random-weight diffusers StableDiffusion3Pipeline for tests, saved as a diffusers folder diffx loads.

Real widths, reduced depth (the whole SD3-medium is 2 B + 4.7 B parameters): the MMDiT 1536 wide (24 heads of 64)
with 2 blocks, CLIP-L 768 and bigG 1280 wide with 2 layers each, a T5 encoder at T5-XXL's 4096 width (what the
MMDiT's context is) with 1 layer, 64 heads of 64, but a 1024-wide feed-forward and a 512-token table (the real
T5-XXL sizes are checked in tests/models/test_t5.py), SD3's VAE at its real widths (128-256-512-512, 16 channels).
The tokenizers: CLIP's real vocabulary, and a small T5-style unigram tokenizer.json
(tests/models/t5_tokenizer_files.py: no real one can be downloaded here).
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

from tests.models.t5_tokenizer_files import train_model, write_tokenizer_json
from tests.models.tokenizer_files import write_vocab_folder

# The sizes that change between the real-width pipeline and the tiny one (tests of commands, not of numbers).
REAL = {"sample": 128, "heads": 24, "head_dim": 64, "context": 4096, "clip": (768, 1280), "clip_heads": (12, 20),
        "vae": (128, 256, 512, 512), "groups": 32, "t5": {"d_model": 4096, "d_kv": 64, "d_ff": 1024, "num_heads": 64}}
# SD3's conventions (64-wide heads, the real VAE) at a few heads: what a single file's recognition assumes holds,
# so file-format tests can be cheap (the real widths' numbers are checked with REAL).
NARROW = {"sample": 128, "heads": 2, "head_dim": 64, "context": 256, "clip": (64, 128), "clip_heads": (1, 2),
          "vae": REAL["vae"], "groups": 32, "t5": {"d_model": 256, "d_kv": 64, "d_ff": 256, "num_heads": 4}}
TINY = {"sample": 8, "heads": 2, "head_dim": 16, "context": 64, "clip": (32, 48), "clip_heads": (2, 2),
        "vae": (32, 32, 32, 32),
        "groups": 8, "t5": {"d_model": 64, "d_kv": 16, "d_ff": 64, "num_heads": 4}}


def clip(width: int, heads: int, act: str) -> transformers.CLIPTextModelWithProjection:
    return transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2, num_attention_heads=heads,
        hidden_act=act, projection_dim=width, eos_token_id=49407))


def sd3_pipeline(folder: Path, t5: bool = True, qk_norm: str | None = None,
                 dual_attention_layers: tuple[int, ...] = (), sizes: dict = REAL) -> StableDiffusion3Pipeline:
    """Build (seed 0) and save a random SD3 pipeline in `folder`; return it. `sizes`: REAL (the module
    docstring) or TINY (a few dozen channels, an f8 VAE, 64-pixel pictures by default: a CLI run takes seconds)."""
    torch.manual_seed(0)
    width = sizes["heads"] * sizes["head_dim"]
    transformer = SD3Transformer2DModel(
        sample_size=sizes["sample"], patch_size=2, in_channels=16, num_layers=2, attention_head_dim=sizes["head_dim"],
        num_attention_heads=sizes["heads"], joint_attention_dim=sizes["context"], caption_projection_dim=width,
        pooled_projection_dim=sum(sizes["clip"]), out_channels=16, pos_embed_max_size=192, qk_norm=qk_norm,
        dual_attention_layers=dual_attention_layers)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(sizes["vae"]),
                        up_block_types=("UpDecoderBlock2D",) * len(sizes["vae"]), block_out_channels=sizes["vae"],
                        layers_per_block=2, latent_channels=16, norm_num_groups=sizes["groups"],
                        scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
    # diffusers' random init leaves adaLN-Zero's modulation and the output projection at zero (a network
    # that predicts v = 0 would hide a wrong path): give every weight a random value.
    with torch.no_grad():
        for parameter in transformer.parameters():
            if parameter.abs().max() == 0:
                parameter.normal_(0, 0.02 if parameter.ndim > 1 else 0.1)
    t5_model = None
    if t5:
        t5_model = transformers.T5EncoderModel(transformers.T5Config(
            vocab_size=512, num_layers=1, feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
            **sizes["t5"]))
    vocab = write_vocab_folder(folder / "_vocab")
    files = (str(vocab / "vocab.json"), str(vocab / "merges.txt"))
    tokenizer = transformers.CLIPTokenizer(*files, model_max_length=77)
    tokenizer_2 = transformers.CLIPTokenizer(*files, pad_token="!", model_max_length=77)
    tokenizer_3 = None
    if t5:
        (folder / "_t5").mkdir(parents=True)
        spec = write_tokenizer_json(folder / "_t5" / "tokenizer.json", train_model())
        tokenizer_3 = transformers.T5TokenizerFast(tokenizer_file=str(spec), model_max_length=512)
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=clip(sizes["clip"][0], sizes["clip_heads"][0], "quick_gelu"), tokenizer=tokenizer,
        text_encoder_2=clip(sizes["clip"][1], sizes["clip_heads"][1], "gelu"), tokenizer_2=tokenizer_2,
        text_encoder_3=t5_model, tokenizer_3=tokenizer_3)
    pipeline.save_pretrained(folder)
    for component in (transformer, vae, pipeline.text_encoder, pipeline.text_encoder_2, t5_model):
        if component is not None:
            component.eval()  # built, not loaded: T5's dropout (0.1) would be on
    return pipeline
