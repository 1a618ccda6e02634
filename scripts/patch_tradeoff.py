"""The post-hoc patch trade-off on the packaged demo model: for each filter, accuracy and consistency of the patched
model as patched, with the BatchNorms after the blur re-estimated, and distilled (label-free) from the original.

    python scripts/patch_tradeoff.py [--filters rect2,tri3,binomial5] [--steps 300] [--seconds 120]

Test set: the demo's 256 test images (seed 90210), every circular shift. Unlabelled images for re-estimation and
distillation: 512 synthetic images of the training seed (1), labels unused. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses

import torch

from shiftaudit.antialias import PatchConfig, distill, patch_model, recalibrate_batchnorm, top1_agreement
from shiftaudit.cli.demo_cmd import demo_dataset
from shiftaudit.engine.runner import audit
from shiftaudit.loading import load_model
from shiftaudit.models.demo import DEMO_TRAIN_SEED, demo_checkpoint_path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--filters", default="rect2,tri3,binomial5")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = load_model(demo_checkpoint_path())
    test = demo_dataset(256, base.preprocessing)
    unlabelled = demo_dataset(512, base.preprocessing, seed=DEMO_TRAIN_SEED)

    def row(name: str, model: torch.nn.Module, extra: str = "") -> None:
        r = audit(dataclasses.replace(base, model=model), test, device="cpu")
        agree = top1_agreement(base.model, model, test)
        print(
            f"| {name} | {100 * r.accuracy:.1f} | {100 * r.consistency_exact:.2f} | {r.variation:.4f} "
            f"| {100 * agree:.1f} | {extra} |",
            flush=True,
        )

    print("| Model | Top-1 % | Consistency % (exact) | Variation | Agreement with original % | Repair |")
    print("|---|---:|---:|---:|---:|---|")
    row("original", base.model)
    control = copy.deepcopy(base.model)
    for filt in args.filters.split(","):
        cfg = PatchConfig(filter=filt, pad="circular")
        plain = patch_model(base.model, cfg).model
        row(f"{filt}, as patched", plain)
        recal = copy.deepcopy(plain)
        rec = recalibrate_batchnorm(recal, unlabelled, num_images=512, seed=0)
        row(f"{filt}, BN after blur re-estimated", recal, f"{len(rec.layers)} BN layers, {rec.images} images")
        d = distill(base.model, plain, unlabelled, steps=args.steps, seconds=args.seconds, seed=0)
        row(
            f"{filt}, distilled",
            plain,
            f"{d.steps} steps, {d.seconds:.0f} s, "
            f"held-out agreement {100 * d.agreement_before:.1f} -> {100 * d.agreement_after:.1f} %",
        )
    rec = recalibrate_batchnorm(control, unlabelled, num_images=512, seed=0, layers="all")
    row("original, every BN re-estimated (control)", control, f"{len(rec.layers)} BN layers, {rec.images} images")


if __name__ == "__main__":
    main()
