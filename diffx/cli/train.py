"""`diffx train`: the embedded shapes-world model's training loop (`diffx.embedded.train`)."""

from pathlib import Path
from typing import Annotated

import typer

from diffx.cli.core import OUT, print_written
from diffx.cli.options import DeviceOpt, SeedOpt
from diffx.errors import InvalidArgumentError


def train(
    out_dir: Annotated[Path, typer.Option(help="Training folder: checkpoints, loss curves, sample grids.")] = Path(
        "runs/shapes-world"),
    export: Annotated[Path | None, typer.Option(
        help="When done, write the model here as a diffx model folder (e.g. data/shapes-world).",
        show_default=False)] = None,
    vae_steps: Annotated[int, typer.Option(help="VAE training steps.")] = 1100,
    unet_steps: Annotated[int, typer.Option(help="Text encoder + U-Net training steps.")] = 5000,
    batch: Annotated[int, typer.Option(help="U-Net batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="U-Net peak learning rate (AdamW, warm-up then cosine).")] = 5e-4,
    pool_size: Annotated[int, typer.Option(help="Scenes rendered once and reused (captions re-drawn).")] = 30000,
    seed: SeedOpt = 0,
    threads: Annotated[int, typer.Option(help="CPU threads (0 = torch's default).")] = 0,
    device: DeviceOpt = "auto",
    attention_loss: Annotated[float, typer.Option(
        help="Weight of the attention-grounding loss (object words attend inside their objects); 0 = off.")] = 0.0,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints, loss curves and sample grids.")
                                ] = 100,
    init_from: Annotated[str | None, typer.Option(
        help="Continue from a model folder (e.g. data/shapes-world): its VAE is kept, the U-Net trains on.",
        show_default=False)] = None,
) -> None:
    """Train the shapes-world model (DDPM Algorithm 1): the VAE, then the text encoder and the U-Net.

    Resumes from whatever --out-dir holds; writes loss curves and sample grids there at every
    checkpoint. With --export, the EMA weights become a model folder that --model accepts.

    Example: diffx train --vae-steps 200 --unet-steps 500 --out-dir runs/quick --export runs/quick/model
    """
    from diffx.devices import resolve_device
    from diffx.embedded.config import TrainConfig
    from diffx.embedded.export import export_model
    from diffx.embedded.train import preview_grid
    from diffx.embedded.train import train as run_training

    if min(vae_steps, unet_steps, batch, pool_size, checkpoint_every) < 1:
        raise InvalidArgumentError(
            "--vae-steps, --unet-steps, --batch, --pool-size and --checkpoint-every must be at least 1")
    if lr <= 0 or attention_loss < 0:
        raise InvalidArgumentError(f"--lr must be positive and --attention-loss not negative, got {lr} and "
                                   f"{attention_loss}")
    resolve_device(device)  # an unavailable device fails here, before the pool is rendered
    config = TrainConfig(out_dir=str(out_dir), vae_steps=vae_steps, unet_steps=unet_steps, unet_batch=batch,
                         unet_lr=lr, pool_size=pool_size, seed=seed, threads=threads, device=device,
                         checkpoint_every=checkpoint_every, attention_loss=attention_loss, init_from=init_from)
    _, summary = run_training(config, preview_grid)
    OUT.print(summary)
    if export is not None:
        export_model(out_dir, export)
        print_written([export])
