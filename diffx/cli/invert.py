"""`diffx invert`: find a picture's x_T by DDIM inversion and show the round trip (`diffx.inversion`,
`diffx.inversion_views`). Every option and path is checked before the model runs."""

from pathlib import Path
from typing import Annotated

import typer

from diffx.cli.core import OUT, print_written
from diffx.cli.options import (
    ForceOpt,
    FrameMsOpt,
    GifOpt,
    GuidanceRescaleOpt,
    ModelChoice,
    NegativeOpt,
    OutOpt,
    PreviewOpt,
    PromptOpt,
    SeedOpt,
    SizeOpt,
    SpacingOpt,
    check_frame_ms,
    check_view_options,
    option_groups,
    parse_list,
    parse_size,
)
from diffx.cli.progress import StepProgress
from diffx.errors import InvalidArgumentError
from diffx.files import check_outputs


@option_groups
def invert(
    image: Annotated[Path, typer.Argument(help="The picture to invert (resized to --size).", show_default=False)],
    prompt: PromptOpt = "",
    out: OutOpt = None,
    gif: GifOpt = None,
    save_latent: Annotated[Path | None, typer.Option(
        help="Also save x_T, z_0 and the settings as a .pt file (read back, checked, by "
             "diffx.pipeline.inversion.load_inversion).", show_default=False)] = None,
    steps: Annotated[int, typer.Option(help="DDIM steps, for the inversion and the way back.")] = 50,
    guidance: Annotated[float, typer.Option(
        help="Guidance weight w for both halves (1 = none: where inversion works).")] = 1.0,
    guidance_rescale: GuidanceRescaleOpt = 0.0,
    sweep_steps: Annotated[str, typer.Option(help="Step counts of the PSNR chart, comma-separated.")] = "10,25,50",
    sweep_guidance: Annotated[str, typer.Option(
        help="Guidance weights of the PSNR chart (one line each), comma-separated.")] = "1,3,7.5",
    sweep: Annotated[bool, typer.Option("--sweep/--no-sweep", help="Draw the PSNR chart (the slow part).")] = True,
    negative_prompt: NegativeOpt = None,
    spacing: SpacingOpt = None,
    seed: SeedOpt = 0,
    size: SizeOpt = None,
    model: ModelChoice = ModelChoice(),
    preview: PreviewOpt = "auto",
    frame_ms: FrameMsOpt = 100,
    force: ForceOpt = False,
) -> None:
    """Find the x_T from which DDIM draws IMAGE (DDIM inversion), then sample back and measure the error.

    Writes --out (default invert.png): the input, the VAE decode of its latent z_0, x_T (a latent: channels
    1–3 as RGB), the reconstruction DDIM draws from x_T with the same prompt, steps and guidance, and the
    error map; with the sweep, the reconstruction at every --sweep-guidance and the PSNR against
    --sweep-steps per w, where the failure of inversion under strong guidance shows. --gif animates the
    climb from z_0 to x_T. --seed draws the VAE posterior sample z_0.

    Example: diffx invert picture.png --prompt "a red circle left of a blue square" --out inv.png --gif inv.gif
    """
    from diffx.experiments.round_trip import inversion_frames, round_trip_figure, traced_round_trip
    from diffx.images import load_image, load_init_image
    from diffx.pipeline.inversion import check_sweep, inversion_settings, round_trip_sweep, save_inversion
    from diffx.pipeline.settings import check_side
    from diffx.render import save_animation, save_png

    check_view_options(preview)
    check_frame_ms(frame_ms)
    width, height = parse_size(size)
    sweep_at = (parse_list(sweep_steps, int, "--sweep-steps"), parse_list(sweep_guidance, float, "--sweep-guidance"))
    out = out or Path("invert.png")
    if save_latent is not None and save_latent.suffix != ".pt":
        raise InvalidArgumentError(f"--save-latent {save_latent} must name a .pt file, e.g. x_T.pt")
    check_outputs([save_latent], force, gif, picture=out)
    load_image(image)  # a missing or unreadable picture fails before the model loads
    loaded = model.load()
    side = loaded.config.image_size
    wanted = check_side(loaded, "width", width or side), check_side(loaded, "height", height or side)  # before resizing
    picture, _ = load_init_image(image, wanted)
    inversion_settings(loaded, picture, prompt, steps, guidance, negative_prompt=negative_prompt, spacing=spacing,
                       seed=seed, guidance_rescale=guidance_rescale)
    if sweep:
        check_sweep(*sweep_at, loaded.config.scheduler.num_train_timesteps)

    options = {"negative_prompt": negative_prompt, "spacing": spacing, "seed": seed,
               "guidance_rescale": guidance_rescale}
    runs = 2 * (1 + (len(sweep_at[0]) * len(sweep_at[1]) if sweep else 0))
    with StepProgress(runs=runs) as progress:
        trip, trace = traced_round_trip(loaded, picture, prompt, steps, guidance, progress=progress, **options)
        swept = round_trip_sweep(loaded, picture, prompt, *sweep_at, progress=progress, **options) if sweep else None
    frames = inversion_frames(trace, loaded, preview) if gif is not None else None
    written = [save_png(round_trip_figure(trip, swept), out, force)]
    if frames is not None:
        written.append(save_animation(frames, gif, frame_ms, force))
    if save_latent is not None:
        written.append(save_inversion(trip.inversion, save_latent, force))
    OUT.print(f"round trip at w = {guidance:g}, {steps} steps: PSNR {trip.psnr:.1f} dB against the VAE decode of "
              f"z_0 ({trip.psnr_input:.1f} dB against the input; the VAE alone: {trip.vae_psnr:.1f} dB)")
    if swept is not None:
        for w, row in zip(swept.guidances, swept.psnr(), strict=True):
            OUT.print(f"  w = {w:g}: " + ", ".join(f"{n} steps {value:.1f} dB"
                                                   for n, value in zip(swept.steps, row, strict=True)))
    print_written(written)
