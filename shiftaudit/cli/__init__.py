"""The ``shiftaudit`` command line: a thin Typer layer over the library.

Each command lives in its own module and only parses, calls the library and renders; no metric logic here.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="shiftaudit",
    help="How shift-robust is your image model, where is robustness lost, and what would anti-aliasing buy?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

from shiftaudit.cli import compare_cmd, demo_cmd, eval_cmd, filters_cmd, inspect_cmd, patch_cmd  # noqa: E402,F401  (register commands)
from shiftaudit.cli.common import name_the_option_first  # noqa: E402

name_the_option_first()


def package_version() -> str:
    """The installed distribution's version (what pip installed), else the source tree's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shiftaudit")
    except PackageNotFoundError:
        from shiftaudit import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:  # an eager option's callback: runs while parsing, before Typer asks for a command
        try:
            typer.echo(f"shiftaudit {package_version()}")
        except BrokenPipeError:  # `shiftaudit --version | true`: the reader left before the line was written
            from shiftaudit.cli.common import quiet_stream

            quiet_stream(sys.stdout)
            raise typer.Exit(141) from None
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
) -> None:
    """How shift-robust is your image model, where is robustness lost, and what would anti-aliasing buy?"""


def main() -> None:
    """The command line; a closed stdout or stderr (``>&-``) gets /dev/null first, and a reader that left does not turn
    the flush at exit into a traceback or a changed exit code."""
    from shiftaudit.cli.common import hold_standard_streams, quiet_stream

    hold_standard_streams()
    try:
        app()
    finally:
        try:
            if sys.stdout is not None:
                sys.stdout.flush()
        except OSError:  # BrokenPipeError, or EBADF: nothing left to tell that reader
            quiet_stream(sys.stdout)
