"""What every command shares: consoles, error handling, the model/data/shift options and their resolution."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from shiftaudit.errors import AuditInterrupted, OutputError, ShiftAuditError, Terminated, UsageError, failure_text, first_line, one_line

F = TypeVar("F", bound=Callable[..., Any])


class PlainConsole(Console):
    """A console that shows every string literally: no markup or emoji codes, control characters as escapes.

    Paths, folder, class and layer names reach tables, titles and messages; a ``[/]`` in a folder name must not crash
    the printer after an hour's audit, a ``:smile:`` must stay text, and a newline or escape sequence in a file name
    must neither split a line nor drive the terminal.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(highlight=False, markup=False, emoji=False, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(one_line(text), **kwargs)


console = PlainConsole()
err_console = PlainConsole(stderr=True)


def say_error(message: str) -> None:
    err_console.print(Text.assemble(("error: ", "bold red"), one_line(message)), soft_wrap=True)


def json_to_stdout(json_out: Path | None) -> None:
    """With ``--json -`` stdout carries the JSON alone: the tables and messages of this command go to stderr."""
    if json_out is not None and str(json_out) == "-":
        console.stderr = True


def handle_errors(fn: F) -> F:
    """Turn library errors into one sentence on stderr and an exit code: 2 for input/usage, 130 for Ctrl-C, 143 for
    SIGTERM, 3 for bugs.

    An exit raised by code shiftaudit runs (the model's ``sys.exit(0)``, a custom BaseException) is a failure too:
    passed through, it would end the command with its exit code and no report, which a CI gate reads as a pass.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with sigterm_as_interrupt():
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except ShiftAuditError as exc:
            say_error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            err_console.print(Text(interrupted_message(exc)), soft_wrap=True)
            raise typer.Exit(143 if _terminated(exc) else 130) from None
        except Exception as exc:  # a bug, not the user's fault: still no traceback unless asked
            if os.environ.get("SHIFTAUDIT_DEBUG"):
                raise
            resource = _out_of_memory_message(exc)
            if resource is not None:
                say_error(resource)
                raise typer.Exit(2) from None
            first = first_line(exc, "")
            say_error(f"internal error ({type(exc).__name__}: {first}); rerun with SHIFTAUDIT_DEBUG=1 for the traceback and report it.")
            raise typer.Exit(3) from None
        except BaseException as exc:  # SystemExit, GeneratorExit, ... from the model's code or a library it calls
            say_error(f"the model's code (or a library it calls) stopped the run: {failure_text(exc)}; that is a failure, not a pass.")
            raise typer.Exit(2) from None
        finally:
            console.stderr = False  # undo json_to_stdout

    return wrapper  # type: ignore[return-value]


def name_the_option_first() -> None:
    """Typer answers an out-of-range option with a usage box that starts with the usage line; put one line naming
    the option and the problem first (``error: Invalid value for '--pairs': ...``), then Typer's box."""
    from typer import rich_utils

    box = rich_utils.rich_format_error
    if getattr(box, "shiftaudit", False):
        return

    def show(exc: Any) -> None:
        if type(exc).__name__ != "NoArgsIsHelpError":
            say_error((exc.format_message().strip().splitlines() or ["Invalid command line"])[0].rstrip(".") + ".")
        box(exc)

    show.shiftaudit = True  # type: ignore[attr-defined]
    rich_utils.rich_format_error = show


@contextlib.contextmanager
def sigterm_as_interrupt() -> Any:
    """While a command runs, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread.

    Python's default for SIGTERM is to die at once: an audit under ``timeout`` or a batch scheduler would lose its
    progress and leave no message. Raised like Ctrl-C, it stops between batches and the ``--resume`` state is saved.
    Further SIGTERMs are ignored while that happens (the save must finish); the old handler is restored after.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _out_of_memory_message(exc: BaseException) -> str | None:
    """Running out of memory is a resource limit the user can change, not a bug: say which knob to turn."""
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch here
        return "The GPU ran out of memory outside the batched forward passes; free the GPU, pass a smaller --batch-size, or use --device cpu."
    if isinstance(exc, MemoryError):
        return "The machine ran out of memory; pass a smaller --batch-size or --limit, or close other programs."
    return None


def interrupted_message(exc: BaseException) -> str:
    """One line for Ctrl-C or SIGTERM: how far the audit got (:class:`~shiftaudit.errors.AuditInterrupted`) and
    whether its progress was saved."""
    where = f" after {exc.done} of {exc.total} images" if isinstance(exc, AuditInterrupted) else ""
    saved = exc.resume_path if isinstance(exc, AuditInterrupted) else None
    how = "terminated (SIGTERM)" if _terminated(exc) else "interrupted"
    if saved:
        return f"{how}: stopped cleanly{where}; progress saved in {saved}: run the same command again to continue."
    return f"{how}: stopped cleanly{where}; no output file was left half-written."


def _terminated(exc: BaseException) -> bool:
    return isinstance(exc, Terminated) or bool(getattr(exc, "terminated", False))


def check_output_path(path: Path | None, flag: str, *, folder: bool = False, stdout: bool = False,
                      names: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an output location that cannot be written.

    An audit must not run for an hour and then fail to save. Nothing is created: the destination must be a regular
    file or nothing (:func:`~shiftaudit.atomicio.check_destination`: never a FIFO, device, socket or symlink), and the
    nearest existing folder is tried with an anonymous temporary file (so pseudo file systems such as /proc are
    caught too). ``folder``: a folder output, whose files ``names`` are checked the same way. ``stdout``: ``-``
    means standard output.
    """
    from shiftaudit.atomicio import check_destination, node_kind

    if path is None or (stdout and str(path) == "-"):
        return
    p = Path(path)  # as the writers will use it: a quoted '~' is a folder named '~', as for any other tool
    if folder:
        if str(p) == "-":
            raise OutputError(f"{flag} - would create a folder named '-'; only --json takes '-' (standard output), give a folder path.")
        if os.path.lexists(p) and not p.is_dir():  # a symlink to a folder is a folder: nothing is replaced
            raise OutputError(f"{flag} {p} is {node_kind(p) or 'a file'}, not a folder; choose another output location.")
        for name in names:
            check_destination(p / name, flag)
    else:
        check_destination(p, flag)
    ancestor = p if folder else p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{flag} {p} cannot be written: {ancestor} is a file, not a folder.")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        why = (exc.strerror or str(exc)).rstrip(".").lower()
        raise OutputError(f"{flag} {p} cannot be written ({why}); choose another output location.") from None


def check_outputs(files: dict[str, Path | None], folders: dict[str, tuple[Path | None, tuple[str, ...]]] | None = None,
                  stdout: tuple[str, ...] = ("--json",), inputs: list[Path | None] | None = None) -> None:
    """Check every output of a command before any work: each one (:func:`check_output_path`), that no two of them
    name the same file, where one would silently replace the other, and that none replaces one of the command's
    ``inputs`` (a checkpoint or report it reads). ``folders``: flag -> (folder, its file names)."""
    targets = []
    for flag, path in files.items():
        check_output_path(path, flag, stdout=flag in stdout)
        if path is not None and str(path) != "-":
            targets.append((flag, Path(path)))
    for flag, (folder, names) in (folders or {}).items():
        check_output_path(folder, flag, folder=True, names=names)
        if folder is not None:
            targets += [(flag, Path(folder) / name) for name in names]
    seen: dict[str, str] = {}
    for flag, path in targets:
        key = _file_key(path)
        if key in seen and seen[key] != flag:
            raise UsageError(f"{seen[key]} and {flag} both write {path}; give each output its own file.")
        seen.setdefault(key, flag)
    for source in inputs or []:
        if source is not None and _file_key(Path(source)) in seen:
            raise UsageError(f"{seen[_file_key(Path(source))]} {source} would replace an input of this command; give the output another name.")


def _file_key(path: Path) -> str:
    """One name per file: the real folder plus the file name (two spellings of one path compare equal)."""
    return os.path.join(os.path.realpath(path.parent), path.name)


def parse_floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated numbers like 0.485,0.456,0.406, got {text!r}.") from None
    if not values:
        raise UsageError(f"{flag} needs at least one number.")
    return values


# -- shared options -------------------------------------------------------------------------------------------------
ModelArg = Annotated[Path, typer.Argument(help="Checkpoint: .pt/.pth/.bin state dict, .safetensors, TorchScript archive, or (with --trust-pickle) a pickled model.", show_default=False)]
ArchOpt = Annotated[str | None, typer.Option("--arch", help="Architecture: a torchvision name (resnet18), timm:NAME, or package.module:factory. Identified from the weights when omitted.")]
ArchKwargsOpt = Annotated[str | None, typer.Option("--arch-kwargs", help='Keyword arguments for the architecture builder, as a JSON object: \'{"model_name": "efficientnet-lite0"}\'. Stored in a patched model\'s metadata.')]
NumClassesOpt = Annotated[int | None, typer.Option("--num-classes", min=1, help="Number of classes of the classifier (inferred from the weights when omitted).")]
TrustPickleOpt = Annotated[bool, typer.Option("--trust-pickle", help="Allow loading a whole pickled model. Pickles run code: only for files you trust.")]

DataOpt = Annotated[Path | None, typer.Option("--data", "-d", help="ImageFolder tree, folder of unlabelled images, CIFAR-10 python folder, or .npz/.pt tensor file.")]
DataKindOpt = Annotated[str, typer.Option("--data-kind", help="auto, imagefolder, folder, cifar10 or tensors.")]
ClassMapOpt = Annotated[str | None, typer.Option("--class-map", help="Map folder names to the model's class indices: imagenet (the built-in ImageNet-1k index: WordNet-id or class-name folders) or a JSON file.")]
PresetOpt = Annotated[str | None, typer.Option("--preset", help="Preprocessing: imagenet (resize 256, crop 224) or cifar (32x32). Default: the checkpoint's own, else imagenet.")]
SizeOpt = Annotated[int | None, typer.Option("--size", min=1, help="Input size (square) the images are cropped to.")]
ResizeOpt = Annotated[int | None, typer.Option("--resize", min=1, help="Resize the shorter side to this before the centre crop.")]
MeanOpt = Annotated[str | None, typer.Option("--mean", help="Per-channel mean, comma-separated.")]
StdOpt = Annotated[str | None, typer.Option("--std", help="Per-channel std, comma-separated.")]
RawOpt = Annotated[bool, typer.Option("--raw", help="Tensor data is already preprocessed: no resize, no normalisation.")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="Audit a seeded random subset of N images.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for the subset and the per-image random shifts.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Fail on an unreadable image instead of skipping it.")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", min=0, help="Image-decoding worker processes.")]

MaxShiftOpt = Annotated[int | None, typer.Option("--max-shift", min=0, help="Largest shift in px (default: half the image size up to 64 px images, else 16).")]
ShiftStepOpt = Annotated[float | None, typer.Option("--shift-step", min=0.0, help="Evaluate shifts on a grid with this step (default 1 for small images, 4 for large); fractional (0.5, 0.25) with --shift-mode subpixel (default 0.5).")]
ShiftModeOpt = Annotated[str, typer.Option("--shift-mode", help="circular (roll, Eq. 4), crop (crops of a canvas resized and centre-cropped --max-shift px larger per side: the published ImageNet protocol; nothing wraps) or subpixel (Fourier phase shifts, fractional --shift-step).")]
ModeOpt = Annotated[str, typer.Option("--mode", help="auto, exhaustive (every shift of the set) or sampled (zero, one random shift and --pairs pairs per image).")]
PairsOpt = Annotated[int, typer.Option("--pairs", min=1, help="Random shift pairs per image for sampled consistency.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="fp32, bf16 or fp16 (autocast; fp16 needs CUDA).")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", min=1, help="Images x shifts per forward pass (default depends on device and image size).")]


def load_model_from_cli(model: Path, arch: str | None, num_classes: int | None, trust_pickle: bool,
                        arch_kwargs: str | None = None) -> Any:
    from shiftaudit.loading import load_model
    from shiftaudit.loading.architectures import parse_arch_kwargs

    kwargs = parse_arch_kwargs(arch_kwargs)
    return load_model(model, arch=arch, num_classes=num_classes, trust_pickle=trust_pickle, arch_kwargs=kwargs)


def resolve_cli_preprocessing(
    loaded: Any, preset: str | None, size: int | None, resize: int | None, mean: str | None, std: str | None, data: Path | None
) -> Any:
    from shiftaudit.data.presets import resolve_preprocessing

    default = getattr(loaded, "preprocessing", None)
    if preset is None and default is None and data is not None and _looks_like_cifar(data):
        preset = "cifar"
    return resolve_preprocessing(
        preset, size=size, mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"), resize=resize, default=default
    )


def _looks_like_cifar(path: Path) -> bool:
    return (path / "cifar-10-batches-py").is_dir() or path.name == "cifar-10-batches-py"
