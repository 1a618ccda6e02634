"""Time to a verdict: the sequential gate against the full audit, on the same model, data, shifts and batch size.

For each case the full (exhaustive, dense) audit runs once and gives the exact consistency c and the reference
verdict at every threshold. Thresholds are set at c - d (the gate should pass) and c + d (it should fail) for margins
d of 0.05, 0.02 and 0.01. At each threshold:

- *seconds*: one sequential run with the real model, against the full audit's seconds;
- *agreement*: many seeded sequential runs against a replay of the full audit's outputs (every (image, shift) input
  the full audit saw, looked up by its bytes), so hundreds of repeats cost no model time; the sequential code path is
  the real one. Reported: the share of repeats whose verdict equals the full audit's, the share that fell back to the
  full audit (undecided within the budget; their verdict is the full audit's), and the median forward passes, with
  a fallback's passes counted as the gate's plus those the full audit ran of its own (it reuses the gate's).

``python -m benchmarks.bench_sequential [--quick]``; ``benchmarks.run`` includes it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from shiftaudit.engine.runner import audit
from shiftaudit.gating import build_thresholds
from shiftaudit.shifts.sets import ShiftSet

MARGINS = (0.05, 0.02, 0.01)


@dataclass(frozen=True)
class SeqCase:
    name: str
    build: Callable[[], tuple[nn.Module, torch.Tensor, torch.Tensor]]
    shifts: Callable[[tuple[int, int]], ShiftSet]
    repeats: int
    batch: int = 64


class Replay(nn.Module):
    """Records the model's output for every input row it sees, then answers from the record (by the row's bytes)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.table: dict[bytes, torch.Tensor] = {}
        self.recording = True

    @staticmethod
    def _key(row: torch.Tensor) -> bytes:
        import hashlib

        return hashlib.blake2b(row.contiguous().numpy().tobytes(), digest_size=16).digest()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = [self._key(row) for row in x.detach().cpu()]
        if self.recording:
            out = self.model(x)
            for k, row in zip(keys, out.detach().cpu()):
                self.table[k] = row
            return out
        return torch.stack([self.table[k] for k in keys]).to(x.device)


def _demo_zero(images: int) -> Callable[[], tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    def build() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        from shiftaudit.data.synthetic import make_synthetic
        from shiftaudit.loading import load_model
        from shiftaudit.models.demo import DEMO_TEST_SEED, demo_checkpoint_path

        loaded = load_model(demo_checkpoint_path())
        for m in loaded.model.modules():
            if isinstance(m, nn.Conv2d):
                m.padding_mode = "zeros"  # the trained demo, as an ordinary zero-padded network
        imgs, labels, _ = make_synthetic(images, seed=DEMO_TEST_SEED)
        prep = loaded.preprocessing
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
        std = torch.tensor(prep.std).view(1, -1, 1, 1)
        return loaded.model.eval(), (x - mean) / std, torch.from_numpy(labels).long()

    return build


def _resnet18(images: int, size: int) -> Callable[[], tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    def build() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
        x = torch.randn(images, 3, size, size)
        return model, x, torch.zeros(images, dtype=torch.long)

    return build


def cases(mode: str) -> list[SeqCase]:
    if mode == "tiny":
        return [SeqCase("demo_zero_pad", _demo_zero(48), lambda s: ShiftSet.window(s, 3), repeats=3)]
    quick = mode == "quick"
    return [
        SeqCase("demo_zero_pad", _demo_zero(64 if quick else 128), lambda s: ShiftSet.window(s, 8), 20 if quick else 100),
        SeqCase(
            "resnet18",
            _resnet18(48 if quick else 64, 64 if quick else 224),
            lambda s: ShiftSet.window(s, 16, 8),
            10 if quick else 50,
            batch=32,
        ),
    ]


def _run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, shifts: ShiftSet, batch: int, **kw: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    r = audit(model, (x, y), shifts=shifts, device="cpu", batch_size=batch, **kw)
    return r, time.perf_counter() - t0


def _fallback_forwards(notes: list[str], full_rows: int) -> int:
    """The forward passes a run that fell back made: the gate's, then the full audit's own (the rest it reused)."""
    undecided = [n for n in notes if n.startswith("sequential gate undecided after ")]
    before = int(undecided[0].split("after ")[1].split(" forward")[0].replace(",", "")) if undecided else 0
    reused = [n for n in notes if n.startswith("the full audit reused ")]
    own = int(reused[0].split(" and ran ")[1].split(" forward")[0].replace(",", "")) if reused else full_rows
    return before + own


def run_case(case: SeqCase) -> dict[str, Any]:
    model, x, y = case.build()
    shifts = case.shifts((x.shape[-2], x.shape[-1]))
    full, full_s = _run(model, x, y, shifts, case.batch, mode="exhaustive")  # timed with the real model
    replay = Replay(model)
    recorded, _ = _run(replay, x, y, shifts, case.batch, mode="exhaustive")
    assert recorded.metrics == full.metrics
    replay.recording = False
    exact = full.metrics["consistency"]["exact"]["value"]
    full_rows = int(full.timing["forward_rows"])
    rows = []
    for margin in MARGINS:
        for side in (-1, 1):
            tau = round(exact + side * margin, 6)
            if not 0.0 < tau < 1.0:
                continue
            thresholds = build_thresholds(tau)
            truth = exact >= tau
            live, live_s = _run(model, x, y, shifts, case.batch, thresholds=thresholds, sequential=True, seed=10_000)
            spent, agree, fell_back = [], 0, 0
            for seed in range(case.repeats):
                r, _ = _run(replay, x, y, shifts, case.batch, thresholds=thresholds, sequential=True, seed=seed)
                agree += int(r.gate["passed"] == truth)
                sequential = r.settings["engine"] == "sequential"
                fell_back += int(not sequential)
                if sequential:
                    spent.append(r.metrics["sequential"]["forward_rows"])
                else:
                    spent.append(_fallback_forwards(r.notes, full_rows))
            median = float(np.median(spent))
            rows.append(
                {
                    "margin": margin,
                    "threshold": tau,
                    "full_verdict": "pass" if truth else "fail",
                    "live_verdict": "pass" if live.gate["passed"] else "fail",
                    "live_engine": live.settings["engine"],
                    "live_seconds": live_s,
                    "full_seconds": full_s,
                    "seconds_ratio": full_s / live_s,
                    "repeats": case.repeats,
                    "agreement": agree / case.repeats,
                    "fallback_share": fell_back / case.repeats,
                    "median_forwards": median,
                    "full_forwards": full_rows,
                    "forwards_ratio": full_rows / median,
                }
            )
    return {
        "name": case.name,
        "image_size": list(x.shape[-2:]),
        "images": int(x.shape[0]),
        "shifts": len(shifts),
        "batch": case.batch,
        "exact_consistency": exact,
        "full_seconds": full_s,
        "rows": rows,
    }


def run(mode: str = "default") -> dict[str, Any]:
    return {"decision_error": 0.01, "cases": [run_case(c) for c in cases(mode)]}


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Time to a verdict: sequential gate vs the full audit (same batch size)", title_justify="left")
    for col in (
        "Model",
        "Exact",
        "Threshold",
        "Verdict",
        "Forwards seq / full",
        "x fewer",
        "Seconds seq / full",
        "x faster",
        "Agreement",
        "Fallback",
    ):
        t.add_column(col, justify="left" if col in ("Model", "Verdict") else "right")
    for c in result["cases"]:
        for r in c["rows"]:
            t.add_row(
                c["name"],
                f"{c['exact_consistency']:.4f}",
                f"{r['threshold']:.4f}",
                r["full_verdict"],
                f"{r['median_forwards']:.0f} / {r['full_forwards']}",
                f"{r['forwards_ratio']:.1f}",
                f"{r['live_seconds']:.2f} / {r['full_seconds']:.2f}",
                f"{r['seconds_ratio']:.1f}",
                f"{100 * r['agreement']:.0f} % of {r['repeats']}",
                f"{100 * r['fallback_share']:.0f} %",
            )
    Console(width=160).print(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run("quick" if args.quick else "default")
    print_table(result)
    import json

    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
