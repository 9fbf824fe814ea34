"""The `diffx` app itself: its consoles, the app-level `--debug` option, how errors and warnings are
shown, and `command`, which registers a function as a subcommand.

Results go to stdout (`OUT`); progress, warnings and errors to stderr (`ERR`). A user error
(`DiffxError`) raised by any command prints one line `error: …` and exits with code 2; with
`diffx --debug …` it propagates with its traceback instead.
"""

import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer._click import exceptions as typer_click
from typer.core import TyperCommand, TyperGroup

from diffx import __version__
from diffx.errors import DiffxError, error_line
from diffx.threads import set_wait_policy

OUT = Console(highlight=False)  # results
ERR = Console(stderr=True, highlight=False)  # progress, warnings, errors


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """diffx's own warnings (e.g. a truncated prompt) as one yellow line; others as Python prints them."""
    if category.__module__.startswith("diffx"):
        ERR.print(f"[yellow]warning: {escape(str(message))}[/]", soft_wrap=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


class DiffxGroup(TyperGroup):
    """The `diffx` command group: runs a subcommand with diffx's warnings shown as one line each and a
    `DiffxError` turned into `error: <message>` on stderr and exit code 2 (unless `--debug` was given)."""

    def get_params(self, ctx: typer.Context) -> list:
        return _plain_placeholders(ctx, super().get_params(ctx))  # `diffx --help`: `--debug`, not `--debug <bool>`

    def invoke(self, ctx: typer.Context):
        set_wait_policy()  # before the command's options are parsed: some parsers load torch
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except DiffxError as error:
                if ctx.params.get("debug"):
                    raise
                ERR.print(f"[bold red]error:[/] {escape(error_line(str(error)))}", soft_wrap=True)
                raise typer.Exit(2) from None
            except (click.UsageError, typer_click.UsageError) as error:  # a value click cannot parse
                # The group's own context is named "diffx" too: `diffx tracee` points to `diffx --help`.
                sub = error.ctx is not None and error.ctx.parent is not None
                command = f"diffx {error.ctx.info_name}" if sub else "diffx"
                message = " ".join(error.format_message().split()).rstrip(".")
                ERR.print(f"[bold red]error:[/] {escape(error_line(f'{message}; see {command} --help'))}",
                          soft_wrap=True)
                raise typer.Exit(2) from None


app = typer.Typer(
    name="diffx",
    cls=DiffxGroup,
    help="Stable Diffusion from scratch, traced step by step: noise, denoising, guidance and attention as "
         "GIFs and grids.",
    epilog='Example: diffx trace --prompt "a red circle" --gif out.gif',
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        OUT.print(f"diffx {__version__}")
        raise typer.Exit()


@app.callback()
def options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print diffx's version and exit.")] = False,
) -> None:
    """Options for every command, given before its name: `diffx --debug trace …`. (DiffxGroup reads them.)"""


def _plain_placeholders(ctx: typer.Context, params: list) -> list:
    """--help shows no value placeholder for flags (`--force`, not `--force <bool>`) and a list argument as
    its items (`<path>`, not `<list[Path]>`)."""
    for param in params:
        if getattr(param, "is_flag", False):
            param.display_type_rich = lambda ctx: None
        elif param.nargs == -1 and hasattr(param, "display_type"):
            label = param.display_type(ctx)
            item = label.removeprefix("<list[").removesuffix("]>").lower()
            param.display_type_rich = lambda ctx, item=item: f"<{item}>"
    return params


class DiffxCommand(TyperCommand):
    """A subcommand whose --help shows plain placeholders (`_plain_placeholders`)."""

    def get_params(self, ctx: typer.Context) -> list:
        return _plain_placeholders(ctx, super().get_params(ctx))


def _unwrap(text: str) -> str:
    """Docstring paragraphs as one line each, so the terminal wraps them at its own width; brackets escaped,
    since the help is read as rich markup (`"[word]"` would vanish as a style tag)."""
    return "\n\n".join(escape(" ".join(paragraph.split())) for paragraph in text.strip().split("\n\n"))


def command(function: Callable) -> Callable:
    """Register `function` as a subcommand named after it (`cfg_sweep` → `cfg-sweep`). Its docstring is
    the help; the part from "Example:" on goes last in its --help, as a runnable example."""
    description, _, example = function.__doc__.partition("Example:")
    return app.command(cls=DiffxCommand, help=_unwrap(description),
                       epilog=f"Example: {example.strip()}")(function)


def print_written(paths: list[Path | None]) -> None:
    """`wrote <path>` on stdout for each file written (None: not asked for)."""
    for path in paths:
        if path is not None:
            OUT.print(f"wrote {path}", soft_wrap=True)
