"""``shiftaudit demo``: the whole audit on a model and data that ship with the package. No files, no downloads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..result import AuditResult
from . import app
from .common import DeviceOpt, console, handle_errors
from .eval_cmd import JsonOpt, OutOpt, QuietOpt, report_result


def demo_dataset(n: int, preprocessing: Any) -> Any:
    import torch

    from ..data import load_data
    from ..models.demo import DEMO_TEST_SEED
    from ..synthetic import make_synthetic

    images, labels, names = make_synthetic(n, seed=DEMO_TEST_SEED)
    ds = load_data((torch.from_numpy(images), torch.from_numpy(labels)), preprocessing=preprocessing)
    ds.description = f"synthetic demo set: {n} images, {len(names)} classes (seed {DEMO_TEST_SEED})"
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
        if r1 is not None:
            lines.append(
                f"If an adversary may shift each image by at most 1 px, accuracy drops to {100 * r1:.1f} %; at "
                f"{rmax} px, to {100 * curve[rmax]:.1f} %. The cause is aliasing: strided pooling samples without a low-pass filter."
            )
    return lines


@app.command("demo")
@handle_errors
def demo_command(
    images: Annotated[int, typer.Option("--images", "-n", min=1, help="How many synthetic test images to audit.")] = 256,
    max_shift: Annotated[int, typer.Option("--max-shift", min=0, max=16, help="Largest shift in px (16 = all 32x32 shifts).")] = 8,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = None,
    out: OutOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Audit the built-in demo model (a small CNN trained without shift augmentation) on built-in synthetic images."""
    from ..engine import audit
    from ..loading import load_model
    from ..models.demo import demo_checkpoint_path
    from .progress import RichProgress

    loaded = load_model(demo_checkpoint_path())
    dataset = demo_dataset(images, loaded.preprocessing)
    result = audit(loaded, dataset, max_shift=max_shift, device=device, progress=RichProgress(enabled=not quiet))
    result.model["description"] = "built-in demo CNN (VGG-style, max-pooling, trained without shift augmentation)"
    code = report_result(result, json_out=json_out, out=out, quiet=quiet)
    if not quiet:
        console.print()
        for line in explain(result):
            console.print(line, soft_wrap=False)
        console.print()
        console.print("Next: `shiftaudit inspect MODEL` shows where a network downsamples; `shiftaudit eval MODEL --data DIR` audits your own model.")
    raise typer.Exit(code)
