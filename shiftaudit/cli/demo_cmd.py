"""``shiftaudit demo``: the whole audit on a model and data that ship with the package. No files, no downloads."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shiftaudit.antialias import PatchConfig
from shiftaudit.antialias.workflow import patch_and_evaluate
from shiftaudit.cli import app
from shiftaudit.cli.common import check_outputs, console, handle_errors, json_to_stdout
from shiftaudit.cli.options import DeviceOpt, JsonOpt, OutOpt, QuietOpt
from shiftaudit.cli.progress import RichProgress
from shiftaudit.cli.running import report_result
from shiftaudit.data import load_data
from shiftaudit.data.synthetic import make_synthetic
from shiftaudit.engine.config import AuditConfig
from shiftaudit.engine.plan import plan_audit
from shiftaudit.engine.runner import run_plan
from shiftaudit.loading import load_model
from shiftaudit.models.demo import DEMO_TEST_SEED, DEMO_TRAIN_SEED, demo_aa_checkpoint_path, demo_checkpoint_path
from shiftaudit.report.outputs import report_files
from shiftaudit.report.terminal import comparison_table, describe_shifts
from shiftaudit.result import AuditResult

DESCRIPTION = "built-in demo CNN (VGG-style, circular padding, max-pooling, trained without shift augmentation)"


def demo_dataset(n: int, preprocessing: Any, seed: int | None = None) -> Any:
    import torch  # the data and loading packages import torchvision: loaded when the demo runs, not when the CLI starts

    seed = DEMO_TEST_SEED if seed is None else seed
    images, labels, names = make_synthetic(n, seed=seed)
    ds = load_data((torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels)), preprocessing=preprocessing)
    ds.description = f"synthetic demo set: {n} images, {len(names)} classes (seed {seed})"
    ds.classes = list(names)
    return ds


def explain(result: AuditResult) -> list[str]:
    """What a new user should take away from the numbers, in plain words."""
    lines = []
    acc, cons = result.accuracy, result.consistency
    if acc is not None and cons is not None:
        lines.append(
            f"The model is right on {100 * acc:.1f} % of the images as given. Shift an image by two random offsets "
            f"(wrapping around the border) and it gives the same answer both times only {100 * cons:.1f} % of the "
            f"time: a shift-invariant model would score 100 %."
        )
    curve = result.adversarial_curve
    if curve:
        r1 = result.adversarial_accuracy(1)
        rmax = max(curve)
        if r1 is not None and acc is not None:
            lines.append(
                f"If an adversary may shift each image by at most 1 px, accuracy drops from {100 * acc:.1f} % to "
                f"{100 * r1:.1f} %; at {rmax} px, to {100 * curve[rmax]:.1f} %. The network pads circularly, so no "
                "border effect is involved: every flip is aliasing, from max-pooling that subsamples without a "
                "low-pass filter."
            )
    return lines


@app.command("demo")
@handle_errors
def demo_command(
    images: Annotated[int, typer.Option("--images", "-n", min=1, help="How many synthetic test images to audit.")] = 256,
    max_shift: Annotated[
        int, typer.Option("--max-shift", min=0, max=16, help="Largest shift in px (16 = all 32x32 shifts, the paper's protocol).")
    ] = 16,
    patch_filter: Annotated[
        str | None,
        typer.Option(
            "--patch",
            help="Also anti-alias the demo model with this filter (e.g. tri3), re-estimate its BatchNorm statistics on other "
            "synthetic images, and compare.",
        ),
    ] = None,
    compare_antialiased: Annotated[
        bool,
        typer.Option(
            "--compare-antialiased",
            help="Also audit the shipped demo model trained WITH blur-before-subsampling (same data, seed and schedule) and "
            "compare it with the baseline (and with --patch, if given).",
        ),
    ] = False,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = None,
    out: OutOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Audit the built-in demo model (a small circularly padded CNN trained without shift augmentation) on built-in
    synthetic images, at every circular shift."""
    # everything that can be refused is refused before the first audit, and the outputs are written once every
    # audit is done: a run writes all its outputs or none
    config = PatchConfig(filter=patch_filter, pad="circular") if patch_filter is not None else None
    check_outputs({"--json": json_out}, {"--out": (out, report_files())})
    json_to_stdout(json_out)
    loaded = load_model(demo_checkpoint_path())
    dataset = demo_dataset(images, loaded.preprocessing)
    settings, progress = AuditConfig(max_shift=max_shift, device=device), RichProgress(enabled=not quiet)
    columns: list[tuple[str, AuditResult]] = []
    if config is None:
        result = run_plan(plan_audit(settings, loaded, dataset), progress)
    else:  # the baseline audit is the patch workflow's "before"
        calibration = demo_dataset(512, loaded.preprocessing, seed=DEMO_TRAIN_SEED)
        report = patch_and_evaluate(
            loaded, config, data=dataset, settings=settings, calibration=calibration, control=False, progress=progress
        )
        assert report.comparison is not None
        result, f = report.comparison.before, report.patch.config.filter
        name = f"Patched post hoc ({f}, new BN stats)" if compare_antialiased else f"Patched ({f}, BN re-estimated)"
        columns.append((name, report.comparison.after))
    result.model.update(description=DESCRIPTION, source="built-in demo.safetensors")
    columns.insert(0, ("Baseline", result))
    if compare_antialiased:
        trained = load_model(demo_aa_checkpoint_path())
        aa_filter = (trained.patch_spec or {}).get("filter", "blur")
        columns.append((f"Trained with blur ({aa_filter})", run_plan(plan_audit(settings, trained, dataset), progress)))
    code = report_result(result, json_out=json_out, out=out, quiet=quiet, dataset=dataset)
    if not quiet:
        console.print()
        for line in explain(result):
            console.print(line, soft_wrap=False)
        console.print()
    if len(columns) > 1:
        console.print(
            comparison_table(
                columns, title=f"Before / after: {result.data.get('description')}; {describe_shifts(result)}", width=console.width
            )
        )
        console.print()
    if not quiet:
        console.print(
            "Next: `shiftaudit demo --compare-antialiased` compares a model trained with anti-aliasing "
            "(blur before subsampling); `shiftaudit demo --patch tri3` patches this one after training; "
            "`shiftaudit inspect MODEL` shows where a network downsamples; `shiftaudit eval MODEL --data DIR` "
            "audits your own model."
        )
    raise typer.Exit(code)
