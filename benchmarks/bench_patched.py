"""What a patch costs at inference: a patched torchvision resnet18 against the original, same run, same inputs.

Models timed (random weights, eval mode, ``torch.inference_mode``):

- ``original``: ``torchvision.models.resnet18(weights=None)``;
- ``patched``: the same model through ``shiftaudit.antialias.patch`` (default: binomial5, reflect padding), whose
  ``PoolBlur2d`` takes the dense max as shifted maxima;
- ``patched_maxpool``: the patched model with its dense max computed by ``nn.MaxPool2d(stride=1)`` as before
  (a no-op hook on each pool makes ``PoolBlur2d`` run it), to show what the fast path saves;
- ``antialiased_cnns``: ``antialiased_cnns.resnet18(pretrained=False)`` (filter size 4), only when the optional
  benchmark extra is installed (``pip install -e '.[bench]'``; non-commercial licence, never a dependency).

Timing: ``torch.utils.benchmark.Timer.blocked_autorange`` per model, the models interleaved round-robin over several
rounds (a burst of load on a shared machine then hits every model alike), first round a warm-up. Reported: the
median time per forward and the median over rounds of each round's time / the original's time.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import statistics
from collections.abc import Callable

import torch
from torch import nn
from torch.utils import benchmark


def _noop_hook(module: nn.Module, args: tuple) -> None:
    return None


def build_models() -> dict[str, nn.Module]:
    """The models compared; each is an independent copy with the original's random weights where it can share them."""
    import torchvision

    from shiftaudit.antialias import patch
    from shiftaudit.antialias.modules import PoolBlur2d

    torch.manual_seed(0)
    original = torchvision.models.resnet18(weights=None).eval()
    patched = patch(original).eval()
    slow = copy.deepcopy(patched)
    for m in slow.modules():
        if isinstance(m, PoolBlur2d):
            m.pool.register_forward_pre_hook(_noop_hook)
    models = {"original": original, "patched": patched, "patched_maxpool": slow}
    if importlib.util.find_spec("antialiased_cnns") is not None:
        import antialiased_cnns  # type: ignore[import-not-found]

        models["antialiased_cnns"] = antialiased_cnns.resnet18(pretrained=False).eval()
    return models


def _median_rounds(fns: dict[str, Callable[[], object]], rounds: int, min_run_time: float) -> dict[str, list[float]]:
    """Seconds per call of each function, one ``blocked_autorange`` median per round, functions interleaved."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds + 1):
        for k, fn in fns.items():
            m = benchmark.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time)
            if r:  # round 0 warms up oneDNN and the allocator
                out[k].append(m.median)
    return out


def run(quick: bool = False) -> dict:
    """Latency of every model at each batch size; ratios are per round against ``original``, then the median."""
    size = 64 if quick else 224
    batches = [1] if quick else [1, 8]
    rounds, min_run_time = (1, 0.05) if quick else (5, 1.0)
    models = build_models()
    rows = []
    with torch.inference_mode():
        for batch in batches:
            x = torch.randn(batch, 3, size, size)
            fns = {k: (lambda m=m, x=x: m(x)) for k, m in models.items()}
            times = _median_rounds(fns, rounds, min_run_time)
            base = times["original"]
            for k, ts in times.items():
                ratios = [t / b for t, b in zip(ts, base)]
                rows.append(
                    {
                        "model": k,
                        "batch": batch,
                        "size": size,
                        "ms": 1e3 * statistics.median(ts),
                        "ratio": statistics.median(ratios),
                        "ratio_range": [min(ratios), max(ratios)],
                        "rounds": len(ts),
                    }
                )
    return {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"Patched resnet18 latency, CPU, {result['threads']} thread(s), torch {result['torch']} "
        "(ratio = median over rounds of time / original)",
        title_justify="left",
    )
    for col in ("Model", "Batch", "Size", "ms (median)", "Ratio", "Ratio range"):
        t.add_column(col, justify="left" if col == "Model" else "right")
    for r in result["rows"]:
        lo, hi = r["ratio_range"]
        t.add_row(r["model"], str(r["batch"]), str(r["size"]), f"{r['ms']:.1f}", f"{r['ratio']:.2f}", f"{lo:.2f}-{hi:.2f}")
    Console(width=140).print(t)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64 px, batch 1, one short round (a smoke test)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (1: steady timings on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    print_table(run(quick=args.quick))
