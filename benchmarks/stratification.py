"""Would stratified draws help the sequential gate? The share of an observation's variance that lies between images.

The sequential gate (``shiftaudit.engine.sequential``) draws images uniformly with replacement and a shift pair per
draw, so its observations are i.i.d. and the betting confidence sequence is anytime-valid. Drawing images in
stratified cycles (each image once per cycle) can remove at most the between-image part of the variance of a
pair-agreement observation: ``Var_i(c_i) / (m (1 - m))``, with ``c_i`` an image's exact consistency and ``m`` their
mean. This script measures that share on the two models of ``benchmarks.bench_sequential``.

``python -m benchmarks.stratification`` (one thread; about a minute on a 2-core VM).
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.bench_sequential import _demo_zero, _resnet18
from shiftaudit.engine.runner import audit
from shiftaudit.shifts.sets import ShiftSet


def between_image_share(consistency: np.ndarray) -> float:
    """Var over images of the per-image agreement probability, over the variance of one agreement indicator."""
    m = float(consistency.mean())
    return float(consistency.var()) / (m * (1.0 - m)) if 0.0 < m < 1.0 else 0.0


def run() -> list[dict[str, float | str]]:
    cases = [
        ("demo_zero_pad, 128 images, window 8", _demo_zero(128), lambda s: ShiftSet.window(s, 8)),
        ("resnet18 64 px, 48 images, window 16 step 8", _resnet18(48, 64), lambda s: ShiftSet.window(s, 16, 8)),
    ]
    rows: list[dict[str, float | str]] = []
    for name, build, shifts in cases:
        model, x, y = build()
        r = audit(model, (x, y), shifts=shifts((x.shape[-2], x.shape[-1])), device="cpu", batch_size=64, mode="exhaustive")
        c = np.asarray(r.per_image["exact_consistency"], dtype=float)
        rows.append(
            {
                "case": name,
                "consistency": float(c.mean()),
                "between_image_share": between_image_share(c),
                "fully_consistent_images": float(np.mean(c == 1.0)),
            }
        )
    return rows


if __name__ == "__main__":
    torch.set_num_threads(1)
    for row in run():
        print(
            f"{row['case']}: consistency {row['consistency']:.4f}, between-image share {row['between_image_share']:.3f}, "
            f"fully consistent images {row['fully_consistent_images']:.2f}"
        )
