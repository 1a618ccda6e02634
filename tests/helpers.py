"""Small models, data and checks shared by tests (made here, never downloaded). Tests import from here, never
from one another."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from shiftaudit.cli import app
from shiftaudit.result import AuditResult

runner = CliRunner()


def examples(n: int) -> int:
    """A property test's example count, scaled by the hypothesis profile (tests/conftest.py): ``n`` under "ci"
    (max_examples 100, the default), ten times ``n`` under "fuzz" (max_examples 1000). Read when the test module is
    imported, after the profile is loaded."""
    from hypothesis import settings

    return max(1, round(n * settings.default.max_examples / 100))


class StopAfter(nn.Module):
    """Wraps a model; raises KeyboardInterrupt (a Ctrl-C) on forward call number ``stop`` when armed."""

    def __init__(self, model: nn.Module, stop: int | None) -> None:
        super().__init__()
        self.model = model
        self.stop = stop
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.stop is not None and self.calls == self.stop:
            raise KeyboardInterrupt
        return self.model(x)


def tiny_cnn(
    num_classes: int = 5, padding_mode: str = "zeros", pool: bool = True, spatial_head: bool = False, size: int = 12
) -> nn.Module:
    """A small conv net. With ``pool`` it downsamples (so it is not shift-invariant); ``spatial_head`` classifies the
    flattened feature map instead of its global average, which makes predictions depend strongly on position."""
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1, padding_mode=padding_mode), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Conv2d(8, 12, 3, padding=1, padding_mode=padding_mode), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    if spatial_head:
        side = size // 4 if pool else size
        layers += [nn.Flatten(), nn.Linear(12 * side * side, num_classes)]
    else:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, num_classes)]
    return nn.Sequential(*layers)


MODELS_SOURCE = '''
"""Models written by the test: ordinary ones, and ones that misbehave on purpose."""
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class NanOnBright(Tiny):
    """NaN logits for bright images (mean of the normalised input above 0), whatever the shift."""

    def forward(self, x):
        out = super().forward(x)
        bright = x.float().mean(dim=(1, 2, 3)) > 0
        return torch.where(bright[:, None], torch.full_like(out, float("nan")), out)


class InfEverywhere(Tiny):
    def forward(self, x):
        return super().forward(x) + float("inf")


class FeatureMap(Tiny):
    """Forgets its head: returns a (N, C, H, W) feature map instead of (N, classes)."""

    def forward(self, x):
        return self.features(x)


class InterruptOnSecondCall(Tiny):
    """Ctrl-C while the second batch runs."""

    def __init__(self, num_classes=3):
        super().__init__(num_classes)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return super().forward(x)


class OomAboveEight(Tiny):
    """Behaves like a GPU that only fits 8 inputs: larger batches raise CUDA's out-of-memory error."""

    def forward(self, x):
        if x.shape[0] > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().forward(x)


class NeedsMask(Tiny):
    """A model whose forward wants more than an image batch (a Python error, not a torch RuntimeError)."""

    def forward(self, x, mask):
        return super().forward(x * mask)


class Slow(Tiny):
    """Sleeps $SA_SLOW seconds per forward pass and appends a line to $SA_MARK (a run to signal mid-audit)."""

    def forward(self, x):
        import os
        import time

        if os.environ.get("SA_MARK"):
            with open(os.environ["SA_MARK"], "a") as f:
                f.write("forward\\n")
        time.sleep(float(os.environ.get("SA_SLOW", "0")))
        return super().forward(x)


def tiny(num_classes=3):
    return Tiny(num_classes)


def slow(num_classes=3):
    return Slow(num_classes)


def nan_on_bright(num_classes=3):
    return NanOnBright(num_classes)


def inf_everywhere(num_classes=3):
    return InfEverywhere(num_classes)


def feature_map(num_classes=3):
    return FeatureMap(num_classes)


def interrupt_on_second_call(num_classes=3):
    return InterruptOnSecondCall(num_classes)


def oom_above_eight(num_classes=3):
    return OomAboveEight(num_classes)


def needs_mask(num_classes=3):
    return NeedsMask(num_classes)


class ModelBail(BaseException):
    """A custom BaseException: not an Exception, so ``except Exception`` lets it through."""


class ExitsInForward(Tiny):
    """Ends the program from its forward: SystemExit(0) (the default), GeneratorExit or ModelBail."""

    def __init__(self, num_classes=3, exc=SystemExit(0)):
        super().__init__(num_classes)
        self.exc = exc

    def forward(self, x):
        raise self.exc


class SlowWithMarker(Tiny):
    """0.2 s per forward pass; touches the file named by $SA_TEST_MARKER on its first one (a subprocess test then
    knows the audit is running)."""

    def forward(self, x):
        import os
        import time

        marker = os.environ.get("SA_TEST_MARKER")
        if marker and not os.path.exists(marker):
            open(marker, "w").close()
        time.sleep(0.2)
        return super().forward(x)


def exit_zero(num_classes=3):
    return ExitsInForward(num_classes, SystemExit(0))


def generator_exit(num_classes=3):
    return ExitsInForward(num_classes, GeneratorExit())


def model_bail(num_classes=3):
    return ExitsInForward(num_classes, ModelBail("bail out"))


def exit_on_build(num_classes=3):
    raise SystemExit(0)


def slow_with_marker(num_classes=3):
    return SlowWithMarker(num_classes)
'''


def write_models_module(folder: Path, name: str) -> Path:
    """Write the test models as an importable module ``name`` in ``folder`` (the caller puts it on sys.path)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(MODELS_SOURCE))
    return path


def write_images(
    folder: Path, count: int, size: int = 16, mode: str = "RGB", seed: int = 0, lo: int = 0, hi: int = 255, prefix: str = "img"
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    for i in range(count):
        arr = rng.integers(lo, hi, (size, size, channels), dtype=np.uint8)
        Image.fromarray(arr[..., 0] if channels == 1 else arr, mode).save(folder / f"{prefix}_{i}.png")


def write_image_folder(root: Path, classes: int = 3, per_class: int = 2, size: int = 16, **kw: Any) -> Path:
    for c in range(classes):
        write_images(root / f"class_{c}", per_class, size=size, seed=c, **kw)
    return root


def cli(*args: Any):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_error(res: Any, *needles: str) -> str:
    """Exit 2 and exactly one non-empty stderr line, starting 'error: ', naming every needle."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2, f"exit {res.exit_code}\nstdout: {res.stdout}\nstderr: {res.stderr}\n{res.exception!r}"
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    assert "Traceback" not in res.output and "internal error" not in line, res.output
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def nothing_written(out: Path) -> bool:
    """Neither the output nor a temporary file next to it."""
    return not out.exists() and not any(p.name.startswith(f".{out.name}.") for p in out.parent.glob(".*"))


def synthetic_result(shift: float = 0.0, max_shift: int = 3, n: int = 40, name: str = "tiny", gate: bool = False) -> AuditResult:
    """A plausible exhaustive, labelled report made up in the test (no model run); ``shift`` lowers every accuracy."""
    rng = np.random.default_rng(0)
    radii = list(range(max_shift + 1))
    adv = [max(0.0, 0.9 - shift - 0.05 * r) for r in radii]
    offs = list(range(-max_shift, max_shift + 1))
    grid = [[round(0.9 - shift - 0.02 * max(abs(h), abs(w)), 4) for w in offs] for h in offs]
    p_grid = [[float(0.5 + 0.4 * np.cos(h + 2 * w)) for w in offs] for h in offs]
    variation = list(np.exp(rng.uniform(np.log(1e-4), np.log(0.3), n)))
    variation[0] = 0.0
    metrics: dict[str, Any] = {
        "accuracy": {
            "none": {"value": 0.9 - shift, "ci_low": 0.85 - shift, "ci_high": 0.94 - shift, "n": n},
            "random": {"value": 0.8 - shift, "ci_low": 0.74 - shift, "ci_high": 0.85 - shift, "n": n},
        },
        "consistency": {
            "sampled": {"value": 0.93, "ci_low": 0.88, "ci_high": 0.96, "n": n},
            "exact": {"value": 0.92 + shift / 10, "ci_low": 0.87, "ci_high": 0.95, "n": n},
        },
        "variation": {
            "mean": float(np.mean(variation)),
            "median": float(np.median(variation)),
            "ci_low": 0.01,
            "ci_high": 0.05,
            "n": n,
        },
        "adversarial": {
            "radius": radii,
            "accuracy": adv,
            "ci_low": [a - 0.05 for a in adv],
            "ci_high": [a + 0.04 for a in adv],
            "n": n,
        },
        "accuracy_map": {
            "dh": offs,
            "dw": offs,
            "accuracy": grid,
            "diagonal": {"shift": offs, "accuracy": [grid[i][i] for i in range(len(offs))]},
            "min": min(min(r) for r in grid),
            "max": max(max(r) for r in grid),
            "n": n,
        },
        "flip_examples": {
            "limit": 4,
            "dh": offs,
            "dw": offs,
            "examples": [
                {
                    "image_id": i,
                    "label": i % 3,
                    "first_failure_radius": 1,
                    "flip_shift": [0, 1],
                    "flip_prediction": (i + 1) % 3,
                    "p_correct": p_grid,
                }
                for i in range(2)
            ],
        },
    }
    result = AuditResult(
        metrics=metrics,
        per_image={"image_id": list(range(n)), "variation": variation},
        model={"arch": name, "description": f"test model {name}"},
        data={
            "description": "synthetic test set",
            "kind": "memory",
            "num_images": n,
            "labelled": True,
            "image_size": [8, 8],
            "nonfinite_images": 0,
        },
        settings={
            "shifts": {
                "mode": "circular",
                "kind": "window",
                "image_size": [8, 8],
                "max_shift": max_shift,
                "step": 1,
                "count": (2 * max_shift + 1) ** 2,
                "padding": "circular (wrap-around)",
            },
            "shift_mode": "circular",
            "mode": "exhaustive",
            "pairs": 5,
            "seed": 0,
            "precision": "fp32",
            "device_batch": 64,
            "engine": "dense",
        },
        environment={"shiftaudit": "0.1.0", "torch": "2.x", "python": "3.11", "device": "cpu"},
        notes=["a test note"],
    )
    if gate:
        from shiftaudit.gating import build_thresholds, evaluate_gate

        result.gate = evaluate_gate(
            result, build_thresholds(min_consistency=0.5, min_accuracy=0.95, min_adv_accuracy=["2=0.5"])
        ).to_json()
    return result


def assert_real_png(path: Path, size: tuple[int, int] | None = None) -> None:
    """A PNG of the expected size that is not blank: varied pixels, more than a handful of colours."""
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        if size is not None:
            assert img.size == size
        rgb = np.asarray(img.convert("RGB"), dtype=float)
    assert rgb.std() > 10, f"{path.name} looks blank"
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50, f"{path.name} has too few colours"


# -- a real-format ImageNet case: a torchvision model with 1000 outputs, JPEG files in WordNet-id folders -------------
IMAGENET_FOLDERS = {"n01530575": 1, "n02123045": 1, "n02690373": 1, "n04037443": 1}  # brambling, tabby, airliner, racer
IMAGENET_INDICES = (10, 281, 404, 751)  # their ImageNet-1k indices
JPEG_SIZES = ((90, 60), (120, 80), (64, 100), (150, 150))  # (width, height): smaller and larger than the crop


def write_imagenet_jpegs(root: Path, folders: dict[str, int] = IMAGENET_FOLDERS, seed: int = 0) -> Path:
    """Real JPEG files of varied sizes and aspect ratios, named like ILSVRC2012 validation files, one folder per
    WordNet id. Smooth random content (blobs, not pixel noise), as photos are."""
    rng = np.random.default_rng(seed)
    k = 0
    for wnid, count in folders.items():
        (root / wnid).mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            w, h = JPEG_SIZES[k % len(JPEG_SIZES)]
            coarse = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
            img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
            img.save(root / wnid / f"ILSVRC2012_val_{k + 1:08d}.JPEG", quality=90)
            k += 1
    return root


def save_imagenet_model(path: Path, scale: float = 4.0) -> Path:
    """torchvision ``mobilenet_v3_small`` with 1000 outputs and fixed random weights, saved as a plain ``.pt`` state
    dict. Its BatchNorm statistics are estimated on seeded noise (fresh ones collapse a random network's activations
    to ~1e-10, so every output is the same), and the last layer scores only :data:`IMAGENET_INDICES`: the model is
    confident, often right on :func:`write_imagenet_jpegs` images and changes its mind under shifts."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=1000)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a plain average over the calibration batch
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 3, 72, 72, generator=torch.Generator().manual_seed(0)))
        head = model.classifier[3]
        head.weight.zero_()
        head.bias.fill_(-30.0)
        keep = list(IMAGENET_INDICES)
        head.weight[keep] = scale * torch.randn(len(keep), head.weight.shape[1], generator=torch.Generator().manual_seed(1))
        head.bias[keep] = 0.0
    torch.save(model.eval().state_dict(), path)
    return path


@contextlib.contextmanager
def tiny_models_on_path(root: Path, module: str, **folder: Any) -> Iterator[tuple[Any, Path, Path]]:
    """The test models as importable ``module`` (on sys.path while inside), a tiny 3-class state dict saved as
    ``root/tiny.pt`` and an ImageFolder ``root/val`` (``folder``: write_image_folder's options): (module, ckpt, data)."""
    write_models_module(root / "pkgs", module)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root / "pkgs"))
        mod = __import__(module)
        torch.manual_seed(0)
        ckpt = root / "tiny.pt"
        torch.save(mod.tiny(3).state_dict(), ckpt)
        try:
            yield mod, ckpt, write_image_folder(root / "val", **folder)
        finally:
            sys.modules.pop(module, None)


def signature_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where identification keeps its signature cache in tests: one folder per test run, shared by the xdist workers
    (building torchvision's signatures takes ~20 s; a worker that comes second finds them, and atomic writes keep the
    file whole), never the user's ~/.cache."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # .../pytest-N/popen-gwK: pytest-N is this run's, shared by its workers
        base = base.parent
    return base / "shiftaudit-cache"


# -- a real CLI process under a memory limit: how long it took and how much memory it used ------------------------------
MEMORY_LIMIT = 4 << 30  # address space of the child: a regression that allocates what a hostile file declares fails
# inside it instead of taking the machine down. Enough for a refusal, not for an audit: torch maps about 2 GiB, and
# oneDNN cannot create its convolution primitives under it


def run_measured(*args: Any, timeout: float = 180, env: dict[str, str] | None = None) -> tuple[int, str, float, int]:
    """``python -m shiftaudit ARGS`` in a real process under :data:`MEMORY_LIMIT`: (exit code, stderr, start-ups, peak
    resident bytes). Start-ups: the run's seconds over those of ``shiftaudit --version`` measured just before under the
    same limit. Importing torch alone takes 4 s on an idle 2-core machine and several times that on a loaded one, so
    "within seconds" is a small number of start-ups (an idle machine refuses these files in about 2).
    The peak is the measured process's own (see ``_LAUNCH``), not that of every child the test process ran, nor the
    test worker's size carried across exec."""
    startup = _measured(["--version"], timeout, env)[2]
    code, stderr, elapsed, peak = _measured(list(args), timeout, env)
    return code, stderr, elapsed / max(startup, 0.1), peak


# A fresh launcher forks the measured process and reports its peak: Linux carries a process's peak resident size across
# exec, so a child forked straight from this (large, long-lived) test worker would report the worker's size as its own.
_LAUNCH = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "shiftaudit", *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def _measured(args: list[Any], timeout: float, env: dict[str, str] | None) -> tuple[int, str, float, int]:
    import os
    import resource
    import signal
    import subprocess
    import tempfile
    import threading
    import time

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    fd, peak_file = tempfile.mkstemp(prefix="shiftaudit-peak-")
    os.close(fd)
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCH, peak_file, *[str(a) for a in args]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit,
        start_new_session=True,  # the timer ends the launcher and the measured process together
        env=env,
    )
    timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    try:
        stderr = proc.stderr.read() if proc.stderr else ""
        proc.wait()
    finally:
        timer.cancel()
    elapsed = time.monotonic() - start
    assert elapsed < timeout, f"shiftaudit {args} still ran after {timeout} s"
    with open(peak_file) as f:
        peak = int(f.read() or 0) * 1024
    os.remove(peak_file)
    return proc.returncode, stderr, elapsed, peak


def assert_one_error_line(stderr: str, *needles: str) -> str:
    """Raw stderr of a real process: exactly one non-empty line, starting 'error: ', naming every needle."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "internal error" not in lines[0], stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


# -- the tiny test models on sys.path: the module-scoped fixtures of tests/conftest.py and their command lines ----------
# Each fixture imports the models of MODELS_SOURCE under its own module name, so two of them can be alive at once.
TINY_FILES_MODULE = "sa_tiny_files_models"
TINY_FILES_ARCH = f"{TINY_FILES_MODULE}:tiny"


@dataclass
class TinyFiles:
    root: Path
    pt: Path
    safetensors: Path
    torchscript: Path
    data: Path


def files_eval_args(
    tiny_files: TinyFiles, *extra: Any, model: Any = None, data: Any = None, arch: str | None = TINY_FILES_ARCH
) -> list[Any]:
    args: list[Any] = ["eval", model if model is not None else tiny_files.pt]
    if arch:
        args += ["--arch", arch]
    args += [
        "--data",
        data if data is not None else tiny_files.data,
        "--size",
        "16",
        "--max-shift",
        "2",
        "--device",
        "cpu",
        "--workers",
        "0",
        *extra,
    ]
    return args


TINY_ENV_MODULE = "sa_tiny_env_models"


def env_eval_args(
    tiny_env: dict[str, Any], *extra: Any, arch: str = "tiny", data: Any = None, ckpt: Any = None, size: str | None = "16"
) -> list[Any]:
    return [
        "eval",
        ckpt or tiny_env["ckpt"],
        "--arch",
        f"{TINY_ENV_MODULE}:{arch}",
        "--data",
        data or tiny_env["data"],
        *(["--size", size] if size else []),
        "--max-shift",
        "2",
        "--device",
        "cpu",
        "--workers",
        "0",
        *extra,
    ]


TINY_SETUP_MODULE = "sa_tiny_setup_models"


def setup_eval_args(tiny_setup, *extra: object, factory: str = "tiny") -> list[object]:
    _, ckpt, data, _ = tiny_setup
    return [
        "eval",
        ckpt,
        "--arch",
        f"{TINY_SETUP_MODULE}:{factory}",
        "--data",
        data,
        "--size",
        "16",
        "--max-shift",
        "1",
        "--device",
        "cpu",
        "--workers",
        "0",
        *extra,
    ]


TINY_MODELS_MODULE = "sa_tiny_models"


def eval_tiny(ckpt: Path, data: Path, factory: str, *extra: object):
    return cli(
        "eval",
        ckpt,
        "--arch",
        f"{TINY_MODELS_MODULE}:{factory}",
        "--data",
        data,
        "--size",
        "16",
        "--max-shift",
        "2",
        "--device",
        "cpu",
        "--workers",
        "0",
        *extra,
    )


def run_ok(args: list[Any], report: Path) -> dict[str, Any]:
    res = cli(*args, "--json", report)
    assert res.exit_code == 0, f"{res.stdout}\n{res.stderr}\n{res.exception!r}"
    assert "Traceback" not in res.output
    return {"res": res, "report": json.loads(report.read_text())}


# -- files to audit ---------------------------------------------------------------------------------------------------
def safetensors_with_metadata(src: Path, dest: Path, metadata: dict[str, str]) -> Path:
    from safetensors.torch import load_file

    save_file(load_file(str(src)), str(dest), metadata=metadata)
    return dest


def small_image_folder(tmp: Path) -> Path:
    return write_image_folder(tmp / "small", size=8)


def folder_with_corrupt_images(tmp: Path) -> Path:
    """Good images plus one corrupt PNG and one non-image file."""
    root = write_image_folder(tmp / "mixed")
    (root / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    (root / "class_1" / "notes.txt").write_text("not an image")
    return root


def net_state(width, num_classes=3):
    torch.manual_seed(0)
    conv, fc = torch.nn.Conv2d(3, width, 3, stride=2, padding=1), torch.nn.Linear(width, num_classes)
    return {"conv.weight": conv.weight.data, "conv.bias": conv.bias.data, "fc.weight": fc.weight.data, "fc.bias": fc.bias.data}


POSITIONAL = [
    "--arch",
    "tests.helpers:tiny_cnn",
    "--arch-kwargs",
    '{"spatial_head": true, "size": 16}',
    "--preset",
    "cifar",
    "--size",
    "16",
    "--max-shift",
    "2",
    "--device",
    "cpu",
    "--quiet",
]


def positional_model(path, num_classes=3):
    """A net that classifies the flattened feature map: its predictions move with the image, so shifts flip them."""
    torch.manual_seed(0)
    torch.save(tiny_cnn(num_classes, spatial_head=True, size=16).state_dict(), path)
    return path


def inspect_json(*args):
    res = runner.invoke(app, ["inspect", *map(str, args), "--size", "32", "--json", "-"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


# -- outputs -----------------------------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]


def forbid_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any audit fail the test: a refusal must come before the work."""

    def audit(*args: object, **kwargs: object) -> None:
        raise AssertionError("the audit started although an output was unusable")

    monkeypatch.setattr("shiftaudit.engine.runner.run_plan", audit)  # what audit() runs
    monkeypatch.setattr("shiftaudit.cli.demo_cmd.run_plan", audit)  # what the demo runs
    monkeypatch.setattr("shiftaudit.cli.eval_cmd.run_plan", audit)  # what eval runs
    monkeypatch.setattr("shiftaudit.antialias.workflow.run_plan", audit)  # what patch --eval runs


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of the atomic writer (``.NAME.xxxx``) anywhere under ``folder``."""
    return [p for p in folder.rglob(".*") if p.is_file()]


NAME_MAX = 255  # ext4, tmpfs, xfs, btrfs: what the temporary folders of a test run are on


def named(folder: Path, size: int, ext: str = ".json", fill: str = "n") -> Path:
    """``folder`` / a name of exactly ``size`` bytes ending in ``ext``."""
    return folder / (fill * (size - len(ext)) + ext)


# -- hypothesis settings of the property tests that run commands ------------------------------------------------------
def hypothesis_settings(n: int) -> settings:
    """``n`` examples under the "ci" profile, more under "fuzz" (`make fuzz`); derandomised as the profile says.
    Call it in the test file: tests/conftest.py imports this module before it loads the profile."""
    return settings(
        max_examples=examples(n), deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
