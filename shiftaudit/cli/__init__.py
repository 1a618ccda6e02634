"""The ``shiftaudit`` command line: a thin Typer layer over the library.

Each command lives in its own module and only parses, calls the library and renders; no metric logic here.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="shiftaudit",
    help="How shift-robust is your image model, where is robustness lost, and what would anti-aliasing buy?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

from . import compare_cmd, demo_cmd, eval_cmd, filters_cmd, inspect_cmd, patch_cmd  # noqa: E402,F401  (register commands)
from .common import name_the_option_first  # noqa: E402

name_the_option_first()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        from .. import __version__

        typer.echo(f"shiftaudit {__version__}")
        raise typer.Exit(0)


def main() -> None:
    app()
