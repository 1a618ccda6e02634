"""The options several commands share, each declared once: the same flag reads the same in every command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shiftaudit.cli.choices import BackendChoice, DataKind, Mode, Precision, Preset, ShiftMode

ModelArg = Annotated[
    Path,
    typer.Argument(
        help="Checkpoint: .pt/.pth/.bin state dict, .safetensors, .pt2 (torch.export), .onnx (the onnx extra), TorchScript "
        "archive, or (with --trust-pickle) a pickled model.",
        show_default=False,
    ),
]
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch",
        help="Architecture: a torchvision name (resnet18), timm:NAME, or package.module:factory. Identified from the weights "
        "when omitted.",
    ),
]
ArchKwargsOpt = Annotated[
    str | None,
    typer.Option(
        "--arch-kwargs",
        help='Keyword arguments for the architecture builder, as a JSON object: \'{"model_name": "efficientnet-lite0"}\'. '
        "Stored in a patched model's metadata.",
    ),
]
NumClassesOpt = Annotated[
    int | None,
    typer.Option("--num-classes", min=1, help="Number of classes of the classifier (inferred from the weights when omitted)."),
]
TrustPickleOpt = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Allow loading a whole pickled model, or a .pt2 archive that could run code. Only for files you trust.",
    ),
]

DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        "-d",
        help="ImageFolder tree, folder of unlabelled images, CIFAR-10 python folder, .npz/.pt tensor file, Hugging Face "
        "dataset (save_to_disk folder or parquet), or WebDataset .tar shards ('train-{000..099}.tar', quoted).",
    ),
]
DataKindOpt = Annotated[DataKind, typer.Option("--data-kind", help="What --data holds; auto tells it from the files.")]
ClassMapOpt = Annotated[
    str | None,
    typer.Option(
        "--class-map",
        help="Map folder (or dataset class) names to the model's class indices: imagenet (the built-in ImageNet-1k "
        "index: WordNet-id or class-name folders) or a JSON file.",
    ),
]
ImageColumnOpt = Annotated[
    str | None,
    typer.Option("--image-column", help="Hugging Face dataset: the column of images (default: the Image feature)."),
]
LabelColumnOpt = Annotated[
    str | None,
    typer.Option("--label-column", help="Hugging Face dataset: the column of labels (default: the ClassLabel feature)."),
]
PresetOpt = Annotated[
    Preset | None,
    typer.Option(
        "--preset",
        help="Preprocessing: imagenet (resize 256, crop 224) or cifar (32x32). Default: the checkpoint's own, else imagenet.",
    ),
]
SizeOpt = Annotated[int | None, typer.Option("--size", min=1, help="Input size (square) the images are cropped to.")]
ResizeOpt = Annotated[int | None, typer.Option("--resize", min=1, help="Resize the shorter side to this before the centre crop.")]
MeanOpt = Annotated[str | None, typer.Option("--mean", help="Per-channel mean, comma-separated.")]
StdOpt = Annotated[str | None, typer.Option("--std", help="Per-channel std, comma-separated.")]
RawOpt = Annotated[bool, typer.Option("--raw", help="Tensor data is already preprocessed: no resize, no normalisation.")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="Audit a seeded random subset of N images.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for the subset and the per-image random shifts.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Fail on an unreadable image instead of skipping it.")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", min=0, help="Image-decoding worker processes.")]

MaxShiftOpt = Annotated[
    int | None,
    typer.Option("--max-shift", min=0, help="Largest shift in px (default: half the image size up to 64 px images, else 16)."),
]
ShiftStepOpt = Annotated[
    float | None,
    typer.Option(
        "--shift-step",
        min=0.0,
        help="Evaluate shifts on a grid with this step (default 1 for small images, 4 for large); fractional (0.5, 0.25) with "
        "--shift-mode subpixel (default 0.5).",
    ),
]
ShiftModeOpt = Annotated[
    ShiftMode,
    typer.Option(
        "--shift-mode",
        help="circular (roll, Eq. 4), crop (crops of a canvas resized and centre-cropped --max-shift px larger per side: the "
        "published ImageNet protocol; nothing wraps) or subpixel (Fourier phase shifts, fractional --shift-step).",
    ),
]
ModeOpt = Annotated[
    Mode,
    typer.Option(
        "--mode",
        help="auto, exhaustive (every shift of the set) or sampled (zero, one random shift and --pairs pairs per image).",
    ),
]
PairsOpt = Annotated[int, typer.Option("--pairs", min=1, help="Random shift pairs per image for sampled consistency.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
PrecisionOpt = Annotated[Precision, typer.Option("--precision", help="Autocast precision; fp16 needs CUDA.")]
BackendOpt = Annotated[
    BackendChoice,
    typer.Option(
        "--backend",
        help="Who runs the forward passes on the CPU: torch, openvino or onnxruntime (the model exported once and checked "
        "against torch on a probe batch; the openvino and onnx extras), or auto (a runtime when one is installed and the "
        "audit is long enough to pay for the export).",
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for the forward passes (default: torch's, but one under pytest-xdist or torchrun, and fewer on a "
        "loaded machine).",
    ),
]
BatchOpt = Annotated[
    int | None,
    typer.Option("--batch-size", min=1, help="Images x shifts per forward pass (default depends on device and image size)."),
]

JsonOpt = Annotated[
    Path | None,
    typer.Option("--json", help="Write the JSON report to this path ('-' for stdout; the table then goes to stderr)."),
]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Report folder: report.json plus pictures and HTML.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No table or progress bar; only the verdict and errors.")]
