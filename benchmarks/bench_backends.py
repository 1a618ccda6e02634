"""Whole audits through each backend: eager torch against OpenVINO and ONNX Runtime, export included, equal batch.

``python -m benchmarks.bench_backends [--quick] [--threads N] [--out DIR]`` (also a section of ``make bench``):

- ``audits``: the default audit (``shiftaudit.audit`` with the default shift set of 224 px: +-16 px, step 4, 81
  shifts, exhaustive) of resnet18, mobilenet_v3_small and EfficientNet-Lite0 (timm's ``efficientnet_lite0``, built
  with random weights: nothing is downloaded; left out without timm) on random images, once per backend (``torch``
  and each installed runtime), at the same device batch and thread count. Each time is the whole ``audit()`` call,
  so a runtime's export, compile and probe are in it (also reported on their own). Each runtime's report is compared
  with torch's: predictions identical (accuracy, consistency, adversarial curve, accuracy map, flips, per image) and
  the largest difference of any other number;
- ``all_shift``: the zero-padded VGG-13 (CIFAR, 32 px, all 1024 shifts, where the polyphase engine does not apply)
  through each backend against the naive eager loop at the same batch (``benchmarks.run.naive_batched``: the same
  (image, shift) rows, rolled and stacked, on a prefix of the shift set);
- ``forwards``: the forward pass alone at the device batch (16 at 224 px, 64 at 32 px) of every model above, torch
  against each runtime with the exported free batch axis (what audits run) and with the batch fixed at the device
  batch (OpenVINO's ``reshape``, ONNX Runtime's free-dimension override): the runtime's ceiling on a whole audit, and
  whether a static export would pay. Calls are interleaved and each contender's best of ``repeats`` is kept
  (``torch.utils.benchmark`` times each), which a shared machine's drift affects least;
- ``defaults``: resnet18's default audit as ``shiftaudit eval`` ran it before ``--backend`` and ``--threads``
  (torch on torch's own thread count when the process started) against ``--backend auto`` on the new default thread
  count (:func:`shiftaudit.engine.threads.default_threads`, measured when the benchmark starts), on 12 images
  (972 rows: long enough that auto exports, where 4 images on an idle machine's two threads are not): what a user of
  the defaults gains on this machine, the thread fix included.

Random weights, one run each (no repeats: a default audit of resnet18 takes tens of seconds); the threads are the
benchmark's (1 by default, as ``benchmarks.run``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shiftaudit.engine.backends import RUNTIMES, OpenVino
from shiftaudit.engine.runner import audit
from shiftaudit.engine.threads import default_threads
from shiftaudit.files import write_json_atomic
from shiftaudit.shifts.sets import ShiftSet

DEFAULTS_IMAGES = {"default": 12, "tiny": 2}  # the defaults section: 972 rows, about 50 s of torch on two threads here
PREDICTIONS = ("accuracy", "consistency", "adversarial", "accuracy_map", "flip_examples", "flip_rate")
PER_IMAGE = ("correct", "sampled_agreement", "exact_consistency", "first_failure_radius")


@dataclass(frozen=True)
class Model:
    name: str
    build: Callable[[], nn.Module]
    size: int
    images: int
    max_shift: int | None = None  # None: the default shift set of the size
    shift_step: int | None = None


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None)

    return build


def _lite0() -> nn.Module:
    import timm

    return timm.create_model("efficientnet_lite0", pretrained=False)


def _vgg13() -> nn.Module:
    from shiftaudit.models import vgg13_cifar

    return vgg13_cifar(num_classes=10, circular=False)


def models(mode: str) -> tuple[list[Model], Model, int]:
    """The audited models, the all-shift case and its naive loop's shift prefix, by mode."""
    names = ["resnet18", "mobilenet_v3_small"]
    builds: list[tuple[str, Callable[[], nn.Module]]] = [(n, _torchvision(n)) for n in names]
    if importlib.util.find_spec("timm") is not None:
        builds.append(("efficientnet_lite0", _lite0))
    if mode == "tiny":  # for tests: every code path in seconds
        return [Model(n, b, 32, 1, 1, 1) for n, b in builds[:1]], Model("vgg13_cifar", _vgg13, 32, 1, 1, 1), 4
    if mode == "quick":
        return [Model(n, b, 224, 2, 8, 8) for n, b in builds], Model("vgg13_cifar", _vgg13, 32, 1, 16, 2), 32
    return [Model(n, b, 224, 4) for n, b in builds], Model("vgg13_cifar", _vgg13, 32, 2, None, None), 64


def backends() -> list[str]:
    return ["torch", *(n for n, cls in RUNTIMES.items() if cls.installed())]


def _inputs(case: Model) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(case.images, 3, case.size, case.size, generator=gen)
    return x, torch.randint(0, 10, (case.images,), generator=gen)


def _shift_kw(case: Model) -> dict[str, Any]:
    if case.max_shift is None:
        return {}
    if case.size == 32 and case.max_shift == 16:  # every shift of a 32 px image
        return {"shifts": ShiftSet.all_shifts((case.size, case.size))}
    return {"max_shift": case.max_shift, "shift_step": case.shift_step}


def starting_threads() -> tuple[int, int]:
    """(torch's own thread count, shiftaudit's default one), read before a benchmark sets its own count."""
    return torch.get_num_threads(), default_threads()


def timed_audit(model: nn.Module, data: Any, backend: str, batch: int | None, **kw: Any) -> tuple[float, Any]:
    kw.setdefault("threads", torch.get_num_threads())
    t0 = time.perf_counter()
    result = audit(model, data, device="cpu", backend=backend, batch_size=batch, **kw)
    return time.perf_counter() - t0, result


def differences(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Whether the predictions are identical, and the largest difference of any other number of the reports."""
    same = all(reference["metrics"].get(k) == other["metrics"].get(k) for k in PREDICTIONS)
    same = same and all(reference["per_image"].get(k) == other["per_image"].get(k) for k in PER_IMAGE)
    worst = 0.0

    def walk(a: Any, b: Any) -> None:
        nonlocal worst
        if isinstance(a, dict):
            for k in a:
                walk(a[k], b.get(k) if isinstance(b, dict) else None)
        elif isinstance(a, list) and isinstance(b, list):
            for u, v in zip(a, b):
                walk(u, v)
        elif isinstance(a, float) and isinstance(b, (int, float)):
            worst = max(worst, abs(a - b))

    walk(reference["metrics"], other["metrics"])
    walk(reference["per_image"], other["per_image"])
    return {"identical_predictions": bool(same), "max_float_diff": worst}


def _row(backend: str, seconds: float, result: Any, reference: dict[str, Any] | None) -> dict[str, Any]:
    info = result.settings.get("backend") or {"name": "torch", "export_seconds": None, "probe": None}
    row = {
        "backend": backend,
        "ran_on": info["name"],
        "seconds": seconds,
        "audit_seconds": result.timing["seconds"],
        "export_seconds": info["export_seconds"],
        "probe": info["probe"],
        "pairs_per_s": result.timing["forward_rows_full"] / seconds,
        "device_batch": result.settings["device_batch"],
    }
    if reference is not None:
        row.update(differences(reference, json.loads(json.dumps(result.to_json()))))
    return row


def run_model(case: Model) -> dict[str, Any]:
    torch.manual_seed(0)
    model = case.build().eval()
    data = _inputs(case)
    rows, reference, shifts = [], None, 0
    for backend in backends():
        seconds, result = timed_audit(model, data, backend, None, **_shift_kw(case))
        rows.append(_row(backend, seconds, result, reference))
        if reference is None:
            reference, shifts = json.loads(json.dumps(result.to_json())), int(result.settings["shifts"]["count"])
    for r in rows:
        r["speedup_vs_torch"] = rows[0]["seconds"] / r["seconds"]
    return {"model": case.name, "size": case.size, "images": case.images, "shifts": shifts, "rows": rows}


def run_all_shift(case: Model, naive_shifts: int) -> dict[str, Any]:
    """The zero-padded VGG-13 at every shift through each backend, against the naive eager loop at equal batch."""
    from benchmarks.run import naive_batched

    torch.manual_seed(0)
    model = case.build().eval()
    x, y = _inputs(case)
    kw = _shift_kw(case) or {"shifts": ShiftSet.all_shifts((case.size, case.size))}
    rows, reference = [], None
    for backend in backends():
        seconds, result = timed_audit(model, (x, y), backend, None, mode="exhaustive", **kw)
        rows.append(_row(backend, seconds, result, reference))
        if reference is None:
            reference = json.loads(json.dumps(result.to_json()))
    shifts = kw["shifts"] if "shifts" in kw else ShiftSet.window((case.size, case.size), kw["max_shift"], kw["shift_step"])
    with torch.inference_mode():  # oneDNN picks its kernels on the first call of each shape, as for the audits
        model(x[:1].repeat(rows[0]["device_batch"], 1, 1, 1))
    naive = naive_batched(model, x, y, shifts, np.arange(min(naive_shifts, len(shifts))), rows[0]["device_batch"])
    for r in rows:
        r["speedup_vs_torch"] = rows[0]["seconds"] / r["seconds"]
        r["speedup_vs_naive_equal_batch"] = r["pairs_per_s"] / naive["pairs_per_s"]
    return {"model": case.name, "size": case.size, "images": case.images, "shifts": len(shifts), "rows": rows, "naive": naive}


def _static(name: str, path: Path, shape: tuple[int, ...], threads: int) -> Callable[[np.ndarray], Any]:
    """The exported graph compiled with its batch axis fixed at ``shape[0]`` (benchmark only: audits run it free)."""
    if name == "openvino":
        import openvino

        core = openvino.Core()
        graph = core.read_model(str(path))
        graph.reshape(list(shape))
        request = core.compile_model(graph, "CPU", OpenVino(threads).settings()).create_infer_request()
        return lambda a: request.infer({0: a})
    import onnxruntime

    from shiftaudit.loading.onnx_model import session_options

    options = session_options(onnxruntime, threads)
    options.inter_op_num_threads = 1
    options.add_free_dimension_override_by_name("batch", shape[0])
    session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return lambda a: session.run(None, {"images": a})


def run_forwards(case: Model, batch: int, repeats: int) -> dict[str, Any]:
    """One forward pass at the device batch: torch, each runtime (free batch axis, as audits run), each runtime with
    the batch fixed; interleaved, the best of ``repeats`` timings of two calls each (see the module doc)."""
    import tempfile

    from torch.utils.benchmark import Timer

    from shiftaudit.engine.backends import export_onnx

    torch.manual_seed(0)
    model = case.build().eval()
    x = torch.randn(batch, 3, case.size, case.size, generator=torch.Generator().manual_seed(0))
    array = x.numpy()
    threads = torch.get_num_threads()
    calls: dict[str, Callable[[], Any]] = {"torch": lambda: model(x)}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as folder:
        path = export_onnx(model, x[:2], Path(folder))
        for name in backends()[1:]:
            free = RUNTIMES[name](threads).module(path)
            fixed = _static(name, path, tuple(x.shape), threads)
            calls[name] = lambda free=free: free(x)
            calls[f"{name} static"] = lambda fixed=fixed: fixed(array)
    best: dict[str, float] = {}
    with torch.inference_mode():
        for call in calls.values():  # warm: kernels are chosen on the first call of a shape
            call()
        for _ in range(repeats):
            for label, call in calls.items():
                seconds = Timer("f()", globals={"f": call}, num_threads=threads).timeit(2).mean
                best[label] = min(best.get(label, float("inf")), seconds)
    rows = [
        {"backend": label, "seconds_per_batch": s, "images_per_s": batch / s, "speedup_vs_torch": best["torch"] / s}
        for label, s in best.items()
    ]
    return {"model": case.name, "size": case.size, "batch": batch, "repeats": repeats, "rows": rows}


def run_defaults(case: Model, starting: tuple[int, int], images: int) -> dict[str, Any]:
    """The default audit before this change (torch on its starting thread count) against backend auto on the new
    default thread count, same model and ``images`` images (enough for auto's export to pay: see the module doc)."""
    torch.manual_seed(0)
    model = case.build().eval()
    data = _inputs(replace(case, images=images))
    before, result = timed_audit(model, data, "torch", None, threads=starting[0], **_shift_kw(case))
    after, auto = timed_audit(model, data, "auto", None, threads=starting[1], **_shift_kw(case))
    return {
        "model": case.name,
        "size": case.size,
        "images": images,
        "shifts": int(result.settings["shifts"]["count"]),
        "before": {"backend": "torch", "threads": starting[0], "seconds": before},
        "after": {"backend": "auto", "ran_on": auto.settings["backend"]["name"], "threads": starting[1], "seconds": after},
        "speedup": before / after,
        **differences(json.loads(json.dumps(result.to_json())), json.loads(json.dumps(auto.to_json()))),
    }


def run(
    mode: str = "default", progress: Callable[[str], None] | None = None, starting: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Every section; ``starting``: :func:`starting_threads` as read before the benchmark set its thread count."""
    say = progress or (lambda _: None)
    cases, all_shift, naive_shifts = models(mode)
    audits = []
    for case in cases:
        say(f"backends: {case.name} {case.size}x{case.size}")
        audits.append(run_model(case))
    say(f"backends: {all_shift.name} zero-padded, every shift")
    every = run_all_shift(all_shift, naive_shifts)
    repeats = {"tiny": 1, "quick": 2}.get(mode, 5)
    forwards = []
    for case in [*cases, all_shift]:
        say(f"backends: {case.name} forward passes alone, free and fixed batch")
        batch = 2 if mode == "tiny" else 64 if case.size <= 32 else 16  # the engine's device batches
        forwards.append(run_forwards(case, batch, repeats))
    say("backends: the default audit before and after (threads and backend auto)")
    defaults = run_defaults(cases[0], starting or starting_threads(), DEFAULTS_IMAGES.get(mode, cases[0].images))
    best = {a["model"]: max(r["speedup_vs_torch"] for r in a["rows"][1:]) if len(a["rows"]) > 1 else None for a in audits}
    naive = max(r["speedup_vs_naive_equal_batch"] for r in every["rows"])
    return {
        "threads": torch.get_num_threads(),
        "backends": backends(),
        "versions": {n: RUNTIMES[n].version() for n in backends() if n in RUNTIMES},
        "audits": audits,
        "all_shift": every,
        "forwards": forwards,
        "defaults": defaults,
        "best_speedup_vs_torch": best,
        "best_all_shift_vs_naive_equal_batch": naive,
    }


def print_tables(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=160)
    t = Table(
        title=f"Whole audits by backend, CPU, {result['threads']} thread(s), export included ({result['versions']})",
        title_justify="left",
    )
    cols = (
        "Model",
        "Size",
        "Images x shifts",
        "Backend",
        "ran on",
        "s",
        "export s",
        "pairs/s",
        "x torch",
        "same preds",
        "max diff",
    )
    for col in cols:
        t.add_column(col, justify="left" if col in ("Model", "Backend", "ran on") else "right")
    every = result["all_shift"]
    for a in [*result["audits"], every]:
        for r in a["rows"]:
            x = r["speedup_vs_torch"]
            export = "" if r["export_seconds"] is None else f"{r['export_seconds']:.1f}"
            same = "" if "identical_predictions" not in r else ("yes" if r["identical_predictions"] else "NO")
            diff = "" if "max_float_diff" not in r else f"{r['max_float_diff']:.1g}"
            t.add_row(a["model"], str(a["size"]), f"{a['images']} x {a['shifts']}", r["backend"], r["ran_on"],
                      f"{r['seconds']:.1f}", export, f"{r['pairs_per_s']:.0f}", f"{x:.2f}", same, diff)  # fmt: skip
    con.print(t)
    naive = every["naive"]
    ratios = ", ".join(f"{r['backend']} {r['speedup_vs_naive_equal_batch']:.2f}x" for r in every["rows"])
    con.print(
        f"{every['model']} zero-padded, all {every['shifts']} shifts, against the naive eager loop at batch {naive['batch']} "
        f"({naive['pairs_per_s']:.0f} pairs/s on {naive['shifts_timed']} shifts): {ratios}"
    )
    f = Table(title="Forward passes alone at the device batch (best of interleaved repeats)", title_justify="left")
    for col in ("Model", "Batch", "Backend", "ms/batch", "images/s", "x torch"):
        f.add_column(col, justify="left" if col in ("Model", "Backend") else "right")
    for case in result["forwards"]:
        for r in case["rows"]:
            f.add_row(case["model"], str(case["batch"]), r["backend"], f"{1000 * r['seconds_per_batch']:.0f}",
                      f"{r['images_per_s']:.1f}", f"{r['speedup_vs_torch']:.2f}")  # fmt: skip
    con.print(f)
    d = result["defaults"]
    con.print(
        f"default audit of {d['model']} ({d['images']} x {d['shifts']}): torch on {d['before']['threads']} thread(s) "
        f"{d['before']['seconds']:.1f} s, backend auto ({d['after']['ran_on']}) on {d['after']['threads']} thread(s) "
        f"{d['after']['seconds']:.1f} s: {d['speedup']:.2f}x, same predictions: {d['identical_predictions']}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 images, 9 shifts per model (about a minute)")
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the test suite's smoke run
    ap.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for backends.json")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of every backend (1: steady on a shared machine)")
    args = ap.parse_args(argv)
    starting = starting_threads()  # before the benchmark's own count is set
    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    mode = "tiny" if args.tiny else "quick" if args.quick else "default"
    result = {"mode": mode, **run(mode, progress=lambda s: print(f"... {s}", flush=True), starting=starting)}
    path = write_json_atomic(args.out / "backends.json", result)
    print_tables(result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
