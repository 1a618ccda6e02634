"""The GPU benchmark: audit throughput and achieved TFLOP/s against the card's peak, in one short run.

``python -m benchmarks.gpu [--device cuda] [--quick] [--out bench-results/]`` (run by ``benchmarks/gpu.sh``) measures:

- the card itself: a bf16 matmul (8192^3) and a bf16 channels_last 3x3 conv (256 -> 256 channels, 56x56), in
  TFLOP/s, beside the datasheet's dense bf16 peak where the card is known;
- resnet18 and resnet50 at 224 (random weights), bf16 autocast + channels_last: the all-shift audit's images x
  shifts per second and achieved TFLOP/s (FLOPs of one forward from ``torch.utils.flop_counter``), and the bare
  model at the same batch, so the engine's own overhead shows;
- the trained demo model, all 1024 shifts, through the polyphase engine;
- out-of-memory halving forced by a device batch whose activations exceed the free memory (CUDA only).

``--device cpu --quick`` is a dry run of the same code at toy sizes (32x32 resnets, 9 shifts, a 256^3 matmul; the resnets
in fp32, since bf16 autocast on a CPU without bf16 units takes minutes), for machines without a GPU; its figures say
nothing about a GPU. Results go to ``OUT/gpu.json``.

``python -m benchmarks.gpu --check [--out OUT]`` measures nothing: it checks that the package works with the torch at
hand (the lent GPU machine's is older than the one the project pins) and writes ``OUT/gpu-imports.json``: every module
imported, each public name of ``shiftaudit`` resolved first in a clean module state (a circular import shows only
then), every CLI command's ``--help``, and every torch/torchvision/... name that the package's source and the GPU run's
other files refer to looked up in the installed versions (a name missing there is a code path that needs a newer
release). Exit status 1 when any of these fails. This module imports nothing from shiftaudit at its top, so that
the check can run when the package itself does not import.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import math
import os
import pkgutil
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]

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
    n = 256 if quick else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    mm = best_seconds(lambda: a @ b, device, 2 if quick else 10)
    batch, ch, side = (2, 32, 16) if quick else (256, 256, 56)
    conv = nn.Conv2d(ch, ch, 3, padding=1, bias=False).to(device, torch.bfloat16, memory_format=torch.channels_last)
    x = torch.randn(batch, ch, side, side, device=device, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        cv = best_seconds(lambda: conv(x), device, 2 if quick else 10)
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

    from shiftaudit.engine.runner import audit
    from shiftaudit.shifts.sets import ShiftSet

    torch.manual_seed(0)
    size, images, max_shift, step, batch = (32, 2, 1, 1, 4) if quick else (224, 128, 16, 4, 256)
    model = getattr(torchvision.models, arch)(weights=None).eval().to(device)
    flops = forward_flops(model, size, device)
    x = torch.randn(images, 3, size, size)
    y = torch.randint(0, 1000, (images,))
    shifts = ShiftSet.window((size, size), max_shift, step)
    amp = "bf16" if device.type == "cuda" else "fp32"  # CPU bf16 without native support: minutes for a dry run
    kw: dict[str, Any] = dict(
        shifts=shifts, mode="exhaustive", device=device, precision=amp, channels_last=True, polyphase=False, batch_size=batch
    )  # 256 rows: the default (64 at 224) starves a big card
    audit(model, (x[:1], y[:1]), **kw)  # warm-up: cuDNN picks its kernels
    clock = _timer(device)
    t0 = clock()
    r = audit(model, (x, y), **kw)
    dt = clock() - t0
    pairs = images * len(shifts)
    bare = bare_model_rate(model, size, batch, device, amp == "bf16")
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


def bare_model_rate(model: nn.Module, size: int, batch: int, device: torch.device, bf16: bool = True) -> float:
    """Rows per second of the model alone at the engine's batch (bf16, channels_last): the ceiling for the audit."""
    m = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            m(x)

    return batch / best_seconds(run, device, 3)


def demo_polyphase(device: torch.device, quick: bool) -> dict[str, Any]:
    """The trained demo model at all 1024 circular shifts through the polyphase engine."""
    from shiftaudit.cli.demo_cmd import demo_dataset
    from shiftaudit.engine.runner import audit
    from shiftaudit.loading import load_model
    from shiftaudit.models import demo_checkpoint_path
    from shiftaudit.shifts.sets import ShiftSet

    loaded = load_model(demo_checkpoint_path())
    images = 4 if quick else 256
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
    from shiftaudit.engine.runner import audit

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


# Libraries whose installed version on the lent machine differs from the project's pins: their names, as the package's
# source spells them, are looked up there.
PROBED_LIBRARIES = ("torch", "torchvision", "safetensors", "numpy", "typer", "rich")


# Besides the package: the other code that runs on the lent machine (the GPU tests with their helpers, the benchmarks).
GPU_RUN_SOURCES = ("benchmarks/gpu.py", "benchmarks/options.py", "tests/conftest.py", "tests/helpers.py", "tests/test_gpu.py")


def referenced_names(root: Path, libraries: tuple[str, ...] = PROBED_LIBRARIES) -> dict[str, list[str]]:
    """Every dotted name of ``libraries`` that the package's source, and the other files the GPU run runs
    (:data:`GPU_RUN_SOURCES`), refer to (``torch.export.Dim``, ``F.interpolate`` through ``import
    torch.nn.functional as F``, ``from torch.overrides import TorchFunctionMode``) -> where (``path:line``, the first
    three). Aliases are read per file, wherever the import statement is."""
    found: dict[str, list[str]] = {}
    sources = sorted((root / "shiftaudit").rglob("*.py")) + [root / f for f in GPU_RUN_SOURCES if (root / f).is_file()]
    for path in sources:
        tree = ast.parse(path.read_text("utf-8"))
        where = path.relative_to(root).as_posix()
        alias: dict[str, str] = {}

        def add(name: str, node: ast.AST, where: str = where) -> None:
            places = found.setdefault(name, [])
            if len(places) < 3:
                places.append(f"{where}:{getattr(node, 'lineno', 0)}")

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in libraries:
                        add(a.name, node)
                        alias[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in libraries:
                for a in node.names:
                    add(f"{node.module}.{a.name}", node)
                    alias[a.asname or a.name] = f"{node.module}.{a.name}"
        inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or id(node) in inner:
                continue
            parts: list[str] = []
            cur: ast.expr = node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id in alias:
                add(".".join([alias[cur.id], *reversed(parts)]), node)
    return found


def resolves(dotted: str) -> bool:
    """Whether ``a.b.c`` exists in the installed library: attribute by attribute, importing submodules on the way."""
    parts = dotted.split(".")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a deprecated alias (numpy.core) still resolves
        try:
            obj: Any = importlib.import_module(parts[0])
            for i in range(1, len(parts)):
                if hasattr(obj, parts[i]):
                    obj = getattr(obj, parts[i])
                else:
                    obj = importlib.import_module(".".join(parts[: i + 1]))
        except Exception:
            return False
    return True


def _forget_package() -> None:
    for name in [m for m in sys.modules if m == "shiftaudit" or m.startswith("shiftaudit.")]:
        del sys.modules[name]


def _library_versions() -> dict[str, str]:
    """Installed versions of the libraries the package and its tests use ("absent" for an optional one not there)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in (*PROBED_LIBRARIES, "pytest", "hypothesis", "matplotlib", "pillow", "onnx", "onnxruntime", "timm"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "absent"
    return found


def _check_imports(failures: list[str]) -> tuple[int, int, str]:
    """Each public name of shiftaudit used first in a clean module state (a circular import between packages shows
    only then), then every module: (public names, modules, the package's file)."""
    _forget_package()
    try:
        shiftaudit = importlib.import_module("shiftaudit")
    except Exception as exc:
        failures.append(f"import shiftaudit: {type(exc).__name__}: {str(exc)[:300]}")
        return 0, 0, "-"
    exports = sorted(getattr(shiftaudit, "_EXPORTS", None) or getattr(shiftaudit, "__all__", []))
    for name in exports:
        _forget_package()
        try:
            getattr(importlib.import_module("shiftaudit"), name)
        except Exception as exc:
            failures.append(f"shiftaudit.{name} (first use): {type(exc).__name__}: {str(exc)[:300]}")
    modules = 0
    for info in pkgutil.walk_packages(shiftaudit.__path__, "shiftaudit."):
        modules += 1
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failures.append(f"import {info.name}: {type(exc).__name__}: {str(exc)[:300]}")
    return len(exports), modules, str(importlib.import_module("shiftaudit").__file__)


def _check_cli(failures: list[str]) -> dict[str, str]:
    """``--help`` of the CLI and of every command, and ``--version``, in this process: "ok" or what went wrong."""
    helps: dict[str, str] = {}
    try:
        import typer.main
        from typer.testing import CliRunner

        from shiftaudit.cli import app

        runner = CliRunner()
        commands = sorted(getattr(typer.main.get_command(app), "commands", {}))
        for args in [["--help"], ["--version"], *([c, "--help"] for c in commands)]:
            r = runner.invoke(app, args)
            ok = r.exit_code == 0 and bool(r.output.strip())
            helps[" ".join(args)] = "ok" if ok else f"exit {r.exit_code}: {(r.output or repr(r.exception))[-300:]}"
            if not ok:
                failures.append(f"shiftaudit {' '.join(args)}: {helps[' '.join(args)]}")
    except Exception as exc:
        failures.append(f"CLI: {type(exc).__name__}: {str(exc)[:300]}")
    return helps


def check_package(root: Path = REPO) -> dict[str, Any]:
    """Whether shiftaudit imports and its CLI answers under the installed libraries (see the module's docstring).
    It empties ``sys.modules`` of shiftaudit's modules many times: run it in a process of its own."""
    t0 = time.perf_counter()
    failures: list[str] = []
    exports, modules, package_file = _check_imports(failures)
    helps = _check_cli(failures) if modules else {}
    names = referenced_names(root)
    missing = {name: where for name, where in sorted(names.items()) if not resolves(name)}
    failures += [f"{name} is not in the installed library (used at {', '.join(where)})" for name, where in missing.items()]
    return {
        "schema": "shiftaudit/gpu-check",
        "schema_version": 1,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "versions": _library_versions(),
        "cuda_available": torch.cuda.is_available(),
        "package_file": package_file,
        "package_from_working_tree": Path(package_file).resolve().is_relative_to(root.resolve()),
        "modules_imported": modules,
        "public_names_checked": exports,
        "cli": helps,
        "library_names_checked": len(names),
        "missing_library_names": missing,
        "failures": failures,
        "ok": not failures,
        "seconds": time.perf_counter() - t0,
    }


def report_check(out: Path) -> int:
    """``--check``: run :func:`check_package`, write ``OUT/gpu-imports.json``, print the gist; 1 on any failure."""
    checked = check_package()
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-imports.json").write_text(json.dumps(checked, indent=2) + "\n", "utf-8")
    v = checked["versions"]
    print(f"python {checked['python']} ({checked['executable']}), torch {v['torch']}, torchvision {v['torchvision']}")
    print(f"shiftaudit from {checked['package_file']} (working tree: {checked['package_from_working_tree']})")
    print(
        f"{checked['modules_imported']} modules imported, {checked['public_names_checked']} public names used first, "
        f"{len(checked['cli'])} CLI --help/--version, {checked['library_names_checked']} library names looked up: "
        f"{len(checked['missing_library_names'])} missing; {checked['seconds']:.1f} s"
    )
    for line in checked["failures"]:
        print(f"FAILED: {line}")
    print(f"wrote {out / 'gpu-imports.json'}")
    return 0 if checked["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda[:N], or cpu for a dry run (with --quick)")
    ap.add_argument("--quick", action="store_true", help="toy sizes: checks the code path, measures nothing useful")
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    ap.add_argument("--check", action="store_true", help="measure nothing: check the package against the installed torch")
    args = ap.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    if args.check:
        return report_check(args.out)
    from shiftaudit.files import write_json_atomic

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here; use --device cpu --quick for a dry run")
    result = run(device, args.quick, say=lambda s: print(f"... {s}", flush=True))
    path = write_json_atomic(args.out / "gpu.json", result)
    for c in result["resnets"]:
        print(
            f"{c['model']} {c['image_size']}px {c['precision']}: {c['pairs_per_s']:.0f} images x shifts/s, "
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
