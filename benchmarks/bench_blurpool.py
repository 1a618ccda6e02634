"""How fast is BlurPool, and is the one-strided-conv form the right one?

Forms compared on the same inputs, in the same run (so the ratios are meaningful on a busy machine):

- ``strided``: pad once, one depthwise 2-D conv at stride s (``shiftaudit.antialias.blurpool.blur_pool2d``, the library's form;
  with zero padding and an odd filter the conv pads itself);
- ``separable``: pad once, a vertical k x 1 conv at stride (s, 1), then a horizontal 1 x k conv at stride (1, s);
- ``naive``: blur densely at stride 1, then slice ``[..., ::s, ::s]`` (Eq. 3 read literally);
- ``module``: the library's ``BlurPool2d`` layer (kernel built once, as in a patched model): the row to compare
  with the third-party layers, which also build their kernels once;
- ``antialiased_cnns.BlurPool`` and ``kornia.filters.BlurPool2D`` when installed (the optional ``bench`` extra,
  never a dependency of the package), and ``timm.layers.BlurPool2d`` when timm is installed (the ``timm`` extra).

The first three give identical results up to float rounding (``tests/test_blurpool.py`` checks it to 1e-6).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils import benchmark

from shiftaudit.antialias.blurpool import BlurPool2d, blur_pool2d, pad_for_blur
from shiftaudit.antialias.filters import get_filter, get_filter_info

Form = Callable[[torch.Tensor, str, int, str], torch.Tensor]


def blur_strided(x: torch.Tensor, name: str, stride: int = 2, pad_mode: str = "reflect") -> torch.Tensor:
    return blur_pool2d(x, name, stride, pad_mode)


def blur_separable(x: torch.Tensor, name: str, stride: int = 2, pad_mode: str = "reflect") -> torch.Tensor:
    f = get_filter(name, dtype=x.dtype, device=x.device)
    k, c = f.numel(), x.shape[1]
    xp = pad_for_blur(x, k, k, pad_mode)
    v = F.conv2d(xp, f.view(1, 1, k, 1).expand(c, 1, k, 1), stride=(stride, 1), groups=c)
    return F.conv2d(v, f.view(1, 1, 1, k).expand(c, 1, 1, k), stride=(1, stride), groups=c)


def blur_naive(x: torch.Tensor, name: str, stride: int = 2, pad_mode: str = "reflect") -> torch.Tensor:
    return blur_pool2d(x, name, 1, pad_mode)[..., ::stride, ::stride]


FORMS: dict[str, Form] = {"strided": blur_strided, "separable": blur_separable, "naive": blur_naive}


def _third_party(channels: int, name: str, stride: int, pad: str) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Reference implementations, only if already installed, each in the group of its own padding.

    antialiased_cnns and timm pad by reflection as our default does; kornia's BlurPool2D zero-pads inside the conv.
    All three build binomial filters only.
    """
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    taps = get_filter_info(name).taps
    if pad == "reflect" and importlib.util.find_spec("antialiased_cnns") is not None and name.startswith("binomial"):
        import antialiased_cnns  # type: ignore[import-not-found]

        out["antialiased_cnns"] = antialiased_cnns.BlurPool(channels, filt_size=taps, stride=stride).eval()
    if pad == "reflect" and importlib.util.find_spec("timm") is not None and name.startswith("binomial"):
        from timm.layers import BlurPool2d as TimmBlurPool2d

        out["timm"] = TimmBlurPool2d(channels, filt_size=taps, stride=stride).eval()
    if pad == "zero" and importlib.util.find_spec("kornia") is not None and name.startswith("binomial") and taps % 2:
        import kornia  # type: ignore[import-not-found]

        out["kornia"] = kornia.filters.BlurPool2D(kernel_size=taps, stride=stride).eval()
    return out


def _time_all(fns: dict[str, Callable[[], torch.Tensor]], repeats: int, min_time: float) -> dict[str, float]:
    """Median over ``repeats`` rounds of each form's ``blocked_autorange`` median, forms interleaved round-robin.

    Interleaving matters on a shared VM: a burst of steal time then hits every form alike instead of whichever
    happened to run first; the median over rounds ignores a round that a burst spoiled (a best-of-rounds minimum
    favours whichever form got lucky once). The first round is a warm-up (oneDNN setup, allocator).
    """
    seen: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats + 1):
        for k, fn in fns.items():
            t = benchmark.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_time).median
            if r:
                seen[k].append(t)
    return {k: statistics.median(v) for k, v in seen.items()}


def run(quick: bool = False) -> dict:
    """Time every form at a few shapes, filters and paddings; ratios are relative to the library's ``strided`` form.

    Zero padding is its own group: there the library lets the conv pad (odd filters), as kornia does.
    """
    if quick:
        shapes = [(4, 16, 28, 28), (2, 64, 14, 14)]
        filters, pads, repeats, min_time = ["tri3", "binomial5"], ["reflect", "zero"], 2, 0.02
    else:
        shapes = [(32, 64, 56, 56), (8, 256, 28, 28), (8, 512, 14, 14)]
        filters, pads, repeats, min_time = ["tri3", "binomial5", "binomial7"], ["reflect", "zero"], 5, 0.2
    rows = []
    torch.manual_seed(0)
    with torch.inference_mode():
        for shape, name, pad in itertools.product(shapes, filters, pads):
            x = torch.randn(shape)
            fns: dict[str, Callable[[], torch.Tensor]] = {
                k: (lambda f=f, x=x, name=name, pad=pad: f(x, name, 2, pad)) for k, f in FORMS.items()
            }
            layers = {"module": BlurPool2d(shape[1], name, 2, pad).eval(), **_third_party(shape[1], name, 2, pad)}
            fns.update({k: (lambda m=m, x=x: m(x)) for k, m in layers.items()})
            times = _time_all(fns, repeats, min_time)
            base = times["strided"]
            for form, t in times.items():
                rows.append({"shape": list(shape), "filter": name, "pad": pad, "form": form, "ms": t * 1e3, "ratio": t / base})
    return {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}


def _print(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"BlurPool forms, CPU, {result['threads']} threads, torch {result['torch']} (ratio = time / strided)",
        title_justify="left",
    )
    for col in ("Shape", "Filter", "Pad", "Form", "ms", "Ratio"):
        t.add_column(col, justify="right" if col in ("ms", "Ratio") else "left")
    for r in result["rows"]:
        t.add_row(
            "x".join(map(str, r["shape"])), r["filter"], r.get("pad", "reflect"), r["form"], f"{r['ms']:.2f}", f"{r['ratio']:.2f}"
        )
    Console().print(t)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, short timings (a smoke test)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads; 1 by default, as spinning OpenMP threads make timings erratic on a busy box",
    )
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    _print(run(quick=args.quick))
