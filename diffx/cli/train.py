"""`diffx train`: the embedded shapes-world model's training loop (`diffx.embedded.train`).

Parses, calls, prints. Each option is parsed by a `_number`/`_folder` parser that raises a `DiffxError` (one
`error:` line naming the option, exit 2) instead of click's usage box; the numbers each option takes are
`TrainConfig`'s (`diffx.embedded.config.NUMBERS`). `TrainConfig.for_world` builds the config and
`check_train_inputs` checks paths, the model to continue from, the device and the files --out-dir would resume
from before the scene pool is rendered.
"""

import contextlib
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from diffx.cli.core import OUT, print_written
from diffx.cli.options import DeviceOpt
from diffx.errors import DiffxError


class _BadOption(DiffxError):
    """An option value that does not parse (not a `ValueError`, so click's parser wrapper lets it through to
    the one-line `error:` printer instead of drawing its usage box)."""


def _number(option: str, name: str) -> Callable[[object], float]:
    """Parser for `option`, which sets `TrainConfig.<name>`: its text as a number of the kind and range that field
    takes (`NUMBERS`), else an error naming `option`."""

    def parse(value: object) -> float:
        from diffx.embedded.config import NUMBERS  # here, not at the top: `diffx --help` needs no torch

        allowed = NUMBERS[name]
        number = value
        if isinstance(value, bool) or not isinstance(value, allowed.kind):
            with contextlib.suppress(ValueError):
                number = allowed.kind(str(value).strip())
        if number not in allowed:
            raise _BadOption(allowed.refusal(option, str(value)[:40], f"{option} {allowed.example}"))
        return number

    return parse


def _shares(text: str) -> list[float]:
    """--object-counts "0.2,0.4,0.4" -> [0.2, 0.4, 0.4] ("" -> []); `TrainConfig` checks the values."""
    from diffx.cli.options import parse_list

    return parse_list(text, float, "--object-counts") if text.strip() else []


def _folder(option: str, kind: type = Path) -> Callable[[object], object]:
    """Parser for `option`: a non-empty path (`check_train_inputs` checks it as a folder)."""

    def parse(value: object) -> object:
        if not str(value).strip():
            raise _BadOption(f"{option} is empty; give a folder path, e.g. {option} runs/shapes-world")
        return kind(value)

    return parse


def train(
    out_dir: Annotated[Path, typer.Option(parser=_folder("--out-dir"),
                                          help="Training folder: checkpoints, loss curves, sample grids.")] = Path(
        "runs/shapes-world"),
    export: Annotated[Path | None, typer.Option(
        parser=_folder("--export"),
        help="When done, write the model here as a diffx model folder (e.g. data/shapes-world-2).",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Let --export replace a model folder that exists.")
                     ] = False,
    vae_steps: Annotated[int, typer.Option(parser=_number("--vae-steps", "vae_steps"),
                                           help="VAE training steps.")] = 1100,
    vae_batch: Annotated[int, typer.Option(parser=_number("--vae-batch", "vae_batch"),
                                           help="VAE batch size (crops).")] = 32,
    vae_crop: Annotated[int, typer.Option(parser=_number("--vae-crop", "vae_crop"),
                                          help="Side of the VAE's training crops (a multiple of its factor).")] = 32,
    unet_steps: Annotated[int, typer.Option(parser=_number("--unet-steps", "unet_steps"),
                                            help="Text encoder + U-Net training steps.")] = 5000,
    batch: Annotated[int, typer.Option(parser=_number("--batch", "unet_batch"), help="U-Net batch size.")] = 64,
    lr: Annotated[float, typer.Option(parser=_number("--lr", "unet_lr"),
                                      help="U-Net peak learning rate (AdamW, warm-up then cosine).")] = 5e-4,
    pool_size: Annotated[int, typer.Option(
        parser=_number("--pool-size", "pool_size"),
        help="Scenes rendered once and reused (captions re-drawn), at most: a run that draws fewer pictures (steps x "
             "batch of either stage) renders, encodes and keeps only those.")] = 30000,
    seed: Annotated[int, typer.Option(parser=_number("--seed", "seed"), help="Random seed.")] = 0,
    device: DeviceOpt = "auto",
    attention_loss: Annotated[float, typer.Option(
        parser=_number("--attention-loss", "attention_loss"),
        help="Weight of the attention-grounding loss (object words attend inside their objects: a U-Net's "
             "cross-attention, an MMDiT's image→text quadrant); 0 = off.")] = 0.0,
    checkpoint_every: Annotated[int, typer.Option(parser=_number("--checkpoint-every", "checkpoint_every"),
                                                  help="Steps between checkpoints, loss curves and sample grids.")
                                ] = 100,
    init_from: Annotated[str | None, typer.Option(
        parser=_folder("--init-from", str),
        help="Continue from a model folder (e.g. data/shapes-world-2): its VAE is kept, the U-Net trains on.",
        show_default=False)] = None,
    prediction_type: Annotated[str, typer.Option(
        help="What the U-Net learns to predict: epsilon (the noise) or v_prediction (v = √ᾱ ε − √(1−ᾱ) x0).")
                               ] = "epsilon",
    zero_snr: Annotated[bool, typer.Option(
        "--zero-snr", help="Rescale β to zero terminal SNR (Lin et al. 2023; pair it with v_prediction); the model "
                     "then samples with trailing timestep spacing, from t = T − 1.")] = False,
    world: Annotated[str, typer.Option(
        help="What to learn from: shapes (the v1 world, 64 px) or shapes2 (the v2 world: 7 shapes, 10 colours, "
             "fills, patterned backgrounds, 1-3 objects, 128 px, loose captions).")] = "shapes",
    exact_captions: Annotated[bool, typer.Option(
        "--exact-captions", help="shapes2: train on exact captions instead of the caption-noise model.")] = False,
    object_counts: Annotated[str, typer.Option(
        help="Shares of the U-Net's training draws showing 1, 2, 3... objects, comma-separated (e.g. 0.2,0.4,0.4: "
             "more steps on the scenes still wrong); empty: as many as the pool holds.")] = "",
    family: Annotated[str, typer.Option(
        help="The model to train: stable-diffusion (a U-Net on a diffusion schedule) or sd3 (a small MMDiT trained "
             "with rectified flow, SD3's architecture; pair it with --init-from data/shapes-world-2 to reuse that "
             "model's VAE and text encoder).")] = "stable-diffusion",
    previews: Annotated[bool, typer.Option(
        "--previews/--no-previews", help="Draw a grid of sample pictures at every checkpoint (minutes on a CPU).")
                        ] = True,
) -> None:
    """Train an embedded model (DDPM Algorithm 1): the VAE, then the text encoder and the U-Net (--family sd3:
    an MMDiT, on rectified flow).

    Resumes from whatever --out-dir holds; writes loss curves and sample grids there at every
    checkpoint. With --export, the EMA weights become a model folder that --model accepts (--force to
    replace one). Every option and path, and every file --out-dir would resume from, is checked before
    any work. Launched by torchrun (e.g.
    torchrun --nproc_per_node 2 -m diffx train ...), it trains data-parallel: one process per GPU (NCCL) or
    per CPU group (gloo), --batch and --vae-batch split evenly among them.

    Example: diffx train --vae-steps 200 --unet-steps 500 --out-dir runs/quick --export runs/quick/model
    """
    from diffx.embedded.config import TrainConfig
    from diffx.embedded.distributed import from_environment
    from diffx.embedded.export import export_model
    from diffx.embedded.preflight import check_train_inputs
    from diffx.embedded.previews import preview_grid
    from diffx.embedded.train import train as run_training
    from diffx.embedded.worlds import get_world

    config = TrainConfig.for_world(world, prediction_type, zero_snr, exact_captions, family, out_dir=str(out_dir),
                                   vae_steps=vae_steps, vae_batch=vae_batch, vae_crop=vae_crop,
                                   unet_steps=unet_steps, unet_batch=batch, unet_lr=lr, pool_size=pool_size,
                                   seed=seed, device=device, checkpoint_every=checkpoint_every,
                                   attention_loss=attention_loss, init_from=init_from,
                                   object_counts=_shares(object_counts))
    check_train_inputs(config, export, force)  # before the pool is rendered or anything is written
    preview = functools.partial(preview_grid, prompts=get_world(world).preview_prompts) if previews else None
    _, summary = run_training(config, preview)
    if not from_environment().main:
        return  # under torchrun, rank 0 alone reports and exports
    OUT.print(summary)
    if export is not None:
        export_model(out_dir, export)
        print_written([export])
