"""An ONNX image classifier as an ``nn.Module``: the audit engine runs it like any model, onnxruntime does the maths.

Deployment teams often hold only the ``.onnx`` file. Every audit metric needs only forward passes, so
:class:`OnnxClassifier` wraps an ``onnxruntime.InferenceSession`` and converts torch <-> numpy at its edge; the
shifts, batching, accumulators and reports stay the engine's. What the graph says is read once, when it loads: the
one image input (name, layout NCHW or NHWC, channels, a fixed or free height and width) and the batch axis (free:
any batch; fixed N: chunks of N, the last one padded; fixed 1: one row at a time). What needs PyTorch modules
(per-layer distances, patching, torch.compile, autocast, CUDA) is refused or skipped in :func:`plan_onnx`.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shiftaudit.data.presets import IMAGENET_MEAN, IMAGENET_STD, PRESETS, Preprocessing, crop_fraction_resize
from shiftaudit.errors import CheckpointError, UsageError, first_line
from shiftaudit.interrupts import interruptible
from shiftaudit.loading.fixed_batch import run_in_batches
from shiftaudit.loading.onnx_check import INSTALL, NO_FOLDING

FLOAT_INPUTS = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
IMAGE_CHANNELS = (1, 3, 4)


def _onnxruntime(path: Path) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise CheckpointError(f"{path} is an ONNX model; auditing it needs onnxruntime: {INSTALL}.") from None
    return onnxruntime


def _dim(d: Any) -> int | None:
    """A fixed axis length, or None for a free (symbolic or unknown) one."""
    return int(d) if isinstance(d, int) and d > 0 else None


@dataclass(frozen=True)
class GraphInput:
    """What the graph's image input is: its name, layout, and the axes it fixes (None: any length)."""

    name: str
    layout: str  # "NCHW" or "NHWC"
    batch: int | None
    channels: int | None
    size: tuple[int | None, int | None]
    dtype: Any

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        h, w = self.size
        return (h, w) if h is not None and w is not None else None


def read_graph_input(inputs: list[Any], outputs: list[Any], source: str) -> tuple[GraphInput, int | None]:
    """The image input and the class count of a classifier graph, or one sentence saying why it is not one."""
    not_classifier = f"ONNX model {source} is not an image classifier"
    if len(inputs) != 1:
        names = ", ".join(str(i.name) for i in inputs[:4])
        raise CheckpointError(f"{not_classifier}: it takes {len(inputs)} inputs ({names}), expected one image batch.")
    inp = inputs[0]
    shape = list(inp.shape or [])
    if inp.type not in FLOAT_INPUTS:
        raise CheckpointError(f"{not_classifier}: its input {inp.name} is {inp.type}, expected a float image batch.")
    if len(shape) != 4:
        raise CheckpointError(
            f"{not_classifier}: its input {inp.name} has shape {shape}, expected a 4-D image batch (N, C, H, W)."
        )
    n, a, b, c = (_dim(d) for d in shape)
    if a in IMAGE_CHANNELS or (a is not None and c not in IMAGE_CHANNELS):
        layout, channels, size = "NCHW", a, (b, c)
    elif c in IMAGE_CHANNELS:
        layout, channels, size = "NHWC", c, (a, b)
    else:
        layout, channels, size = "NCHW", None, (b, c)
    if not outputs:
        raise CheckpointError(f"{not_classifier}: it has no output.")
    out = outputs[0]
    oshape = None if out.shape is None else list(out.shape)
    if oshape is not None and len(oshape) == 4 and [_dim(d) for d in oshape[2:]] == [1, 1]:
        oshape = oshape[:2]
    if oshape is not None and len(oshape) != 2:
        raise CheckpointError(f"{not_classifier}: its output {out.name} has shape {oshape}, expected class scores (N, classes).")
    classes = None if oshape is None else _dim(oshape[1])
    graph_input = GraphInput(str(inp.name), layout, n, channels, size, FLOAT_INPUTS[inp.type])
    return graph_input, classes


class OnnxClassifier(nn.Module):
    """Runs an onnxruntime session on (N, C, H, W) float tensors and returns (N, classes) logits as a tensor.

    A graph with a fixed batch N is fed chunks of exactly N rows (the last one padded with zeros, whose outputs are
    dropped); a free batch axis takes the engine's batch whole. Has no parameters: the engine casts inputs to float32.
    """

    black_box = "an ONNX graph run by onnxruntime"

    def __init__(self, session: Any, graph_input: GraphInput, source: str) -> None:
        super().__init__()
        self.session = session
        self.input = graph_input
        self.source = source
        self.output_name = str(session.get_outputs()[0].name)

    @property
    def notes(self) -> list[str]:
        """What the report should say about how the graph was run."""
        n = self.input.batch
        if n == 1:
            return ["the ONNX graph takes a fixed batch of 1: every shifted image went through it one row at a time (slow)"]
        if n is not None:
            return [f"the ONNX graph takes a fixed batch of {n}: rows went through it in chunks of {n}"]
        return []

    def _run(self, array: np.ndarray) -> np.ndarray:
        try:
            out = self.session.run([self.output_name], {self.input.name: array})[0]
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument classes
            raise RuntimeError(f"onnxruntime failed: {first_line(exc)[:300]}") from None
        return np.asarray(out, dtype=np.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device
        x = x.detach().to("cpu", torch.float32)
        if self.input.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)

        def run(chunk: torch.Tensor) -> torch.Tensor:
            out = self._run(np.ascontiguousarray(chunk.numpy(), dtype=self.input.dtype))
            if out.ndim == 4 and out.shape[2:] == (1, 1):
                out = out.reshape(out.shape[0], -1)
            return torch.from_numpy(np.ascontiguousarray(out))

        rows = self.input.batch
        out = run(x) if rows is None else run_in_batches(run, x, rows, rows)
        return out.to(device)

    def check_input(self, channels: int, size: tuple[int, int]) -> None:
        """Refuse, before any work, data whose channels or size the graph does not take."""
        want_c, (want_h, want_w) = self.input.channels, self.input.size
        if want_c is not None and channels != want_c:
            raise UsageError(
                f"ONNX model {self.source} takes {want_c}-channel images but the data has {channels} channels; pass "
                f"--mean/--std with {want_c} values."
            )
        if (want_h is not None and size[0] != want_h) or (want_w is not None and size[1] != want_w):
            h = "H" if want_h is None else str(want_h)
            w = "W" if want_w is None else str(want_w)
            raise UsageError(
                f"ONNX model {self.source} takes {h}x{w} images but the data is {size[0]}x{size[1]}; pass "
                f"--size {want_h or want_w}."
            )

    def plan_settings(
        self, config: Any, dev: torch.device, channels: int, size: tuple[int, int], notes: list[str]
    ) -> torch.device:
        """The audit settings the graph can take, decided before any work: the device it runs on (the CPU), and one
        sentence for what cannot apply (per-layer distances, autocast, CUDA). The plan calls it."""
        if config.layers or config.observers:
            raise UsageError(
                f"Per-layer feature distances hook PyTorch modules, and {self.source} is an ONNX graph; run --layers on "
                "the PyTorch model (state dict or safetensors)."
            )
        if config.precision != "fp32":
            raise UsageError(
                f"--precision {config.precision} does not apply to an ONNX model: onnxruntime runs the graph in the "
                "precision it was exported in; use --precision fp32."
            )
        if dev.type != "cpu":
            if str(config.device) != "auto":
                raise UsageError(f"ONNX models run on the CPU through onnxruntime; use --device cpu, not {config.device}.")
            dev = torch.device("cpu")
        if config.compile:
            notes.append("--compile does not apply to an ONNX graph (onnxruntime optimises it itself): not used")
        self.check_input(channels, size)
        notes.extend(self.notes)
        return dev


def default_preprocessing(graph_input: GraphInput, notes: list[str]) -> Any:
    """The graph's fixed input size with ImageNet's mean, std and crop fraction (3 channels: resize to size / 0.875,
    then the centre crop, as for ``--size`` alone; 0.5 and 0.5 and no resize otherwise), or None when the graph leaves
    the size free (the usual default, ImageNet at 224, then applies)."""
    size = graph_input.fixed_size
    if size is None:
        return None
    if size == (224, 224) and graph_input.channels in (3, None):
        return PRESETS["imagenet"]
    c = graph_input.channels or 3
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if c == 3 else ((0.5,) * c, (0.5,) * c)
    resize = crop_fraction_resize(size, PRESETS["imagenet"]) if c == 3 else None
    how = f"resize {resize} (ImageNet's crop fraction), " if resize is not None else ""
    notes.append(
        f"input size {size[0]}x{size[1]} read from the graph; {how}mean and std are assumed (pass --preset, --resize or "
        "--mean/--std)"
    )
    return Preprocessing(size=size, mean=mean, std=std, resize=resize, name="custom")


def session_options(ort: Any, threads: int) -> Any:
    """Session options that keep onnxruntime quiet and on ``threads`` intra-op threads."""
    ort.set_default_logger_severity(4)  # the process-wide logger too (thread pools, environment): one per process
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: onnxruntime's C++ log lines bypass Python and would reach the terminal;
    # every error still raises, and becomes one sentence
    options.intra_op_num_threads = threads
    return options


def exported_classifier(path: Path, threads: int) -> OnnxClassifier:
    """A graph shiftaudit exported itself (:mod:`shiftaudit.engine.backends`) as an :class:`OnnxClassifier`: trusted,
    so with every graph optimisation onnxruntime has; failures raise as they are (the caller falls back to torch)."""
    ort = _onnxruntime(path)
    options = session_options(ort, threads)
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    _, channels, height, width = (_dim(d) for d in inp.shape)
    graph_input = GraphInput(str(inp.name), "NCHW", None, channels, (height, width), np.float32)  # as exported
    return OnnxClassifier(session, graph_input, "the exported model")


def read_onnx(path: Path) -> tuple[OnnxClassifier, dict[str, str], int | None]:
    """The graph as an :class:`OnnxClassifier` on the CPU, its string metadata, and its class count when fixed."""
    from shiftaudit.loading.onnx_check import check_onnx_file  # looked up per call: a test replaces it on onnx_check

    ort = _onnxruntime(path)
    checked = check_onnx_file(path)  # declared sizes against the data, before onnxruntime allocates them
    options = session_options(ort, max(1, torch.get_num_threads()))  # as many threads as torch would use, not every core
    try:  # onnxruntime prints a banner before it retries a failed load: the one-sentence error below says it all.
        # The session is made in a worker thread (shiftaudit.interrupts) while this thread waits inside the redirect,
        # so that Ctrl-C unwinds through it and its one line reaches the real stderr.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            session = interruptible(
                ort.InferenceSession,
                str(path),
                sess_options=options,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=NO_FOLDING,
            )
    except Exception as exc:
        raise CheckpointError(
            f"ONNX model {path} cannot be loaded by onnxruntime ({first_line(exc)[:200].rstrip('.')}); it is damaged "
            "or uses operators this onnxruntime lacks."
        ) from None
    if not checked:
        raise CheckpointError(f"ONNX model {path} cannot be parsed by the onnx package to check its sizes; it is damaged.")
    graph_input, classes = read_graph_input(list(session.get_inputs()), list(session.get_outputs()), str(path))
    try:
        raw = dict(session.get_modelmeta().custom_metadata_map or {})
    except Exception:  # metadata is optional
        raw = {}
    return OnnxClassifier(session, graph_input, str(path)), raw, classes
