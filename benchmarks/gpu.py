"""The GPU benchmark: audit throughput and achieved TFLOP/s against the card's peak, in one short run.

``python -m benchmarks.gpu [--device cuda] [--quick] [--out bench-results/]`` (run by ``benchmarks/gpu.sh``) measures:

- the card itself: a bf16 matmul (8192^3) and a bf16 channels_last 3x3 conv (256 -> 256 channels, 56x56), in
  TFLOP/s, beside the datasheet's dense bf16 peak where the card is known;
- resnet18 and resnet50 at 224 (random weights), bf16 autocast + channels_last: the all-shift audit's images x
  shifts per second and achieved TFLOP/s (FLOPs of one forward from ``torch.utils.flop_counter``), and the bare
  model at the same batch, so the engine's own overhead shows;
- the trained demo model, all 1024 shifts, through the polyphase engine;
- out-of-memory halving forced by a device batch whose activations exceed the free memory (CUDA only).

``--device cpu --quick`` is a dry run of the same code at toy sizes (64x64, few shifts, small matmul), for machines
without a GPU; its figures say nothing about a GPU. Results go to ``OUT/gpu.json``.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shiftaudit.engine.runner import audit
from shiftaudit.files import write_json_atomic
from shiftaudit.shifts.sets import ShiftSet

# Dense (not sparse) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s; matched on the device name.
DATASHEET_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
)


def datasheet_peak(name: str) -> float | None:
    return next((peak for key, peak in DATASHEET_BF16_TFLOPS if key in name), None)


def _timer(device: torch.device) -> Callable[[], float]:
    if device.type == "cuda":
        return lambda: (torch.cuda.synchronize(device), time.perf_counter())[1]
    return time.perf_counter


def best_seconds(fn: Callable[[], Any], device: torch.device, reps: int) -> float:
    """Best of ``reps`` timed calls after one warm-up call."""
    clock = _timer(device)
    fn()
    best = math.inf
    for _ in range(reps):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def card_peaks(device: torch.device, quick: bool) -> dict[str, Any]:
    """Measured bf16 matmul and conv TFLOP/s: what 'the card's throughput' means in the ratios below."""
    n = 1024 if quick else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    mm = best_seconds(lambda: a @ b, device, 3 if quick else 10)
    batch, ch, side = (4, 64, 28) if quick else (256, 256, 56)
    conv = nn.Conv2d(ch, ch, 3, padding=1, bias=False).to(device, torch.bfloat16, memory_format=torch.channels_last)
    x = torch.randn(batch, ch, side, side, device=device, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        cv = best_seconds(lambda: conv(x), device, 3 if quick else 10)
    conv_flops = 2.0 * batch * ch * ch * 9 * side * side
    return {
        "matmul_bf16_tflops": 2.0 * n**3 / mm / 1e12,
        "conv3x3_bf16_tflops": conv_flops / cv / 1e12,
        "matmul_size": n,
        "conv_shape": [batch, ch, side, side],
    }


def forward_flops(model: nn.Module, size: int, device: torch.device) -> float:
    """FLOPs of one image's forward pass (2 per multiply-add), as torch's FLOP counter counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, size, size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x)
    return float(counter.get_total_flops())


def resnet_case(arch: str, device: torch.device, quick: bool, peak: float | None) -> dict[str, Any]:
    """The dense all-shift audit of a random-weight resnet at 224 (bf16, channels_last) and the bare model."""
    import torchvision

    torch.manual_seed(0)
    size, images, max_shift, step, batch = (64, 2, 2, 2, 16) if quick else (224, 128, 16, 4, 256)
    model = getattr(torchvision.models, arch)(weights=None).eval().to(device)
    flops = forward_flops(model, size, device)
    x = torch.randn(images, 3, size, size)
    y = torch.randint(0, 1000, (images,))
    shifts = ShiftSet.window((size, size), max_shift, step)
    amp = "bf16"
    kw: dict[str, Any] = dict(
        shifts=shifts, mode="exhaustive", device=device, precision=amp, channels_last=True, polyphase=False, batch_size=batch
    )  # 256 rows: the default (64 at 224) starves a big card
    audit(model, (x[:1], y[:1]), **kw)  # warm-up: cuDNN picks its kernels
    clock = _timer(device)
    t0 = clock()
    r = audit(model, (x, y), **kw)
    dt = clock() - t0
    pairs = images * len(shifts)
    bare = bare_model_rate(model, size, batch, device)
    tflops = pairs / dt * flops / 1e12
    return {
        "model": f"{arch} (random weights)",
        "image_size": size,
        "images": images,
        "shifts": len(shifts),
        "precision": amp,
        "channels_last": True,
        "device_batch": int(r.settings["device_batch"]),
        "gflops_per_forward": flops / 1e9,
        "seconds": dt,
        "pairs_per_s": pairs / dt,
        "achieved_tflops": tflops,
        "bare_model_pairs_per_s": bare,
        "engine_vs_bare_model": pairs / dt / bare,
        "fraction_of_datasheet_peak": tflops / peak if peak else None,
    }


def bare_model_rate(model: nn.Module, size: int, batch: int, device: torch.device) -> float:
    """Rows per second of the model alone at the engine's batch (bf16, channels_last): the ceiling for the audit."""
    m = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            m(x)

    return batch / best_seconds(run, device, 3)


def demo_polyphase(device: torch.device, quick: bool) -> dict[str, Any]:
    """The trained demo model at all 1024 circular shifts through the polyphase engine."""
    from shiftaudit.cli.demo_cmd import demo_dataset
    from shiftaudit.loading import load_model
    from shiftaudit.models import demo_checkpoint_path

    loaded = load_model(demo_checkpoint_path())
    images = 8 if quick else 256
    data = demo_dataset(images, loaded.preprocessing)
    shifts = ShiftSet.all_shifts(tuple(data.image_size))
    clock = _timer(device)
    t0 = clock()
    r = audit(loaded, data, shifts=shifts, device=device)
    dt = clock() - t0
    return {
        "model": "demo_cnn (trained, packaged)",
        "images": images,
        "shifts": len(shifts),
        "engine": r.settings["engine"],
        "seconds": dt,
        "pairs_per_s": images * len(shifts) / dt,
        "consistency": r.metrics["consistency"]["exact"]["value"],
    }


class _Wide(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 256, 3, padding=1)
        self.fc = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).relu().mean((2, 3)))


def forced_oom(device: torch.device) -> dict[str, Any]:
    """An audit whose device batch needs ~1.5x the free memory in activations: it must halve and finish."""
    if device.type != "cuda":
        return {"skipped": "out-of-memory halving is a CUDA path"}
    side, shifts_n = 128, 9
    free, _ = torch.cuda.mem_get_info(device)
    batch = int(1.5 * free / (2 * 256 * side * side * 4))  # conv output and its relu, float32
    batch = min(batch, (16 << 30) // (3 * side * side * 4))  # the input limit --batch-size enforces
    images = math.ceil(batch / shifts_n) + 1
    torch.manual_seed(0)
    x = torch.randn(images, 3, side, side)
    y = torch.randint(0, 10, (images,))
    t0 = time.perf_counter()
    r = audit(_Wide().eval(), (x, y), max_shift=1, device=device, batch_size=batch, polyphase=False)
    notes = [n for n in r.notes if "out of memory" in n]
    return {
        "asked_batch": batch,
        "rows": images * shifts_n,
        "seconds": time.perf_counter() - t0,
        "halved": bool(notes),
        "notes": notes,
    }


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "torch": torch.__version__, "device": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name, memory_gib=props.total_memory / 2**30, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version()
        )
    return info


def run(device: torch.device, quick: bool, say: Callable[[str], None] = print) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = datasheet_peak(name)
    t0 = time.perf_counter()
    say("card peaks")
    card = card_peaks(device, quick)
    card["datasheet_bf16_tflops"] = peak
    cases = []
    for arch in ("resnet18", "resnet50"):
        say(arch)
        case = resnet_case(arch, device, quick, peak)
        case["fraction_of_measured_conv"] = case["achieved_tflops"] / card["conv3x3_bf16_tflops"]
        cases.append(case)
    say("demo, all shifts, polyphase")
    demo = demo_polyphase(device, quick)
    say("forced out-of-memory halving")
    oom = forced_oom(device)
    return {
        "schema": "shiftaudit/bench-gpu",
        "schema_version": 1,
        "quick": quick,
        "machine": machine(device),
        "card": card,
        "resnets": cases,
        "demo_polyphase": demo,
        "oom_halving": oom,
        "seconds": time.perf_counter() - t0,
        "dry_run": device.type != "cuda",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda[:N], or cpu for a dry run (with --quick)")
    ap.add_argument("--quick", action="store_true", help="toy sizes: checks the code path, measures nothing useful")
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here; use --device cpu --quick for a dry run")
    result = run(device, args.quick, say=lambda s: print(f"... {s}", flush=True))
    path = write_json_atomic(args.out / "gpu.json", result)
    for c in result["resnets"]:
        print(
            f"{c['model']} {c['image_size']}px bf16: {c['pairs_per_s']:.0f} images x shifts/s, "
            f"{c['achieved_tflops']:.1f} TFLOP/s ({c['engine_vs_bare_model']:.2f}x the bare model; "
            f"{c['fraction_of_measured_conv']:.2f} of the measured conv throughput)"
        )
    d = result["demo_polyphase"]
    print(f"demo all {d['shifts']} shifts ({d['engine']}): {d['pairs_per_s']:.0f} images x shifts/s")
    print(f"card: {result['card']}; OOM halving: {result['oom_halving']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
