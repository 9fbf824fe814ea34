"""`diffx tour`: the README's guided tour in one command — every stop's `diffx` command (`diffx.tour.STOPS`) run
through this app into one folder, then the index page (`diffx.tour.write_index`) that shows each picture with its
caption and the command that made it."""

import time
from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from diffx.cli.core import ERR, OUT
from diffx.cli.options import ForceOpt, ModelChoice, option_groups
from diffx.errors import DiffxError


def model_options(model: ModelChoice) -> list[tuple[str, str]]:
    """The model options given (those not at their defaults) as (option, value) pairs, to pass on to every command
    that takes them; a repeated option (--lora, --embedding) once per value; a model, LoRA or embedding path made
    absolute (the page's commands run in the tour folder), an alias ("embedded") as given."""
    from diffx.weights.discovery import MODEL_ALIASES

    given = []
    for field in fields(ModelChoice):
        value = getattr(model, field.name)
        option = f"--{field.name.replace('_', '-')}"
        if value == field.default:
            continue
        if option == "--model" and value not in MODEL_ALIASES:
            value = str(Path(value).expanduser().resolve())
        if option == "--lora":
            given += [(option, str(spec.path.expanduser().resolve()) + f":{spec.scale:g}")
                      for spec in model.lora_specs()]
        elif option == "--embedding":
            given += [(option, str(spec.path.expanduser().resolve()) + (f":{spec.token}" if spec.token else ""))
                      for spec in model.embedding_specs()]
        else:
            given.append((option, value))
    return given


@option_groups
def tour(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Argument(help="The folder for the pictures and index.html.")] = Path("tour"),
    quick: Annotated[bool, typer.Option(
        "--quick", help="A fast look: 3 sampling steps and fewer runs (about a sixth of the time); the captions "
                        "describe the full tour's pictures.")] = False,
    model: ModelChoice = ModelChoice(),
    force: ForceOpt = False,
) -> None:
    """Run the README's guided tour: every picture into one folder, with an index page that shows each one, what to
    notice in it and the command that made it.

    Runs the tour's commands one after another (trace, noise, denoise, cfg-sweep, compare, paths, attention, edit,
    weights, invert, report, lab: about 2.5 CPU-minutes on the embedded model), each as you would type it in
    OUT_DIR, then writes OUT_DIR/index.html. The model options go to every command that takes them.

    Example: diffx tour my-tour --quick
    """
    from diffx.paths import EMBEDDED_MODEL_DIR
    from diffx.tour import STOPS, TourRun, check_tour_folder, write_index

    check_tour_folder(out_dir, force)
    source, target, *_ = model.check()  # a missing model, an unknown device or dtype: here, before any work
    passed = model_options(model)
    group = ctx.parent.command
    commands, seconds = {}, {}
    for number, stop in enumerate(STOPS, 1):
        if not stop.args:
            continue
        command = group.get_command(ctx.parent, stop.args[0])
        accepted = {option for param in command.params for option in param.opts}
        extra = [item for option, value in passed if option in accepted for item in (option, value)]
        commands[stop.name] = stop.command_line(quick, extra)
        ERR.rule(f"[bold]{number}/{len(STOPS)} · {escape(stop.title)}[/]", align="left")
        ERR.print(f"$ {escape(commands[stop.name])}", style="dim", soft_wrap=True)
        start = time.perf_counter()
        try:
            code = command.main([*stop.argv(out_dir, quick)[1:], *extra, *(["--force"] if force else [])],
                                prog_name=f"diffx {stop.args[0]}", standalone_mode=False)
        except DiffxError as error:
            raise DiffxError(f"the tour stopped at stop {number} ({stop.title}): {error}") from error
        if code:  # the command's own exit (130 for Ctrl-C, which click turns into an exit code): stop there too
            raise typer.Exit(code)
        seconds[stop.name] = time.perf_counter() - start
    run = TourRun(commands, seconds, model=source.path.name, device=str(target), quick=quick,
                  embedded=source.path.resolve() == EMBEDDED_MODEL_DIR.resolve())
    index = write_index(out_dir, run, force=force)
    OUT.print(f"wrote {index} — open it in a browser: {len(commands)} commands, {sum(seconds.values()):.0f} s",
              soft_wrap=True)
