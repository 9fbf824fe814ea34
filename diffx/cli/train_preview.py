"""`diffx train-preview`: distil a model folder's VAE decoder into a tiny preview decoder
(`diffx.embedded.tiny_decoder.train_preview`), with a rich progress bar per stage."""

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from diffx.cli.core import ERR, OUT, print_written
from diffx.cli.options import ForceOpt, SeedOpt, parse_list


def train_preview(
    model_dir: Annotated[Path, typer.Argument(
        help="A diffx model folder (e.g. data/shapes-world-2); the decoder is written into it as "
             "tiny_decoder.safetensors, which every command then finds (--preview tiny; the studio's default).")],
    world: Annotated[str, typer.Option(help="The world the model learnt: shapes or shapes2 (its prompts).")
                     ] = "shapes2",
    runs: Annotated[int, typer.Option(help="Generations whose every step's x̂0 it learns from (25 each).")] = 96,
    steps: Annotated[int, typer.Option(help="Training steps (Adam, 16 crops each).")] = 3000,
    widths: Annotated[str | None, typer.Option(
        help="The decoder's channel widths from the latent's resolution up, one per ×2, comma-separated "
             "(default: 64,48,32 for an f8 VAE).", show_default=False)] = None,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
) -> None:
    """Teach a tiny decoder to draw what the model's VAE draws, ~5x cheaper: the live page's x̂0 at every step.

    The model samples world prompts; every step's x̂0 and the VAE's decode of it are what the tiny decoder
    learns from (TAESD's idea, sized to the model). Prints its PSNR against the VAE on held-out runs.

    Example: diffx train-preview data/shapes-world-2 --force
    """
    from diffx.embedded.tiny_decoder import PreviewTraining, train_preview

    config = PreviewTraining(runs=runs, steps=steps, seed=seed,
                             channels=None if widths is None else tuple(parse_list(widths, int, "--widths")))
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=ERR)
    tasks: dict[str, int] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if not tasks:
            bar.start()  # at the first stage, not before: an error found first prints alone
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done)

    try:
        path, notes = train_preview(model_dir, world, config, force, progress)
    finally:
        if tasks:
            bar.stop()
    print_written([path])
    OUT.print(f"tiny decoder vs the VAE on held-out runs: PSNR {notes['fidelity_psnr_db']} dB")
