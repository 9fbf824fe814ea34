"""`diffx lora`: inspect a LoRA file — its metadata, the layers it adapts and its update strength per block."""

import json
from pathlib import Path
from typing import Annotated

import typer

from diffx.cli.core import ERR, OUT, print_written
from diffx.cli.options import ForceOpt, GuidanceOpt, ModelChoice, SamplingChoice, option_groups
from diffx.errors import InvalidArgumentError


@option_groups
def lora(
    file: Annotated[str, typer.Argument(
        metavar="FILE[:SCALE]", show_default=False,
        help="The LoRA file (kohya/A1111 or diffusers/PEFT .safetensors, .pt, …), optionally followed by the scale "
             "s its strengths are measured at, -4 to 4 (default 1).")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", show_default=False,
        help="Also draw ‖ΔW‖_F per U-Net (or MMDiT) block and text-encoder layer as a bar chart (.png, .jpg or "
             ".webp).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of tables.")] = False,
    attention: Annotated[Path | None, typer.Option(
        "--attention", show_default=False,
        help="Also draw where --word looks in --prompt's picture with the LoRA at scale 0 and at s, same seed "
             "(loads the model: seconds for the embedded one).")] = None,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The prompt --attention runs.")] = "",
    word: Annotated[str | None, typer.Option(
        help="The word --attention follows. Default: the file's most frequent trigger word in --prompt.",
        show_default=False)] = None,
    sampling: SamplingChoice = SamplingChoice(),
    guidance: GuidanceOpt = None,
    model: ModelChoice = ModelChoice(),
    force: ForceOpt = False,
) -> None:
    """Inspect a LoRA file: what it says about itself and how strongly it changes each block.

    Prints the key format (kohya / diffusers / PEFT / LyCORIS LoHa, LoKr), the base model family, ranks and alphas,
    the network module,
    kohya's training metadata (ss_*: base model version, dim and alpha, output name, comment, steps, epochs,
    resolution) and modelspec.*, the trigger words (the most frequent tags of ss_tag_frequency, with counts),
    how many layers of each kind it adapts (U-Net attention, feed-forward, convolutions; SD3's MMDiT attention and
    MLP per stream; text encoders), and the strength of its update ‖ΔW‖_F = ‖s·(alpha/r)·B A‖_F per block of the
    denoiser, in the order the blocks run (a U-Net's input blocks, middle, output blocks; an MMDiT's joint blocks),
    and per text-encoder layer: the root of the sum of the layers' squares.

    The file is matched against --model (its configuration only: no weights are read); without --model, the
    default model ($DIFFX_MODEL, else the embedded one) is tried first, then SD1.x, SD2.x, SDXL's, the embedded
    model's and SD3-medium's, SD3.5-medium's and SD3.5-large's layouts.
    The rest of the model group is checked as everywhere.

    With --attention and --prompt, the model (--model) is loaded with the LoRA and the prompt traced twice, at
    scale 0 (the base model) and at s: the word's cross-attention map over each picture, on one colour scale.

    Example: diffx lora style.safetensors:0.8 --out style_blocks.png
    """
    from diffx.experiments.lora_attention import chosen_word, lora_attention
    from diffx.files import check_outputs
    from diffx.models.any_model import build_model
    from diffx.models.tokenizer import ClipTokenizer
    from diffx.pipeline.settings import resolve_settings
    from diffx.render import save_png
    from diffx.views.lora import lora_chart, lora_tables
    from diffx.weights.load import read_config
    from diffx.weights.lora import LoraSpec
    from diffx.weights.lora_apply import apply_lora
    from diffx.weights.lora_inspect import LORA_FAMILIES, inspect_lora

    check_outputs([], force, picture=out)
    check_outputs([out], force, picture=attention)
    if bool(prompt or word is not None) != (attention is not None):
        raise InvalidArgumentError("--attention draws --prompt's run, and --prompt and --word are for it: give "
                                   "--attention with --prompt (and optionally --word), or none of them")
    settings = sampling.settings(prompt, guidance)  # checked always: a bad value is refused, used or not
    spec = LoraSpec.parse(file, "FILE")
    checked = model.check()
    config = read_config(checked.source, checked.config)
    skeleton = build_model(config, weights=False)
    resolve_settings(skeleton, settings)  # against the model's configuration: steps within its schedule, …
    if model.model is not None:
        against = skeleton
    else:
        families = [family() for family in LORA_FAMILIES]
        against = [config, *(other for other in families if other.name != config.name)]
    report = inspect_lora(spec.path, against, spec.scale)
    if attention is not None:
        chosen = chosen_word(ClipTokenizer.default(), prompt, word, report.trigger_words)  # before loading
        loaded = model.load()
        applied = apply_lora(loaded, spec.path, spec.scale)
        save_png(lora_attention(loaded, applied, settings, chosen), attention, force)
    if out is not None:
        save_png(lora_chart(report), out, force)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        for written in (attention, out):  # stdout holds the JSON alone
            if written is not None:
                ERR.print(f"wrote {written}", soft_wrap=True)
        return
    for table in lora_tables(report):
        OUT.print(table)
    print_written([attention, out])
