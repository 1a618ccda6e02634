"""The ``shiftaudit`` command line: a thin Typer layer over the library.

Each command lives in its own module and only parses, calls the library and renders; no metric logic here.
"""

from __future__ import annotations

import os
import sys

import typer

from shiftaudit import __version__

app = typer.Typer(
    name="shiftaudit",
    help="How shift-robust is your image model, where is robustness lost, and what would anti-aliasing buy?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

from shiftaudit.cli import compare_cmd, demo_cmd, eval_cmd, filters_cmd, inspect_cmd, patch_cmd  # noqa: E402,F401  (register commands)
from shiftaudit.cli.common import hold_standard_streams, name_the_option_first, quiet_stream  # noqa: E402

name_the_option_first()


def package_version() -> str:
    """The installed distribution's version (what pip installed), else the source tree's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shiftaudit")
    except PackageNotFoundError:
        return __version__


def _print_version(value: bool) -> None:
    if value:  # an eager option's callback: runs while parsing, before Typer asks for a command
        try:
            typer.echo(f"shiftaudit {package_version()}")
        except BrokenPipeError:  # `shiftaudit --version | true`: the reader left before the line was written
            quiet_stream(sys.stdout)
            raise typer.Exit(141) from None
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
) -> None:
    """How shift-robust is your image model, where is robustness lost, and what would anti-aliasing buy?"""


INTERRUPTED = (130, 143)  # Ctrl-C, SIGTERM


def main() -> None:
    """The command line; a closed stdout or stderr (``>&-``) gets /dev/null first, and a reader that left does not turn
    the flush at exit into a traceback or a changed exit code.

    After Ctrl-C or SIGTERM the process ends at once: its line is printed and every output has been removed or saved
    by then, and Python's own shutdown (tearing down torch's modules) takes seconds on a busy machine, which a user
    who pressed Ctrl-C, or a scheduler's kill timeout, should not wait for; a worker thread still inside a long call
    (shiftaudit.interrupts) is not waited for either.
    """
    hold_standard_streams()
    code: object = None
    try:
        app()
    except SystemExit as exc:
        code = exc.code
        raise
    finally:
        interrupted = isinstance(code, int) and code in INTERRUPTED
        for stream in (sys.stdout, sys.stderr) if interrupted else (sys.stdout,):  # os._exit flushes nothing
            try:
                if stream is not None:
                    stream.flush()
            except OSError:  # BrokenPipeError, or EBADF: nothing left to tell that reader
                quiet_stream(stream)
        if interrupted:
            os._exit(code)  # type: ignore[arg-type]  # an int: checked above
