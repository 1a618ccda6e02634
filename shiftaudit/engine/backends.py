"""Inference runtimes that run a PyTorch model's forward passes on the CPU, registered by name.

On a CPU an audit's time is almost all forward passes, and eager PyTorch is not the fastest way to run them: on the
idle 2-core machine of docs/performance.md, OpenVINO and ONNX Runtime ran resnet18's forward pass at 224 px 1.5-1.9x
faster and EfficientNet-Lite0's 3.7-4.6x, with the same predictions. :func:`export_onnx` exports the model once, at
the audit's input shape with a free batch axis (a fixed one measured no faster), to a temporary folder; each
:class:`Runtime` compiles that file and runs it as an ``nn.Module`` that
:class:`~shiftaudit.engine.forward.BatchedForward` calls like the model itself, so every strategy that runs the model
batch by batch (dense, sampled, early exit, the sequential gate) uses it unchanged. Which runtime runs, and whether
its probe agreed with torch, is decided by :mod:`shiftaudit.engine.backend_plan`.

A runtime is one small class: its name (``backend=NAME``, ``--backend NAME``), label, the package it imports, the
pip extra that installs it, and :meth:`Runtime.load`, which compiles an exported file into a function from an
(N, C, H, W) float32 array to (N, classes) logits. The base class does the rest.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from shiftaudit.engine.forward import as_logits
from shiftaudit.errors import first_line


class ExportFailed(Exception):
    """The model could not be exported to ONNX; the message says why in a few words."""


class Runtime:
    """One inference runtime. A leaf names itself and implements :meth:`load` (or :meth:`module`)."""

    name: ClassVar[str]  # what `backend` takes
    label: ClassVar[str]  # how the report names it
    package: ClassVar[str]  # the module it imports
    extra: ClassVar[str]  # the pip extra of shiftaudit that installs it

    def __init__(self, threads: int) -> None:
        self.threads = threads

    @classmethod
    def installed(cls) -> bool:
        try:
            return importlib.util.find_spec(cls.package) is not None
        except (ImportError, ValueError):
            return False

    @classmethod
    def version(cls) -> str:
        try:
            return importlib.metadata.version(cls.package)
        except importlib.metadata.PackageNotFoundError:
            return str(getattr(importlib.import_module(cls.package), "__version__", "?"))

    @classmethod
    def install(cls) -> str:
        return f"pip install 'shiftaudit[{cls.extra}]'"

    def load(self, path: Path) -> Callable[[np.ndarray], np.ndarray]:
        """The exported graph at ``path``, compiled: (N, C, H, W) float32 -> (N, classes) logits."""
        raise NotImplementedError

    def module(self, path: Path) -> nn.Module:
        """The compiled graph as a module the engine calls like the model (the file may be deleted after)."""
        return RuntimeModule(self.load(path), self.label)


RUNTIMES: dict[str, type[Runtime]] = {}


def register_runtime(cls: type[Runtime]) -> type[Runtime]:
    """Class decorator: make a runtime available as ``backend=cls.name``."""
    RUNTIMES[cls.name] = cls
    return cls


def runtime_names() -> tuple[str, ...]:
    return tuple(RUNTIMES)


class RuntimeModule(nn.Module):
    """Tensors in, tensors out, a compiled runtime graph between (on the CPU, in float32)."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], label: str) -> None:
        super().__init__()
        self.run = run
        self.label = label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        try:
            out = self.run(array)
        except Exception as exc:  # each runtime raises its own classes
            raise RuntimeError(f"{self.label} failed: {first_line(exc)[:300]}") from None
        return torch.from_numpy(np.array(out, dtype=np.float32)).to(x.device)  # a copy: runtimes reuse their buffers


@register_runtime
class OpenVino(Runtime):
    name = "openvino"
    label = "OpenVINO"
    package = "openvino"
    extra = "openvino"

    def load(self, path: Path) -> Callable[[np.ndarray], np.ndarray]:
        import openvino  # local: an optional extra

        core = openvino.Core()
        request = core.compile_model(core.read_model(str(path)), "CPU", self.settings()).create_infer_request()
        return lambda array: request.infer({0: array})[0]

    def settings(self) -> dict[str, Any]:
        """How the CPU plugin compiles the graph."""
        return {
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": "f32",  # never bf16, which OpenVINO picks on CPUs that have it
            "PERFORMANCE_HINT": "LATENCY",  # one stream: the engine sends one batch at a time
        }


@register_runtime
class OnnxRuntime(Runtime):
    name = "onnxruntime"
    label = "ONNX Runtime"
    package = "onnxruntime"
    extra = "onnx"

    def module(self, path: Path) -> nn.Module:
        # local: loading imports antialias, whose workflow imports the engine
        from shiftaudit.loading.onnx_model import exported_classifier

        return exported_classifier(path, self.threads)  # the runner of .onnx models, on the exported file


class _Logits(nn.Module):
    """The model's class scores alone (a tensor, whatever the model returns), in float32: what the graph outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return as_logits(self.model(x), x.shape[0]).float()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No warnings or progress lines from the exporters (the report says what happened)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _export(model: nn.Module, example: torch.Tensor, path: Path, dynamo: bool) -> None:
    names, outputs = ["images"], ["logits"]
    if dynamo:  # torch.export: needs onnxscript
        batch = torch.export.Dim("batch", min=1, max=1 << 20)
        shapes = ({0: batch},)
        torch.onnx.export(
            model, (example,), str(path), dynamo=True, dynamic_shapes=shapes, input_names=names, output_names=outputs
        )
    else:  # the TorchScript exporter: faster, and needs nothing beyond torch
        axes = {"images": {0: "batch"}, "logits": {0: "batch"}}
        torch.onnx.export(model, (example,), str(path), dynamo=False, dynamic_axes=axes, input_names=names, output_names=outputs)


def export_onnx(model: nn.Module, example: torch.Tensor, folder: Path) -> Path:
    """``model`` as ``folder/model.onnx`` for inputs shaped like ``example`` (at least 2 rows) with any batch: the
    TorchScript exporter, else torch.export's; :class:`ExportFailed` with the first reason when neither can."""
    path = folder / "model.onnx"
    reasons = []
    for dynamo in (False, True):
        try:
            with _quiet(), torch.no_grad():
                _export(_Logits(model).eval(), example, path, dynamo)
            return path
        except Exception as exc:
            reasons.append(first_line(exc)[:200])
    raise ExportFailed(reasons[0])


def runtime_versions(names: tuple[str, ...]) -> dict[str, Any]:
    """The version of each named runtime, for the report's environment."""
    return {name: RUNTIMES[name].version() for name in names if name in RUNTIMES}
