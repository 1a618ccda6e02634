"""The benchmark suite: the all-shift audit against the naive loop of the papers' scripts, in one run.

``python -m benchmarks.run [--quick] [--out bench-results/]`` (``make bench``) times, on the same inputs:

- the engine's all-shift audit (images x shifts per second, every metric from one batched pass);
- the naive reference: one shift per forward (``torch.roll`` of the whole image batch), in two flavours:
  ``naive_shared`` runs one pass and computes each metric from the stored predictions; ``naive_per_metric`` runs one
  pass per all-shift metric (exact consistency, variation, adversarial curve, accuracy map, 1-px flip rate), as
  separate evaluation scripts do. The naive loops are timed on a prefix of the shift set (their cost per shift is
  constant) and leave out the few single-shift passes of the random-draw metrics, which only flatters them;
- the dense engine against the naive loop at the *same* device batch (the same (image, shift) rows, each made by
  ``torch.roll`` and stacked per forward), with and without ``pack_rows``, on the shift prefix: the engine's own
  contribution, without the batch-size effect;
- the polyphase engine against the same loops on the circular VGG-13;
- adversary early exit against the full adversarial run (forwards saved, same curve) on the trained demo model;
- BlurPool2d forms (``benchmarks.bench_blurpool``);
- a patched resnet18 against the original, 224 px, batch 1 and 8 (``benchmarks.bench_patched``);
- time to a gate verdict: the sequential gate against the full audit (``benchmarks.bench_sequential``);
- whole audits through each backend (eager torch, OpenVINO, ONNX Runtime; export included), and the default audit
  before and after ``--backend auto`` and the default thread count (``benchmarks.bench_backends``).

Results go to ``OUT/bench.json`` (written atomically) and a table. One intra-op thread by default: on a shared
machine spinning OpenMP threads make small-batch timings erratic (the naive loop would look far worse than it is).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks import bench_backends
from shiftaudit.engine.runner import audit
from shiftaudit.files import write_json_atomic
from shiftaudit.shifts.sets import ShiftSet

SCHEMA = "shiftaudit/bench"
NAIVE_METRICS = ("consistency_exact", "variation", "adversarial", "accuracy_map", "flip_rate")


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]
    size: int
    shifts: Callable[[tuple[int, int]], ShiftSet]
    images: int
    naive_shifts: int  # prefix of the shift set the naive loops are timed on
    polyphase: bool = False


@dataclass(frozen=True)
class Config:
    cases: tuple[Case, ...]
    early_exit_images: int
    early_exit_shift: int | None  # max shift of the early-exit run (None: all shifts)
    blur_quick: bool


def _vgg(circular: bool) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from shiftaudit.models import vgg13_cifar

        return vgg13_cifar(num_classes=10, circular=circular)

    return build


def _resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=1000)


def _all(size: tuple[int, int]) -> ShiftSet:
    return ShiftSet.all_shifts(size)


def _grid(max_shift: int, step: int) -> Callable[[tuple[int, int]], ShiftSet]:
    return lambda size: ShiftSet.window(size, max_shift, step)


def config(mode: str) -> Config:
    if mode == "tiny":  # for tests: the structure of every section, in seconds
        return Config(
            cases=(
                Case("vgg13_cifar", _vgg(False), 32, _grid(1, 1), 1, 2),
                Case("vgg13_cifar_circular", _vgg(True), 32, _all, 1, 2, polyphase=True),
                Case("resnet18", _resnet18, 32, _grid(2, 2), 1, 2),
            ),
            early_exit_images=4,
            early_exit_shift=3,
            blur_quick=True,
        )
    quick = mode == "quick"
    cases = [
        Case("vgg13_cifar", _vgg(False), 32, _all, 2 if quick else 4, 32 if quick else 128),
        Case("vgg13_cifar_circular", _vgg(True), 32, _all, 2 if quick else 4, 32 if quick else 64, polyphase=True),
        Case("resnet18", _resnet18, 64, _grid(16, 4), 2 if quick else 4, 16 if quick else 81),
    ]
    if not quick:
        cases.append(Case("resnet18", _resnet18, 224, _grid(16, 8), 2, 25))
    return Config(tuple(cases), early_exit_images=8 if quick else 16, early_exit_shift=None, blur_quick=quick)


# ---------------------------------------------------------------------------------------------------------------
# The naive reference
# ---------------------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_pass(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, shifts: ShiftSet, ks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One forward per shift of the whole image batch, rolled by torch.roll: (N, K) predictions and P(label)."""
    preds, plab = [], []
    with torch.inference_mode():
        for k in ks:
            logits = model(torch.roll(x, (int(shifts.dh[k]), int(shifts.dw[k])), (-2, -1)))
            p = torch.softmax(logits.float(), 1)
            preds.append(p.argmax(1).cpu())
            plab.append(p.gather(1, y[:, None])[:, 0].cpu())
    return torch.stack(preds, 1).numpy(), torch.stack(plab, 1).numpy()


def naive_metric(
    name: str, preds: np.ndarray, plab: np.ndarray, y: np.ndarray, radius: np.ndarray, dh: np.ndarray, dw: np.ndarray
) -> Any:
    """Each all-shift metric as an evaluation script computes it from its table of predictions."""
    correct = preds == y[:, None]
    if name == "consistency_exact":
        return float(np.mean([sum(np.mean(row == c) ** 2 for c in np.unique(row)) for row in preds]))
    if name == "variation":
        return float(plab.std(axis=1).mean())
    if name == "adversarial":
        return [float(np.mean([correct[i, radius <= r].all() for i in range(len(y))])) for r in np.unique(radius)]
    if name == "flip_rate":  # prediction changes between shifts one pixel apart
        index = {(int(a), int(b)): i for i, (a, b) in enumerate(zip(dh, dw))}
        pairs = [(i, index[(a + 1, b)]) for (a, b), i in index.items() if (a + 1, b) in index]
        pairs += [(i, index[(a, b + 1)]) for (a, b), i in index.items() if (a, b + 1) in index]
        return float(np.mean([[row[i] != row[j] for i, j in pairs] for row in preds])) if pairs else 0.0
    return correct.mean(axis=0).tolist()  # accuracy map


def time_naive(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, shifts: ShiftSet, n_shifts: int, per_metric: bool
) -> dict[str, Any]:
    ks = np.arange(min(n_shifts, len(shifts)))
    y_np = y.cpu().numpy()
    _sync(x.device)
    t0 = time.perf_counter()
    passes = len(NAIVE_METRICS) if per_metric else 1
    if per_metric:
        for name in NAIVE_METRICS:
            preds, plab = naive_pass(model, x, y, shifts, ks)
            naive_metric(name, preds, plab, y_np, shifts.radius[ks], shifts.dh[ks], shifts.dw[ks])
    else:
        preds, plab = naive_pass(model, x, y, shifts, ks)
        for name in NAIVE_METRICS:
            naive_metric(name, preds, plab, y_np, shifts.radius[ks], shifts.dh[ks], shifts.dw[ks])
    _sync(x.device)
    dt = time.perf_counter() - t0
    pairs = x.shape[0] * len(ks)
    return {"shifts_timed": int(len(ks)), "passes": passes, "seconds": dt, "pairs_per_s": pairs / dt}


def naive_batched(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, shifts: ShiftSet, ks: np.ndarray, batch: int
) -> dict[str, Any]:
    """The naive loop at the engine's batch size: the same (image, shift) rows, image-major, each made by torch.roll
    and stacked ``batch`` rows per forward; the engine's equal-batch reference."""
    rows = [(i, int(shifts.dh[k]), int(shifts.dw[k])) for i in range(x.shape[0]) for k in ks]
    _sync(x.device)
    t0 = time.perf_counter()
    preds = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            inputs = torch.stack([torch.roll(x[i], (dh, dw), (-2, -1)) for i, dh, dw in chunk])
            p = torch.softmax(model(inputs).float(), 1)
            labels = y[torch.as_tensor([i for i, _, _ in chunk], device=x.device)]
            preds.append((p.argmax(1).cpu(), p.gather(1, labels[:, None])[:, 0].cpu()))
    _sync(x.device)
    dt = time.perf_counter() - t0
    return {"shifts_timed": int(len(ks)), "batch": batch, "seconds": dt, "pairs_per_s": len(rows) / dt}


# ---------------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------------


def time_engine(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, shifts: ShiftSet, device: torch.device, **kw: Any
) -> dict[str, Any]:
    _sync(device)
    t0 = time.perf_counter()
    r = audit(model, (x, y), shifts=shifts, mode="exhaustive", device=device, **kw)
    _sync(device)
    dt = time.perf_counter() - t0
    pairs = x.shape[0] * len(shifts)
    return {
        "strategy": r.settings["engine"],
        "seconds": dt,
        "pairs_per_s": pairs / dt,
        "forward_rows": int(r.timing["forward_rows"]),
        "device_batch": int(r.settings["device_batch"]),
    }


def run_case(case: Case, device: torch.device, seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = case.build().eval().to(device)
    size = (case.size, case.size)
    shifts = case.shifts(size)
    x = torch.randn(case.images, 3, *size, device=device)
    y = torch.randint(0, 10, (case.images,), device=device)
    out: dict[str, Any] = {
        "name": case.name,
        "image_size": list(size),
        "shifts": len(shifts),
        "shift_set": shifts.describe(),
        "images": case.images,
    }
    with torch.inference_mode():  # warm-up: oneDNN picks its kernels on the first call of each shape
        model(x)
        model(x[:1])
    out["engine"] = time_engine(model, x, y, shifts, device, polyphase=case.polyphase)
    # the dense engine on the naive loops' shift prefix, against the naive loop at the same device batch
    sub = ShiftSet.from_offsets(size, list(zip(shifts.dh[: case.naive_shifts], shifts.dw[: case.naive_shifts])))
    dense = time_engine(model, x, y, sub, device, polyphase=False, pack_rows=False)
    packed = time_engine(model, x, y, sub, device, polyphase=False, pack_rows=True)
    naive_eq = naive_batched(model, x, y, sub, np.arange(len(sub)), dense["device_batch"])
    out["equal_batch"] = {
        "engine": dense,
        "engine_packed": packed,
        "naive": naive_eq,
        "speedup": dense["pairs_per_s"] / naive_eq["pairs_per_s"],
        "speedup_packed": packed["pairs_per_s"] / naive_eq["pairs_per_s"],
    }
    if case.polyphase:
        out["engine_dense"] = dense
    out["naive_shared"] = time_naive(model, x, y, shifts, case.naive_shifts, per_metric=False)
    out["naive_per_metric"] = time_naive(model, x, y, shifts, case.naive_shifts, per_metric=True)
    rate = out["engine"]["pairs_per_s"]
    out["speedup_vs_naive_shared"] = rate / out["naive_shared"]["pairs_per_s"]
    out["speedup_vs_naive_per_metric"] = rate / out["naive_per_metric"]["pairs_per_s"]
    if "engine_dense" in out:
        out["speedup_vs_engine_dense"] = rate / out["engine_dense"]["pairs_per_s"]
    return out


def run_early_exit(images: int, max_shift: int | None, device: torch.device) -> dict[str, Any]:
    """The trained demo model on its synthetic test images: adversarial curve with and without early exit (both
    dense: the demo model is circular, so an all-shift run would otherwise go polyphase and exit nothing early)."""
    from shiftaudit.cli.demo_cmd import demo_dataset
    from shiftaudit.loading import load_model
    from shiftaudit.metrics import AccuracyAtZeroShift, AdversarialCurve
    from shiftaudit.models import demo_checkpoint_path

    loaded = load_model(demo_checkpoint_path())
    data = demo_dataset(images, loaded.preprocessing)
    size = tuple(data.image_size)
    shifts = ShiftSet.all_shifts(size) if max_shift is None else ShiftSet.window(size, max_shift)
    runs = {}
    for key, flag in (("full", False), ("early_exit", True)):
        t0 = time.perf_counter()
        r = audit(
            loaded,
            data,
            shifts=shifts,
            device=device,
            early_exit=flag,
            polyphase=False,
            metrics=[AdversarialCurve(shifts), AccuracyAtZeroShift()],
        )
        runs[key] = (time.perf_counter() - t0, r)
    (tf, full), (te, fast) = runs["full"], runs["early_exit"]
    return {
        "model": "demo_cnn (trained, packaged)",
        "images": images,
        "shifts": len(shifts),
        "full": {"seconds": tf, "forwards": int(full.timing["forward_rows"])},
        "early_exit": {"seconds": te, "forwards": int(fast.timing["forward_rows"]), "strategy": fast.settings["engine"]},
        "forwards_saved": 1.0 - fast.timing["forward_rows"] / max(1.0, full.timing["forward_rows"]),
        "speedup": tf / te,
        "identical_curve": fast.metrics["adversarial"] == full.metrics["adversarial"],
        "adversarial_accuracy": full.metrics["adversarial"]["accuracy"],
    }


def run_blurpool(quick: bool) -> dict[str, Any]:
    from benchmarks import bench_blurpool

    res = bench_blurpool.run(quick=quick)
    worst = 0.0  # how much slower the library's form is than the best alternative, over every row (< 1 is faster)
    by_key: dict[tuple[Any, ...], dict[str, float]] = {}
    for r in res["rows"]:
        by_key.setdefault((tuple(r["shape"]), r["filter"], r["pad"]), {})[r["form"]] = r["ms"]
    layer = 0.0  # the library's BlurPool2d layer against the fastest third-party layer (kernels built once by all)
    for forms in by_key.values():
        others = [v for k, v in forms.items() if k not in ("strided", "module")]
        if others:
            worst = max(worst, forms["strided"] / min(others))
        third = [v for k, v in forms.items() if k not in ("strided", "module", "separable", "naive")]
        if third and "module" in forms:
            layer = max(layer, forms["module"] / min(third))
    res["strided_vs_best_alternative"] = worst
    res["module_vs_best_third_party"] = layer or None  # None when no third-party package is installed
    return res


def run_patched(quick: bool) -> dict[str, Any]:
    """Patched vs original resnet18 latency; ``patched_vs_original`` maps each batch size to the median ratio."""
    from benchmarks import bench_patched

    res = bench_patched.run(quick=quick)
    res["patched_vs_original"] = {str(r["batch"]): r["ratio"] for r in res["rows"] if r["model"] == "patched"}
    return res


def machine(device: torch.device) -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device.type,
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def run(
    mode: str = "default",
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
    starting: tuple[int, int] | None = None,
) -> dict[str, Any]:
    dev = torch.device(device)
    cfg = config(mode)
    say = progress or (lambda _: None)
    t0 = time.perf_counter()
    cases = []
    for case in cfg.cases:
        say(f"{case.name} {case.size}x{case.size}")
        cases.append(run_case(case, dev))
    say("adversary early exit")
    early = run_early_exit(cfg.early_exit_images, cfg.early_exit_shift, dev)
    say("BlurPool2d forms")
    blur = run_blurpool(cfg.blur_quick)
    say("patched resnet18 latency")
    patched = run_patched(cfg.blur_quick)
    say("sequential gate: time to a verdict")
    from benchmarks import bench_sequential

    sequential = bench_sequential.run(mode)
    backends = bench_backends.run(mode, say, starting) if dev.type == "cpu" else None  # the runtimes run on the CPU
    main = next(c for c in cases if c["name"] == "vgg13_cifar")
    circ = next(c for c in cases if c["name"] == "vgg13_cifar_circular")
    return {
        "schema": SCHEMA,
        "schema_version": 1,
        "mode": mode,
        "machine": machine(dev),
        "cases": cases,
        "early_exit": early,
        "blurpool": blur,
        "patched": patched,
        "sequential": sequential,
        "backends": backends,
        "summary": {
            "engine_vs_naive_per_metric": main["speedup_vs_naive_per_metric"],
            "engine_vs_naive_shared": main["speedup_vs_naive_shared"],
            "engine_vs_naive_equal_batch": {c["name"] + f"_{c['image_size'][0]}": c["equal_batch"]["speedup"] for c in cases},
            "polyphase_vs_naive_per_metric": circ["speedup_vs_naive_per_metric"],
            "polyphase_vs_naive_shared": circ["speedup_vs_naive_shared"],
            "polyphase_vs_engine_dense": circ.get("speedup_vs_engine_dense"),
            "early_exit_forwards_saved": early["forwards_saved"],
            "blurpool_strided_vs_best_alternative": blur["strided_vs_best_alternative"],
            "blurpool_module_vs_best_third_party": blur["module_vs_best_third_party"],
            "patched_vs_original": patched["patched_vs_original"],
            "sequential_forwards_ratio": {
                f"{c['name']} d={r['margin']:g} {r['full_verdict']}": r["forwards_ratio"]
                for c in sequential["cases"]
                for r in c["rows"]
            },
            "sequential_agreement": min((r["agreement"] for c in sequential["cases"] for r in c["rows"]), default=None),
            "backend_best_vs_torch": backends and backends["best_speedup_vs_torch"],
            "backend_all_shift_vs_naive_equal_batch": backends and backends["best_all_shift_vs_naive_equal_batch"],
            "backend_default_audit_speedup": backends and backends["defaults"]["speedup"],
            "seconds": time.perf_counter() - t0,
        },
    }


def print_tables(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    m = result["machine"]
    con = Console(width=max(140, Console().width))
    t = Table(
        title=f"All-shift audit, {m['device']} ({m['processor']}, {m['threads']} thread(s)), torch {m['torch']}: "
        "images x shifts per second",
        title_justify="left",
    )
    for col in (
        "Model",
        "Size",
        "Shifts",
        "Images",
        "Engine",
        "pairs/s",
        "naive 1 pass",
        "naive per metric",
        "x vs 1 pass",
        "x vs per metric",
    ):
        t.add_column(col, justify="left" if col in ("Model", "Engine") else "right")
    for c in result["cases"]:
        t.add_row(
            c["name"],
            f"{c['image_size'][0]}",
            str(c["shifts"]),
            str(c["images"]),
            c["engine"]["strategy"],
            f"{c['engine']['pairs_per_s']:.0f}",
            f"{c['naive_shared']['pairs_per_s']:.0f}",
            f"{c['naive_per_metric']['pairs_per_s']:.0f}",
            f"{c['speedup_vs_naive_shared']:.1f}",
            f"{c['speedup_vs_naive_per_metric']:.1f}",
        )
    con.print(t)
    q = Table(
        title="Dense engine vs the naive roll loop at the same device batch (same rows, shift prefix)", title_justify="left"
    )
    for col in ("Model", "Size", "Shifts", "Batch", "engine pairs/s", "packed pairs/s", "naive pairs/s", "x", "x packed"):
        q.add_column(col, justify="left" if col == "Model" else "right")
    for c in result["cases"]:
        eq = c["equal_batch"]
        q.add_row(
            c["name"],
            f"{c['image_size'][0]}",
            str(eq["naive"]["shifts_timed"]),
            str(eq["naive"]["batch"]),
            f"{eq['engine']['pairs_per_s']:.0f}",
            f"{eq['engine_packed']['pairs_per_s']:.0f}",
            f"{eq['naive']['pairs_per_s']:.0f}",
            f"{eq['speedup']:.2f}",
            f"{eq['speedup_packed']:.2f}",
        )
    con.print(q)
    e = result["early_exit"]
    con.print(
        f"adversary early exit ({e['model']}, {e['images']} images x {e['shifts']} shifts): "
        f"{e['early_exit']['forwards']} of {e['full']['forwards']} forwards "
        f"({100 * e['forwards_saved']:.1f}% saved), {e['speedup']:.1f}x faster, same curve: {e['identical_curve']}"
    )
    from benchmarks.bench_blurpool import _print

    _print(result["blurpool"])
    from benchmarks.bench_patched import print_table

    print_table(result["patched"])
    from benchmarks.bench_sequential import print_table as print_sequential

    print_sequential(result["sequential"])
    if result.get("backends"):
        bench_backends.print_tables(result["backends"])
    s = result["summary"]
    con.print(
        f"engine vs naive: {s['engine_vs_naive_per_metric']:.1f}x (per-metric passes), "
        f"{s['engine_vs_naive_shared']:.1f}x (one shared pass); polyphase vs naive: "
        f"{s['polyphase_vs_naive_per_metric']:.1f}x / {s['polyphase_vs_naive_shared']:.1f}x; "
        f"BlurPool2d strided / best alternative: {s['blurpool_strided_vs_best_alternative']:.2f}; "
        f"BlurPool2d layer / best third-party layer: {s['blurpool_module_vs_best_third_party'] or float('nan'):.2f}; "
        f"patched / original resnet18 (batch: ratio): {s['patched_vs_original']}; "
        f"{s['seconds']:.0f} s in all"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer images and shifts, no 224x224 case (about a minute)")
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the test suite's smoke run
    ap.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for bench.json")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (1: steady timings on a shared machine)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    args = ap.parse_args(argv)
    starting = bench_backends.starting_threads()  # before the benchmark's own thread count is set
    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    mode = "tiny" if args.tiny else "quick" if args.quick else "default"
    result = run(mode, args.device, progress=lambda s: print(f"... {s}", flush=True), starting=starting)
    path = write_json_atomic(args.out / "bench.json", result)
    print_tables(result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
