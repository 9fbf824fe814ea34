"""`diffx finetune`: teach a model (by default the embedded one) a new word by LoRA or textual inversion
(`diffx.embedded.finetune.finetune`), with a rich progress bar; the file, its loss curve and before/after grid."""

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from diffx.cli.core import ERR, OUT, print_written
from diffx.cli.options import ForceOpt, ModelChoice, SeedOpt, option_groups


@option_groups
def finetune(
    concept: Annotated[str, typer.Option(
        help="What to teach: a world object by colour, fill and shape (world:pink dotted hexagon; the judge can "
             "check it) or a folder of your PNG/JPEG pictures (resized to the model's side).",
        show_default=False)],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="The .safetensors file to write: a kohya LoRA, or an A1111 embedding "
                            "(--embedding FILE:TOKEN loads it).", show_default=False)],
    token: Annotated[str, typer.Option(help="The new word, e.g. <zig>: one word without spaces.")] = "<zig>",
    method: Annotated[str, typer.Option(help="lora (rank-r adapters on the attention projections) or "
                                             "textual-inversion (new token vectors only).")] = "lora",
    rank: Annotated[int, typer.Option(help="The LoRA's rank r, 1-64.")] = 4,
    steps: Annotated[int, typer.Option(help="Training steps (8 pictures each).")] = 400,
    lr: Annotated[float | None, typer.Option(
        help="Learning rate. Default: 2e-3 (LoRA), 2e-2 (textual inversion).", show_default=False)] = None,
    judge: Annotated[int, typer.Option(
        help="A world concept: judge this many held-out prompts using the token, before and after (0: none).")
    ] = 50,
    seed: SeedOpt = 0,
    model: ModelChoice = ModelChoice(),
    force: ForceOpt = False,
) -> None:
    """Teach the model a new word: LoRA (Hu et al. 2021) or textual inversion (Gal et al. 2022), on a CPU.

    Trains on the model's own diffusion loss (ε or v), every base weight frozen, captions naming the concept by
    the token ("a large <zig> above a blue square on a white background"). Writes --out, <out>_loss.png (the loss
    per step), <out>_before_after.png (prompts using the token, the base model beside the fine-tuned one, same
    seeds) and <out>_attention.png (the token's cross-attention map, LoRA at scale 0 and 1, or the word untaught
    and taught). A world concept is then judged: the share of --judge held-out prompts whose picture the world
    judge reads as the concept (shape, colour and fill right), before and after.

    Example: diffx finetune --concept "world:pink dotted hexagon" --token "<zig>" --out zig.safetensors
    """
    from diffx.embedded.concept import WorldConcept
    from diffx.embedded.finetune import FinetuneConfig
    from diffx.embedded.finetune import finetune as run
    from diffx.embedded.finetune_files import companion_files, concept_rate, save_result, write_pictures
    from diffx.errors import InvalidArgumentError
    from diffx.files import check_outputs

    if out.suffix.lower() != ".safetensors":
        raise InvalidArgumentError(f"--out {out.name}: write a .safetensors file (kohya LoRA or A1111 embedding)")
    if not 0 <= judge <= 1000:
        raise InvalidArgumentError(f"--judge {judge}: must be between 0 (no judging) and 1000 prompts")
    config = FinetuneConfig(concept, token, method, rank, steps, lr, seed=seed)
    config.check()
    check_outputs([out, *companion_files(out).values()], force)
    loaded = model.load()
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=ERR)
    task = bar.add_task(f"{method} {token}", total=steps)
    with bar:
        result = run(loaded, config, lambda _, done, total: bar.update(task, completed=done))
    written = [save_result(result, loaded, out, force)]
    with ERR.status("drawing the before/after pictures"):
        written += write_pictures(loaded, result, out, force)
    print_written(written)
    OUT.print(f"trained {steps} steps in {result.seconds / 60:.1f} min; loss {result.losses[0]:.4f} -> "
              f"{sum(result.losses[-20:]) / len(result.losses[-20:]):.4f} (mean of the last 20)")
    if isinstance(result.concept, WorldConcept) and judge:
        with ERR.status(f"judging {judge} held-out prompts"):
            after = concept_rate(loaded, result.concept, token, judge)
            with result.base(loaded):
                before = concept_rate(loaded, result.concept, token, judge)
        OUT.print(f"{token} drawn as a {result.concept.words} (judged, {judge} held-out prompts): "
                  f"{before:.0%} before, {after:.0%} after")
