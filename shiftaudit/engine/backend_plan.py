"""Who runs an audit's forward passes: torch, or an inference runtime that was checked against torch first.

``AuditConfig(backend=...)``: ``torch`` (the default: nothing here runs, and the report is what it always was),
``openvino`` or ``onnxruntime`` (:mod:`shiftaudit.engine.backends`), or ``auto``. The plan calls, in order:

- :func:`check_backend`, before any work: a runtime named that is not installed, or asked for with what needs
  PyTorch modules (per-layer distances, autocast precision, ``torch.compile``), is refused in one sentence;
  :func:`runtime_device` puts an audit whose device is auto on the CPU, and refuses a CUDA device;
- :func:`plan_backend`, once the strategy is chosen: where a runtime cannot apply (the polyphase engine, already
  faster; a CUDA device; a model that is not float32 PyTorch) torch runs the model with a note. Otherwise a probe
  batch (the data's first images at the input size) runs through torch, the model is exported once to a temporary
  folder (deleted when compiled) and compiled, and the probe runs through the runtime, as a batch and as one row (the
  exported batch axis must be free). The runtime runs the audit only if its logits are within
  :data:`PROBE_TOLERANCE` of torch's and every top-1 prediction agrees; otherwise torch does, with a note. Export
  seconds and the probe's figures go into the plan and the report's ``settings.backend``.

``auto`` considers a runtime only when the audit's forward passes, estimated from a timed (warm) torch call on the
probe batch, would take at least :data:`AUTO_MIN_SECONDS` with torch: below that, exporting (seconds for a resnet)
would not pay. It then exports once, compiles every installed runtime of :data:`AUTO_ORDER`, probes each, times a
warm call of each on the probe batch, and the fastest that agrees with torch runs the audit, if it was faster than
torch (which otherwise runs it, with a note giving the times). Where auto ends on torch on the CPU for a long audit,
it also measures whether the channels_last memory format is faster and takes it when it is. Auto's choices depend on
timings, so its reports are not reproducible bit for bit; a named backend's are, on one machine.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shiftaudit.engine.backends import RUNTIMES, ExportFailed, Runtime, export_onnx
from shiftaudit.engine.config import AuditConfig
from shiftaudit.engine.forward import BatchedForward, as_logits, model_dtype
from shiftaudit.errors import ModelError, UsageError, failure_text, first_line
from shiftaudit.result import Backend, Probe

PROBE_TOLERANCE = 1e-3  # largest logit difference (relative to 1 + max |logit|) accepted, as for the polyphase check
PROBE_ROWS = 16  # images in the probe batch (fewer when the data or the device batch is smaller)
AUTO_ORDER = ("openvino", "onnxruntime")
AUTO_MIN_SECONDS = 20.0  # auto exports only when torch's forward passes are estimated to take at least this long
CHANNELS_LAST_GAIN = 1.1  # auto takes channels_last when the probe ran at least this much faster in it


@dataclass(frozen=True)
class BackendRequest:
    """What :func:`plan_backend` decides from: the settings, the model on its device and the planned audit."""

    config: AuditConfig
    model: nn.Module
    dataset: Any
    strategy: str
    device: torch.device
    size: tuple[int, int]
    threads: int
    forward_rows: int  # image x shift rows the audit runs at most
    outside: str | None  # what runs the model when it is not PyTorch (an ONNX graph), else None


def check_backend(config: AuditConfig) -> None:
    """Refuse, before any work, a named runtime that is not installed or cannot do what else was asked."""
    name = config.backend
    if name not in RUNTIMES:
        return
    runtime = RUNTIMES[name]
    if not runtime.installed():
        raise UsageError(f"`backend` {name} needs the {runtime.package} package, which is not installed: {runtime.install()}.")
    if config.layers or config.observers:
        raise UsageError(
            f"Per-layer distances hook PyTorch modules, and `backend` {name} runs an exported graph; use `backend` torch "
            "with `layers`."
        )
    if config.precision != "fp32":
        raise UsageError(f"`backend` {name} runs the model in float32; use `precision` fp32, or `backend` torch for autocast.")
    if config.compile:
        raise UsageError(f"`backend` {name} compiles the model itself; drop `compile`, or use `backend` torch.")


def runtime_device(config: AuditConfig, dev: torch.device) -> torch.device:
    """The CPU for a named runtime when the device was left to auto; a CUDA device asked for is refused."""
    if config.backend not in RUNTIMES or dev.type == "cpu":
        return dev
    if config.device is not None and str(config.device) != "auto":
        raise UsageError(f"`backend` {config.backend} runs the model on the CPU; use `device` cpu, not {config.device}.")
    return torch.device("cpu")


def _torch_entry(asked: str, export_seconds: float | None = None, probe: Probe | None = None) -> Backend:
    return Backend(name="torch", asked=asked, export_seconds=export_seconds, probe=probe)


def _skip_reason(req: BackendRequest) -> str | None:
    """Why no runtime can run this audit (auto's reasons; a named runtime was refused the others already)."""
    config = req.config
    if req.device.type != "cpu":
        return f"the inference runtimes run on the CPU, and this audit runs on {req.device.type}"
    if config.layers or config.observers:
        return "per-layer distances hook PyTorch modules"
    if config.precision != "fp32":
        return f"precision {config.precision} is torch's autocast"
    if config.compile:
        return "torch.compile was asked for"
    if req.strategy == "polyphase":
        return "the polyphase engine evaluates every circular shift at once, faster than any runtime runs the dense audit"
    dtype = model_dtype(req.model)
    if dtype != torch.float32:
        return f"the runtimes run float32 models and this one is {str(dtype).removeprefix('torch.')}"
    return None


def plan_backend(req: BackendRequest, forward: BatchedForward, notes: list[str]) -> Backend | None:
    """The backend of the audit (see the module doc): ``forward`` runs the runtime's module when one passed its
    probe. Returns the report's ``settings.backend`` (None for ``backend`` torch, which adds nothing)."""
    asked = req.config.backend
    if asked == "torch":
        return None
    if req.outside is not None:  # nothing to export: the graph runs as it came
        notes.append(f"backend {asked}: not used, the model is {req.outside} already")
        return None
    why = _skip_reason(req)
    if why is not None:
        notes.append(f"backend {asked}: {why}; torch ran the model")
        return _torch_entry(asked)
    x = probe_inputs(req.dataset, req.size, min(PROBE_ROWS, max(2, forward.batch)))
    ref, seconds = _torch_logits(req.model, x, timed=asked == "auto")
    if asked == "auto" and seconds / len(x) * req.forward_rows < AUTO_MIN_SECONDS:
        notes.append(
            f"backend auto: torch ran the model (its forward passes were estimated at under {AUTO_MIN_SECONDS:.0f} s, too "
            "few for exporting the model to pay)"
        )
        return _torch_entry(asked)
    runtimes = [RUNTIMES[asked]] if asked in RUNTIMES else [RUNTIMES[n] for n in AUTO_ORDER if RUNTIMES[n].installed()]
    if not runtimes:
        hint = " or ".join(RUNTIMES[n].install() for n in AUTO_ORDER)
        notes.append(f"backend auto: no inference runtime is installed ({hint}); torch ran the model")
        entry = _torch_entry(asked)
    else:
        entry = _try_runtimes(req, [cls(req.threads) for cls in runtimes], (x, ref, seconds), forward, notes)
    if entry.name == "torch" and asked == "auto" and req.config.channels_last is None:
        _choose_layout(req.model, x, seconds, forward, notes)
    return entry


def probe_inputs(dataset: Any, size: tuple[int, int], rows: int) -> torch.Tensor:
    """Up to ``rows`` of the data's first images, readable and finite, at the input size (a crop canvas cut to its
    centre), as float32 on the CPU; seeded random images make up at least two rows."""
    images = []
    for i in range(min(len(dataset), rows)):
        x = dataset.load(i)[0] if hasattr(dataset, "load") else dataset[i][0]
        x = torch.as_tensor(x, dtype=torch.float32)
        top, left = (x.shape[-2] - size[0]) // 2, (x.shape[-1] - size[1]) // 2
        x = x[..., top : top + size[0], left : left + size[1]]
        if tuple(x.shape[-2:]) == tuple(size) and bool(torch.isfinite(x).all()):
            images.append(x)
    channels = int(getattr(dataset, "channels", images[0].shape[0] if images else 3))
    gen = torch.Generator().manual_seed(0)
    while len(images) < 2:
        images.append(torch.randn((channels, *size), generator=gen))
    return torch.stack(images)


def _torch_logits(model: nn.Module, x: torch.Tensor, timed: bool) -> tuple[torch.Tensor, float]:
    """Torch's logits for the probe batch and, when ``timed``, the seconds of a second (warm) call."""
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = x.to(dev)
    try:
        with torch.inference_mode():
            ref = as_logits(model(x), x.shape[0]).float().cpu()
            seconds = 0.0
            if timed:
                t0 = time.perf_counter()
                model(x)
                seconds = time.perf_counter() - t0
    except (ModelError, KeyboardInterrupt):
        raise
    except BaseException as exc:  # the user's model failed: the audit would fail on its first batch alike
        raise ModelError(f"The model failed on a batch of shape {tuple(x.shape)}: {failure_text(exc)}") from None
    return ref, seconds


def _compile(runtimes: list[Runtime], model: nn.Module, x: torch.Tensor) -> dict[str, nn.Module | Exception]:
    """The model exported once to a temporary folder (deleted once compiled) and compiled by each runtime (or the
    runtime's error); :class:`ExportFailed` when it does not export."""
    built: dict[str, nn.Module | Exception] = {}
    with tempfile.TemporaryDirectory(prefix="shiftaudit-export-") as folder:
        path = export_onnx(model, x[:2], Path(folder))
        for runtime in runtimes:
            try:
                built[runtime.name] = runtime.module(path)
            except Exception as exc:  # the runtime's own error classes
                built[runtime.name] = exc
    return built


@dataclass
class _Candidate:
    runtime: Runtime
    module: nn.Module
    probe: Probe
    seconds: float  # a warm call on the probe batch


def _try_runtimes(
    req: BackendRequest,
    runtimes: list[Runtime],
    reference: tuple[torch.Tensor, torch.Tensor, float],
    forward: BatchedForward,
    notes: list[str],
) -> Backend:
    """Export once, compile and probe each runtime; the fastest that agrees with torch runs the audit (for auto, only
    if it beat torch on the probe), torch otherwise."""
    asked, (x, ref, torch_seconds) = req.config.backend, reference
    t0 = time.perf_counter()
    try:
        built = _compile(runtimes, req.model, x)
    except ExportFailed as exc:
        notes.append(f"backend {asked}: the model does not export to ONNX ({exc}); torch ran the model")
        return _torch_entry(asked)
    export_seconds = time.perf_counter() - t0
    probed = [_probe_one(asked, runtime, built[runtime.name], x, ref, notes) for runtime in runtimes]
    passed = [c for c in probed if isinstance(c, _Candidate)]
    if not passed:
        return _torch_entry(asked, export_seconds, next((c for c in probed if isinstance(c, Probe)), None))
    best = min(passed, key=lambda c: c.seconds)
    if asked == "auto" and not best.seconds < torch_seconds:
        notes.append(f"backend auto: {_race(passed, torch_seconds)}: torch was the fastest, and ran the model")
        return _torch_entry(asked, export_seconds, best.probe)
    forward.model, forward.channels_last = best.module, False
    c, (h, w), label = x.shape[1], req.size, best.runtime.label
    what = f"max |logit difference| {best.probe.max_abs_logit_diff:.2g} against torch on a probe of {best.probe.rows} images"
    race = f" ({_race(passed, torch_seconds)})" if asked == "auto" else ""
    notes.append(f"backend {asked}: {label} ran the model{race}, exported to ONNX at {c}x{h}x{w} with a free batch axis; {what}")
    return Backend(name=best.runtime.name, asked=asked, export_seconds=export_seconds, probe=best.probe)


def _race(passed: list[_Candidate], torch_seconds: float) -> str:
    times = ", ".join(f"{c.runtime.label} {c.seconds:.2g} s" for c in passed)
    return f"probe batch: torch {torch_seconds:.2g} s, {times}"


def _probe_one(
    asked: str, runtime: Runtime, built: nn.Module | Exception, x: torch.Tensor, ref: torch.Tensor, notes: list[str]
) -> _Candidate | Probe | None:
    """A runtime that agreed with torch on the probe (timed for auto); else its probe (or None) and a note why not."""
    label = runtime.label
    if isinstance(built, Exception):
        notes.append(
            f"backend {asked}: {label} could not compile the exported model ({first_line(built)[:200]}); torch ran the model"
        )
        return None
    try:
        probe, ok, seconds = compare(built, x, ref, timed=asked == "auto")
    except Exception as exc:
        notes.append(f"backend {asked}: {label} failed on the probe batch ({first_line(exc)[:200]}); torch ran the model")
        return None
    if not ok:
        notes.append(
            f"backend {asked}: a probe of {probe.rows} images through {label} and torch: max |logit difference| "
            f"{probe.max_abs_logit_diff:.2g} (allowed {probe.tolerance:g} x (1 + max |logit|)), top-1 agreement "
            f"{100 * probe.top1_agreement:.1f} %; the runtime's predictions would differ, so torch ran the model"
        )
        return probe
    return _Candidate(runtime, built, probe, seconds)


def compare(module: nn.Module, x: torch.Tensor, ref: torch.Tensor, timed: bool = False) -> tuple[Probe, bool, float]:
    """The runtime's logits against torch's on the probe batch (and on its first row alone, which a graph whose batch
    was fixed at export fails): the report's probe, whether the runtime may run the audit, and when ``timed`` the
    seconds of a second (warm) call on the batch."""
    with torch.inference_mode():
        out = as_logits(module(x), x.shape[0]).float()
        one = as_logits(module(x[:1]), 1).float()
        t0 = time.perf_counter()
        if timed:
            module(x)
        seconds = time.perf_counter() - t0
    if out.shape != ref.shape:
        raise RuntimeError(f"it returned {tuple(out.shape)} logits where torch returned {tuple(ref.shape)}")
    diff = max(float((out - ref).abs().max()), float((one - ref[:1]).abs().max()))
    agreement = float((out.argmax(1) == ref.argmax(1)).double().mean())
    scale = 1.0 + float(ref.abs().max())
    ok = diff <= PROBE_TOLERANCE * scale and agreement == 1.0 and bool(one.argmax(1) == ref[:1].argmax(1))
    probe = Probe(rows=int(x.shape[0]), max_abs_logit_diff=diff, top1_agreement=agreement, tolerance=PROBE_TOLERANCE)
    return probe, ok, seconds


def _choose_layout(model: nn.Module, x: torch.Tensor, seconds: float, forward: BatchedForward, notes: list[str]) -> None:
    """Auto on the CPU with torch: channels_last when the (warm) probe ran at least CHANNELS_LAST_GAIN x faster in it."""
    if forward.device.type != "cpu" or forward.channels_last or forward.eager is not None or seconds <= 0:
        return
    model.to(memory_format=torch.channels_last)
    xc = x.to(forward.device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(xc)
        t0 = time.perf_counter()
        model(xc)
        faster = seconds / max(time.perf_counter() - t0, 1e-9)
    if faster >= CHANNELS_LAST_GAIN:
        forward.channels_last = True
        notes.append(f"backend auto: channels_last memory format, {faster:.2f}x faster than the default on the probe batch")
    else:
        model.to(memory_format=torch.contiguous_format)
