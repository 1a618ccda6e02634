"""What a patch costs and what it changes besides shift-robustness: latency (the paper's Table 2) and the
smoothness of the learned filters (normalised total variation, Fig. 7)."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from shiftaudit.engine.forward import model_exits_fail


def measure_latency(
    model: nn.Module, input_shape: tuple[int, ...], *, device: str | torch.device = "cpu", repeats: int = 10, warmup: int = 2
) -> float:
    """Median wall time of one forward pass on ``input_shape``, in milliseconds."""
    return compare_latency([model], input_shape, device=device, repeats=repeats, warmup=warmup)[0]


def clock() -> float:
    """The timer latency is measured with (seconds); a function so tests can replace it."""
    return time.perf_counter()


@dataclass
class LatencyStats:
    """Forward time over ``repeats`` runs, in ms: median and interquartile range (q1, q3, iqr = q3 - q1)."""

    median: float
    q1: float
    q3: float
    iqr: float
    repeats: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def latency_stats(samples_ms: list[float]) -> LatencyStats:
    if len(samples_ms) >= 2:
        q1, _, q3 = statistics.quantiles(samples_ms, n=4, method="inclusive")
    else:
        q1 = q3 = samples_ms[0]
    return LatencyStats(median=statistics.median(samples_ms), q1=q1, q3=q3, iqr=q3 - q1, repeats=len(samples_ms))


def latency_too_noisy(a: LatencyStats, b: LatencyStats) -> bool:
    """Whether the spread hides the difference: the interquartile ranges overlap, or either is wider than the gap
    between the medians. Then "the patch costs x %" is not a measurement, only noise."""
    overlap = a.q1 <= b.q3 and b.q1 <= a.q3
    return overlap or max(a.iqr, b.iqr) >= abs(a.median - b.median)


@torch.inference_mode()
def compare_latency(
    models: list[nn.Module],
    input_shape: tuple[int, ...],
    *,
    device: str | torch.device = "cpu",
    repeats: int = 15,
    warmup: int = 3,
) -> list[float]:
    """Median forward time (ms) of each model, measured in alternation so that a busy machine slows all of them
    alike (timing one model after the other lets a burst of background load land on just one)."""
    return [s.median for s in compare_latency_stats(models, input_shape, device=device, repeats=repeats, warmup=warmup)]


@torch.inference_mode()
def compare_latency_stats(
    models: list[nn.Module],
    input_shape: tuple[int, ...],
    *,
    device: str | torch.device = "cpu",
    repeats: int = 15,
    warmup: int = 3,
) -> list[LatencyStats]:
    """:func:`compare_latency` with the spread: median and IQR over ``repeats`` alternating runs of each model."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    dev = torch.device(device)
    runs = []
    for model in models:
        model = model.eval().to(dev)
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        runs.append((model, torch.randn(*input_shape, device=dev, dtype=dtype)))
    times: list[list[float]] = [[] for _ in models]
    for i in range(warmup + repeats):
        for k, (model, x) in enumerate(runs):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = clock()
            with model_exits_fail("The model failed while its latency was measured"):
                model(x)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            elapsed = clock() - t0
            if i >= warmup:
                times[k].append(elapsed)
    return [latency_stats([1000.0 * v for v in t]) for t in times]


def filter_total_variation(weight: torch.Tensor) -> float:
    """Normalised total variation of conv filters (Ruderman et al., used in the paper's Fig. 7).

    Per 2-D filter: sum of absolute differences between vertical and horizontal neighbours divided by the sum of
    absolute values; averaged over all (out, in) filters. 0 for constant filters; lower is smoother.
    """
    w = weight.detach().float()
    tv = (w[..., 1:, :] - w[..., :-1, :]).abs().sum(dim=(-2, -1)) + (w[..., :, 1:] - w[..., :, :-1]).abs().sum(dim=(-2, -1))
    norm = w.abs().sum(dim=(-2, -1)).clamp_min(1e-12)
    return float((tv / norm).mean())


def conv_total_variation(model: nn.Module) -> dict[str, float]:
    """Normalised TV of every conv with a spatial kernel (1x1 convs have no spatial variation)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.weight.shape[-1] * m.weight.shape[-2] > 1:
            out[name] = filter_total_variation(m.weight)
    return out
