"""Write a fixed set of JSON reports, so a refactor can be shown to change no report byte.

Every engine path and command that writes a report runs once on small files made here (no download): the demo
(polyphase), dense circular, sampled, crop, sub-pixel, per-layer distances, unlabelled data, a gate, adversary early
exit, ``patch --eval`` and ``compare``. The measured seconds (``timing``, latency) and the versions
(``environment``) are the only parts of a report that change from run to run; they are dropped, the temporary folder's
name is replaced by ``WORK``, and the key order is kept.

Usage: ``PYTHONPATH=. python scripts/golden_reports.py OUT_DIR`` from the checkout to test, before and after a change,
then ``diff -r BEFORE AFTER``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

VOLATILE = {"timing", "environment", "latency", "latency_ms", "seconds", "images_per_s", "forwards_per_s"}


def scrub(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj


def make_inputs(work: Path) -> dict[str, Path]:
    """A zero-padded resnet18 (4 classes, seeded) as a state dict, and labelled and unlabelled 40x40 image files."""
    import torchvision

    from shiftaudit.data.synthetic import make_synthetic

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    ckpt = work / "resnet18.pt"
    torch.save(model.state_dict(), ckpt)
    pixels, labels, _ = make_synthetic(12, size=40, seed=3)
    images = torch.as_tensor(pixels).permute(0, 3, 1, 2).float() / 255
    labels = labels % 4
    data = work / "images.pt"
    torch.save({"images": images, "labels": torch.as_tensor(labels)}, data)
    unlabelled = work / "unlabelled.pt"
    torch.save({"images": images}, unlabelled)
    return {"ckpt": ckpt, "data": data, "unlabelled": unlabelled}


def shiftaudit(*args: object) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "shiftaudit", *map(str, args)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr}")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        f = make_inputs(work)
        model = [f["ckpt"], "--arch", "resnet18", "--num-classes", "4", "--raw", "--device", "cpu"]
        runs: dict[str, list[object]] = {
            "demo": ["demo", "-n", "16", "--device", "cpu"],
            "demo_patch": ["demo", "-n", "8", "--max-shift", "3", "--patch", "tri3", "--device", "cpu"],
            "dense": [
                "eval",
                *model,
                "--data",
                f["data"],
                "--max-shift",
                "2",
                "--min-consistency",
                "0.5",
                "--min-adv-accuracy",
                "1=0.1",
                "--max-variation",
                "0.5",
            ],
            "sampled": ["eval", *model, "--data", f["data"], "--mode", "sampled", "--pairs", "3", "--seed", "7"],
            "grid": ["eval", *model, "--data", f["data"], "--max-shift", "8", "--shift-step", "4"],
            "crop": ["eval", *model, "--data", f["data"], "--shift-mode", "crop", "--max-shift", "2"],
            "subpixel": [
                "eval",
                *model,
                "--data",
                f["data"],
                "--shift-mode",
                "subpixel",
                "--max-shift",
                "1",
                "--shift-step",
                "0.5",
            ],
            "layers": ["eval", *model, "--data", f["data"], "--max-shift", "1", "--layers", "auto", "--limit", "4"],
            "unlabelled": ["eval", *model, "--data", f["unlabelled"], "--max-shift", "2"],
        }
        for name, args in runs.items():
            shiftaudit(*args, "--json", work / f"{name}.json")
        shiftaudit(
            "patch",
            *model[:5],
            "-o",
            work / "patched.safetensors",
            "--eval",
            "--data",
            f["data"],
            "--raw",
            "--max-shift",
            "2",
            "--device",
            "cpu",
            "--json",
            work / "patch.json",
        )
        shiftaudit("compare", work / "dense.json", work / "grid.json", "--json", work / "compare.json")
        early_exit(f, work / "early_exit.json")
        for path in sorted(work.glob("*.json")):  # the temporary folder's name differs from run to run
            report = scrub(json.loads(path.read_text().replace(str(work), "WORK")))
            (out / path.name).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {len(list(out.glob('*.json')))} reports to {out}")


def early_exit(f: dict[str, Path], path: Path) -> None:
    """Adversary early exit is API-only: an adversarial-curve audit through :func:`shiftaudit.audit`."""
    import shiftaudit
    from shiftaudit.metrics import AccuracyAtZeroShift, AdversarialCurve
    from shiftaudit.shifts.sets import ShiftSet

    torch.set_num_threads(1)
    loaded = shiftaudit.load_model(f["ckpt"], arch="resnet18", num_classes=4)
    saved = torch.load(f["data"])
    shifts = ShiftSet.window((40, 40), 2)
    result = shiftaudit.audit(
        loaded,
        (saved["images"], saved["labels"]),
        shifts=shifts,
        device="cpu",
        metrics=[AccuracyAtZeroShift(), AdversarialCurve(shifts)],
        early_exit=True,
    )
    path.write_text(json.dumps(result.to_json()))
    np.testing.assert_equal(result.settings["engine"], "early-exit")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
