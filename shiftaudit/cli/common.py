"""What every command shares: consoles, error handling, the model/data/shift options and their resolution."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from ..errors import ShiftAuditError, UsageError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])


def say_error(message: str) -> None:
    err_console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)


def handle_errors(fn: F) -> F:
    """Turn library errors into one sentence on stderr and an exit code: 2 for input/usage, 130 for Ctrl-C, 3 for bugs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except ShiftAuditError as exc:
            say_error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: stopped cleanly, no output file was written half.", soft_wrap=True)
            raise typer.Exit(130) from None
        except Exception as exc:  # a bug, not the user's fault: still no traceback unless asked
            if os.environ.get("SHIFTAUDIT_DEBUG"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            say_error(f"internal error ({type(exc).__name__}: {first}); rerun with SHIFTAUDIT_DEBUG=1 for the traceback and report it.")
            raise typer.Exit(3) from None

    return wrapper  # type: ignore[return-value]


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
NumClassesOpt = Annotated[int | None, typer.Option("--num-classes", min=1, help="Number of classes of the classifier (inferred from the weights when omitted).")]
TrustPickleOpt = Annotated[bool, typer.Option("--trust-pickle", help="Allow loading a whole pickled model. Pickles run code: only for files you trust.")]

DataOpt = Annotated[Path | None, typer.Option("--data", "-d", help="ImageFolder tree, folder of unlabelled images, CIFAR-10 python folder, or .npz/.pt tensor file.")]
DataKindOpt = Annotated[str, typer.Option("--data-kind", help="auto, imagefolder, folder, cifar10 or tensors.")]
ClassMapOpt = Annotated[Path | None, typer.Option("--class-map", help="JSON mapping folder names to the model's class indices.")]
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
ShiftStepOpt = Annotated[int | None, typer.Option("--shift-step", min=1, help="Evaluate shifts on a grid with this step (default 1 for small images, 4 for large).")]
ModeOpt = Annotated[str, typer.Option("--mode", help="auto, exhaustive (every shift of the set) or sampled (zero, one random shift and --pairs pairs per image).")]
PairsOpt = Annotated[int, typer.Option("--pairs", min=1, help="Random shift pairs per image for sampled consistency.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="fp32, bf16 or fp16 (autocast; fp16 needs CUDA).")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", min=1, help="Images x shifts per forward pass (default depends on device and image size).")]


def load_model_from_cli(model: Path, arch: str | None, num_classes: int | None, trust_pickle: bool) -> Any:
    from ..loading import load_model

    return load_model(model, arch=arch, num_classes=num_classes, trust_pickle=trust_pickle)


def resolve_cli_preprocessing(
    loaded: Any, preset: str | None, size: int | None, resize: int | None, mean: str | None, std: str | None, data: Path | None
) -> Any:
    from ..presets import resolve_preprocessing

    default = getattr(loaded, "preprocessing", None)
    if preset is None and default is None and data is not None and _looks_like_cifar(data):
        preset = "cifar"
    return resolve_preprocessing(
        preset, size=size, mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"), resize=resize, default=default
    )


def _looks_like_cifar(path: Path) -> bool:
    return (path / "cifar-10-batches-py").is_dir() or path.name == "cifar-10-batches-py"
