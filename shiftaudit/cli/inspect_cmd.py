"""``shiftaudit inspect MODEL``: how the checkpoint loaded and where the network downsamples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from shiftaudit.antialias.config import PatchPlan
from shiftaudit.antialias.inspection import inspect_model
from shiftaudit.cli import app
from shiftaudit.cli.choices import value
from shiftaudit.cli.common import check_outputs, console, handle_errors
from shiftaudit.cli.loading import load_model_from_cli, resolve_cli_preprocessing
from shiftaudit.cli.options import (
    ArchKwargsOpt,
    ArchOpt,
    ModelArg,
    NumClassesOpt,
    PresetOpt,
    ResizeOpt,
    SizeOpt,
    TrustPickleOpt,
)
from shiftaudit.files import write_json_atomic
from shiftaudit.loading.onnx_inspect import inspect_onnx
from shiftaudit.report.terminal import inspection_table, text

BLACK_BOXES = {"torchscript": "TorchScript archives", "pt2": "torch.export archives (.pt2)"}  # no modules to hook


def loading_table(loaded, prep=None) -> Table:
    t = Table(title="Checkpoint", title_justify="left", show_header=False, show_edge=False, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()

    def row(key: str, value: str) -> None:
        t.add_row(key, text(value))  # paths and names are the user's: never markup, control characters escaped

    row("File", str(loaded.source))
    row("Format", loaded.format)
    row(
        "Architecture", f"{loaded.arch or 'n/a'}" + (f"  ({loaded.arch_source})" if loaded.arch_source not in ("", "n/a") else "")
    )
    row("Classes", str(loaded.num_classes) if loaded.num_classes is not None else "unknown")
    row("Parameters", f"{loaded.parameter_count:,}")
    if loaded.preprocessing is not None:
        p = loaded.preprocessing
        row("Preprocessing", f"{p.name}: {p.size[0]}x{p.size[1]}" + (f", resize {p.resize}" if p.resize else ""))
    if prep is not None:  # what eval and patch would feed the model with the same flags
        row("Audit input", prep.describe())
    if loaded.patch_spec:
        row("Patched", patch_summary(loaded.patch_spec))
    for note in loaded.notes:
        row("Note", note)
    return t


def patch_summary(spec: dict[str, Any]) -> str:
    """The patch spec in words, whole (a wrapped cell, never JSON cut mid-string): `--json` has the exact spec."""
    parts = [str(spec.get("method", "?"))]
    parts += [f"{key} {spec[key]}" for key in ("filter", "pad") if key in spec]
    parts += [
        f"{key}={json.dumps(spec[key])}"
        for key in spec
        if key not in ("version", "method", "filter", "pad", "patched", "mode", "plan") and spec[key] not in ([], None)
    ]
    if "plan" in spec:  # a per-layer plan (patch --search, --plan): its treatments, layer by layer
        parts = ["plan: " + PatchPlan.from_json(spec["plan"]).label]
    patched = spec.get("patched")
    if isinstance(patched, list):
        parts.append(f"{len(patched)} layer{'s' if len(patched) != 1 else ''}: {', '.join(map(str, patched))}")
    return "; ".join(parts)


def inspection_report(loaded, insp) -> dict:
    return {
        "schema": "shiftaudit/inspect-report",
        "schema_version": 1,
        "model": {
            "source": str(loaded.source),
            "format": loaded.format,
            "arch": loaded.arch,
            "arch_source": loaded.arch_source,
            "num_classes": loaded.num_classes,
            "parameters": loaded.parameter_count,
            "notes": loaded.notes,
            "patch": loaded.patch_spec,
        },
        "inspection": insp.to_json() if insp is not None else None,
        "filter_total_variation": _total_variation(loaded.model) if insp is not None and loaded.format != "onnx" else None,
    }


@app.command("inspect")
@handle_errors
def inspect_command(
    model: ModelArg,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    num_classes: NumClassesOpt = None,
    trust_pickle: TrustPickleOpt = False,
    size: SizeOpt = None,
    resize: ResizeOpt = None,
    preset: PresetOpt = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the inspection as JSON to this path ('-' for stdout).")
    ] = None,
) -> None:
    """Show how the checkpoint loads and every downsampling point of the network (stride, resolutions, role)."""
    check_outputs({"--json": json_out}, inputs=[model])
    loaded = load_model_from_cli(model, arch, num_classes, trust_pickle, arch_kwargs)
    prep = resolve_cli_preprocessing(loaded, value(preset), size, resize, None, None, None)
    insp = None
    if loaded.format == "onnx":
        insp = inspect_onnx(Path(loaded.source), loaded.model.input, prep.size, prep.channels)
    elif loaded.format not in BLACK_BOXES:
        insp = inspect_model(loaded.model, prep.size, channels=prep.channels)
    report = inspection_report(loaded, insp)
    if json_out is not None and str(json_out) == "-":
        typer.echo(json.dumps(report, indent=2))
        return
    console.print(loading_table(loaded, prep))
    console.print()
    if insp is None:
        console.print(f"{BLACK_BOXES[loaded.format]} are audited as black boxes: no layer-by-layer view.")
    else:
        onnx = loaded.format == "onnx"
        console.print(inspection_table(insp, {} if onnx else _patch_column(loaded.model, insp), width=console.width))
        console.print(
            f"{len(insp.downsampling)} downsampling layers; input {insp.input_size[0]}x{insp.input_size[1]} -> "
            f"{insp.final_size[0]}x{insp.final_size[1]} (total stride {insp.total_stride})."
        )
        if insp.rounded and insp.main_path_stride == insp.total_stride:
            h, s = insp.input_size[0], insp.total_stride
            console.print(
                Text(
                    f"note: {insp.input_size[0]}x{insp.input_size[1]} is not a multiple of the total stride, so the "
                    f"downsampling layers round their output sizes ({h} / {s} = {h / s:.4g} -> {insp.final_size[0]}): "
                    "shifts by multiples of the stride no longer map exactly onto the final grid.",
                    style="dim",
                ),
                soft_wrap=True,
            )
        if insp.main_path_stride != insp.total_stride:
            console.print(
                Text(
                    f"note: the listed strides multiply to {insp.main_path_stride}, not the total stride {insp.total_stride}: "
                    "some downsampling happens where no layer shows it (a functional call inside a forward method).",
                    style="yellow",
                ),
                soft_wrap=True,
            )
        if onnx:
            console.print("Read from the ONNX graph (Conv, MaxPool and AveragePool strides); `patch` needs the PyTorch model.")
    if json_out is not None:
        write_json_atomic(json_out, report)
        console.print(text(f"wrote {json_out}"))


def _patch_column(model, insp) -> dict[str, dict[str, str]]:
    """What ``shiftaudit patch`` would do at each point, when the patching module is available."""
    try:
        from shiftaudit.antialias import plan_patch
    except ImportError:
        return {}
    from shiftaudit.antialias import conv_total_variation  # local: the patching module may be unavailable (see above)

    try:  # patch a copy to show where each blur would really go (after the conv's norm/activation)
        from shiftaudit.antialias import patch_model

        plan = patch_model(model).steps
    except Exception:  # the plan alone still says what would change
        plan = plan_patch(model)
    tv = conv_total_variation(model)
    return {"Patch": {step.name: step.action for step in plan}, "TV": {n: f"{v:.3f}" for n, v in tv.items()}}


def _total_variation(model) -> dict[str, float]:
    """Normalised TV of every spatial conv's filters (Fig. 7: lower is smoother)."""
    from shiftaudit.antialias import conv_total_variation  # local: the patching module may be unavailable (see above)

    return conv_total_variation(model)
