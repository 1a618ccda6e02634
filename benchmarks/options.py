"""Opt-in speed options measured for speed and exactness: bf16 autocast, channels_last, torch.compile.

``python -m benchmarks.options [--device cpu] [--quick] [--reps 3] [--out bench-results/]`` runs, for resnet18 at
224 (random weights) and the trained demo model, the same rows (the images at a fixed list of circular shifts)
through the audit's own :class:`~shiftaudit.engine.forward.BatchedForward` under each option, interleaved and
repeated, and reports the median rows/s, the speedup over fp32, the fraction of predictions that changed and the
largest |logit| difference against fp32. Writes ``OUT/options.json``. Timings are process CPU time on the CPU (a
shared machine's other load steals wall time, not CPU time) and wall time on CUDA.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shiftaudit.files import write_json_atomic

OPTIONS = ("fp32", "bf16", "channels_last", "compile")


def _rows(x: torch.Tensor, shifts: int) -> torch.Tensor:
    """Every image at ``shifts`` circular shifts along the diagonal: the rows an audit would run."""
    return torch.cat([torch.roll(x, (k, k), (-2, -1)) for k in range(shifts)])


def _runner(model: nn.Module, option: str) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """The model as the engine would run it under ``option``, and how to call it."""
    dev_type = next(model.parameters()).device.type
    if option == "compile":
        model = torch.compile(model, dynamic=False)  # type: ignore[assignment]

    def call(x: torch.Tensor) -> torch.Tensor:
        if option == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        if option == "bf16":
            with torch.autocast(device_type=dev_type, dtype=torch.bfloat16):
                return model(x).float()
        return model(x).float()

    return model, call


def _clock(device: torch.device) -> Callable[[], float]:
    if device.type == "cuda":
        return lambda: (torch.cuda.synchronize(device), time.perf_counter())[1]
    return time.process_time


def measure(
    name: str,
    model: nn.Module,
    rows: torch.Tensor,
    batch: int,
    reps: int,
    device: torch.device,
    options: tuple[str, ...] = OPTIONS,
) -> dict[str, Any]:
    """Median rows/s of each option over ``reps`` interleaved rounds, and its drift from fp32 on every row."""
    clock = _clock(device)
    model = model.eval().to(device)
    rows = rows.to(device)
    callers = {}
    outputs: dict[str, torch.Tensor] = {}
    for opt in options:  # a copy each: channels_last converts the weights in place
        m = copy.deepcopy(model)
        if opt == "channels_last":
            m = m.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        callers[opt] = _runner(m, opt)[1]
    failed: dict[str, str] = {}
    with torch.inference_mode():
        for opt in options:  # warm-up (and compile) outside the timed rounds; a failing compile is recorded, not fatal
            try:
                callers[opt](rows[:batch])
            except Exception as exc:
                failed[opt] = f"{type(exc).__name__}: {str(exc)[:200]}"
    options = tuple(o for o in options if o not in failed)
    times: dict[str, list[float]] = {opt: [] for opt in options}
    with torch.inference_mode():
        for _ in range(reps):
            for opt in options:
                t0 = clock()
                out = torch.cat([callers[opt](rows[i : i + batch]) for i in range(0, rows.shape[0], batch)])
                times[opt].append(clock() - t0)
                outputs[opt] = out
    ref = outputs["fp32"]
    result: dict[str, Any] = {
        "model": name,
        "rows": int(rows.shape[0]),
        "batch": batch,
        "input": list(rows.shape[1:]),
        "failed": failed,
    }
    base = statistics.median(times["fp32"])
    for opt in options:
        med = statistics.median(times[opt])
        result[opt] = {
            "rows_per_s": rows.shape[0] / med,
            "speedup_vs_fp32": base / med,
            "predictions_changed": float((outputs[opt].argmax(1) != ref.argmax(1)).float().mean()),
            "max_abs_logit_diff": float((outputs[opt] - ref).abs().max()),
            "max_abs_logit": float(ref.abs().max()),
            "seconds": times[opt],
        }
    return result


def cases(quick: bool) -> list[tuple[str, nn.Module, torch.Tensor, int]]:
    """(name, model, rows, batch): resnet18 at 224 with random weights on random images, the demo model on its data."""
    import torchvision

    from shiftaudit.cli.demo_cmd import demo_dataset
    from shiftaudit.loading import load_model
    from shiftaudit.models import demo_checkpoint_path

    torch.manual_seed(0)
    size = 64 if quick else 224
    resnet = torchvision.models.resnet18(weights=None, num_classes=1000)
    x = torch.randn(2, 3, size, size)
    loaded = load_model(demo_checkpoint_path())
    data = demo_dataset(8 if quick else 32, loaded.preprocessing)
    demo_x = torch.stack([data[i][0] for i in range(len(data))])
    return [
        (f"resnet18 {size}x{size} (random weights)", resnet, _rows(x, 8 if quick else 16), 16),
        ("demo_cnn (trained)", loaded.model, _rows(demo_x, 8 if quick else 32), 64),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="64x64 resnet18, fewer rows, one round")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--options", default=",".join(OPTIONS), help="comma-separated subset of " + ",".join(OPTIONS))
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    options = tuple(o for o in args.options.split(",") if o)
    if "fp32" not in options:
        options = ("fp32", *options)
    reps = 1 if args.quick else args.reps
    results = [measure(n, m, r, b, reps, device, options) for n, m, r, b in cases(args.quick)]
    for r in results:
        shown = [o for o in options if o in r]
        print(r["model"], {o: {k: round(v, 6) for k, v in r[o].items() if k != "seconds"} for o in shown}, r["failed"])
    path = write_json_atomic(
        args.out / "options.json",
        {"device": device.type, "threads": args.threads, "torch": torch.__version__, "results": results},
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
