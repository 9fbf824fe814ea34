"""The `attention` command: the attention explorer (`diffx.views.attention`, and `diffx.views.joint_attention` for
SD3) for a new run or a saved trace."""

from pathlib import Path
from typing import Annotated

import typer

from diffx.cli.core import print_written
from diffx.cli.generate import run_generation
from diffx.cli.options import (
    ForceOpt,
    GuidanceOpt,
    HtmlOpt,
    InitImageChoice,
    ModelChoice,
    OutOpt,
    PreviewOpt,
    PromptOpt,
    SamplingChoice,
    check_view_options,
    option_groups,
)
from diffx.errors import InvalidArgumentError
from diffx.files import check_outputs, companion_path


def parse_pixel(text: str | None) -> tuple[int, int] | None:
    """--pixel "x,y" → (x, y) in the picture's pixels; None → None."""
    if text is None:
        return None
    try:
        x, y = (int(part) for part in text.split(","))
    except ValueError:
        raise InvalidArgumentError(f"--pixel {text!r} is not a pixel; write x,y like 32,20") from None
    return x, y


@option_groups
def attention(
    prompt: PromptOpt = "",
    trace_file: Annotated[Path | None, typer.Option(
        "--trace", help="Explore a trace saved by `diffx attention --save-trace` instead of generating.",
        show_default=False)] = None,
    out: OutOpt = None,
    layer: Annotated[str | None, typer.Option(
        help="A layer for <out>_steps.png and <out>_heads.png: its label (down.0, mid, up.3) or index. "
             "Default: the aggregate over steps; the first finest layer for heads.", show_default=False)] = None,
    heads: Annotated[bool, typer.Option("--heads", help="Also record every head's maps (8× the per-layer size).")
                     ] = False,
    step: Annotated[int | None, typer.Option(
        help="The step (1 = first) of the layer and head grids. Default: the mean over all steps.",
        show_default=False)] = None,
    pixel: Annotated[str | None, typer.Option(
        help="x,y in the picture: whose self-attention row to show. Default: the centre.", show_default=False)
    ] = None,
    save_trace: Annotated[Path | None, typer.Option(
        help="Also save the trace, with its per-layer maps, for --trace.", show_default=False)] = None,
    html: HtmlOpt = None,
    sampling: SamplingChoice = SamplingChoice(),
    guidance: GuidanceOpt = None,
    model: ModelChoice = ModelChoice(),
    preview: PreviewOpt = "auto",
    force: ForceOpt = False,
) -> None:
    """Explore cross- and self-attention: per layer, per head, per step, beside DAAM's aggregate.

    Writes the layer grid (--out, default attention.png: rows = the aggregate and every U-Net layer at its
    own resolution, columns = start token, words, end token, padding, each with its share of the
    attention), <out>_steps.png (--layer over the steps), <out>_heads.png (with --heads: that layer's
    heads) and <out>_self.png (where --pixel looks, and the first principal components of self-attention).
    For an SD3 model, whose attention is joint, also <out>_joint.png (the share of image→image, image→text,
    text→image and text→text attention per block and step) and <out>_joint_words.png (each word both ways).
    A step's maps lie over that step's x̂0 (--preview), the mean over all steps over the final image.

    Example: diffx attention --prompt "a red circle and a blue square" --heads --layer up.4 --out layers.png
    """
    from diffx.models.attention import attention_kinds
    from diffx.pipeline.settings import resolve_settings
    from diffx.trace.record import load_trace
    from diffx.trace.record import save_trace as write_trace
    from diffx.views.attention import check_new_run, explorer_options, write_attention_views
    from diffx.views.joint_attention import write_joint_views

    check_view_options(preview)
    if trace_file is not None and prompt:
        raise InvalidArgumentError("--trace explores a saved run, --prompt makes a new one; give one of them")
    if trace_file is not None and heads:
        raise InvalidArgumentError("--heads records per-head maps in a new run; a saved --trace has them or not")
    if step is not None and step < 1:
        raise InvalidArgumentError(f"--step {step}: steps count from 1 (the first step)")
    where = parse_pixel(pixel)
    if where is not None and min(where) < 0:
        raise InvalidArgumentError(f"--pixel {pixel}: x and y count from 0 at the top left")
    out = out or Path("attention.png")
    companions = [companion_path(out, name) for name in ("steps", "heads", "self")]
    check_outputs([*companions, save_trace, html], force, picture=out)
    joint = companion_path(out, "joint")  # an SD3 model's quadrant shares, and <out>_joint_words.png
    joint_outputs = [joint, companion_path(joint, "words")]
    if trace_file is not None:
        model.check_given()  # before the trace is read: a model is loaded only for some traces
        recorded = load_trace(trace_file)
        has_joint = "joint_attention" in recorded.tensors
        if has_joint:
            check_outputs(joint_outputs, force)
        loaded = model.load_to_decode(preview, [recorded])
    else:
        settings = sampling.settings(prompt, guidance)
        loaded = model.load()
        has_joint = "joint" in attention_kinds(loaded.modules().values())
        if has_joint:
            check_outputs(joint_outputs, force)
        check_new_run(loaded, resolve_settings(loaded, settings), layer, where, step)
        generation = run_generation(loaded, settings, InitImageChoice(), explorer_options(heads), preview)
        recorded = generation.traces[0]
    written = write_attention_views(recorded, out, layer, step, where, force, preview, loaded)
    if has_joint:
        written += write_joint_views(recorded, joint, step, force, preview, loaded)
    if save_trace is not None:
        written.append(write_trace(recorded, save_trace, force))
    if html is not None:
        from diffx.report.page import write_report

        written.append(write_report(recorded, html, force, model=loaded, preview=preview))
    print_written(written)
