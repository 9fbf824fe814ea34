"""`diffx studio`: the live page (`diffx.studio`), served on this machine until Ctrl-C."""

from typing import Annotated

import typer

from diffx.cli.core import ERR
from diffx.cli.options import ModelChoice, PreviewOpt, check_view_options, option_groups


@option_groups
def studio(
    model: ModelChoice = ModelChoice(),
    host: Annotated[str, typer.Option(help="The address to serve on. Anything but this machine's loopback "
                                           "(127.0.0.1) lets others reach the page.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The port to serve on.")] = 7860,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the page in the default browser.")] = False,
    no_token: Annotated[bool, typer.Option("--no-token", help="Serve without the per-launch token in the URL "
                                                              "(any local program could then drive the model).")
                        ] = False,
    preview: PreviewOpt = "auto",
) -> None:
    """A live page: type a prompt, press Run and watch every step arrive — x_t, x̂0, ε̂, the guidance term and
    each word's attention — with a step slider, a second run to compare, a guidance strip, prompt-to-prompt edits,
    downloads (trace, GIF, report) and the equivalent command line.

    Example: diffx studio --open
    """
    from diffx.studio.server import check_address, serve

    check_view_options(preview)
    check_address(host, port)  # before the model loads: a busy port costs nothing
    loaded = model.load()
    serve(loaded, host, port, token=not no_token, open_browser=open_browser, model_arg=model.model,
          preview=preview, say=ERR.print)
