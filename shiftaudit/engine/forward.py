"""The batched forward runner: the model on flattened (image, shift) batches, reduced on the device.

:class:`BatchedForward` runs the model under AMP (bf16/fp16) and channels_last, halves the device batch when CUDA
runs out of memory (telling the observers to drop the chunk), falls back to eager when a ``torch.compile``'d model
fails, turns any failure of the user's model into a :class:`~shiftaudit.errors.ModelError`, and reduces each output
row to (prediction, P(label), top-1 probability, finite). :func:`as_logits` finds the class scores in a model's
output; :func:`model_dtype` is the dtype the inputs are cast to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from shiftaudit.engine.observers import Observer
from shiftaudit.errors import DataError, ModelError, failure_text, first_line


def model_dtype(model: nn.Module) -> torch.dtype:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def as_logits(output: Any, batch: int) -> torch.Tensor:
    """The class scores in a model's output: a tensor, the first tensor of a tuple, or ``logits`` of a dict."""
    if isinstance(output, torch.Tensor):
        logits = output
    elif isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        logits = output["logits"]
    elif hasattr(output, "logits") and isinstance(output.logits, torch.Tensor):
        logits = output.logits
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        logits = output[0]
    else:
        raise ModelError(f"The model returned {type(output).__name__}, not a tensor of class scores.")
    if logits.ndim == 4 and logits.shape[2] == 1 and logits.shape[3] == 1:
        logits = logits.flatten(1)
    if logits.ndim != 2 or logits.shape[0] != batch:
        raise ModelError(
            f"The model's output has shape {tuple(logits.shape)}; expected (batch, classes) = ({batch}, C) for a classifier."
        )
    return logits


@contextlib.contextmanager
def model_exits_fail(what: str) -> Iterator[None]:
    """Turn an exit raised by the user's model code (SystemExit, GeneratorExit, any BaseException but Ctrl-C) into a
    :class:`ModelError` saying ``what`` failed: such code must never end the run silently, which a CI gate would read
    as a pass. Ordinary exceptions pass through to the caller's own handling."""
    try:
        yield
    except (Exception, KeyboardInterrupt):
        raise
    except BaseException as exc:
        raise ModelError(f"{what}: {failure_text(exc)}.") from None


class BatchedForward:
    """Runs the model on flattened (image, shift) batches with AMP, channels_last and CUDA out-of-memory back-off."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        precision: str,
        batch: int,
        channels_last: bool,
        eager: nn.Module | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.batch = batch
        self.channels_last = channels_last
        self.notes: list[str] = []
        self.num_classes = 0
        self.rows = 0  # forward rows (image x shift pairs) evaluated so far
        self.eager = eager  # set when ``model`` is torch.compile'd: what to fall back to if compiling fails
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    def _call(self, x: torch.Tensor) -> Any:
        if self.eager is None:
            return self.model(x)
        try:
            return self.model(x)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # a compile failure must not cost the user the audit
            first = first_line(exc)
            self.notes.append(f"torch.compile failed ({first[:120]}); ran the model eagerly")
            self.model, self.eager = self.eager, None
            return self.model(x)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def run(
        self,
        make_inputs: Callable[[slice], torch.Tensor],
        total: int,
        labels: torch.Tensor | None,
        observers: tuple[Observer, ...] = (),
        fan_out: int = 1,
        cost: int | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Returns per-row (pred, p_label, p_top, finite) for ``total`` inputs built by ``make_inputs(slice)``.

        Each input gives ``fan_out`` consecutive output rows (1 for a plain model; every shift of the set for the
        polyphase model), so ``labels`` and the results have ``total * fan_out`` rows. ``cost``: how many batch
        rows one input weighs in memory (``fan_out`` by default); the device batch is shared out by it.
        """
        cost = max(1, fan_out if cost is None else cost)
        rows = total * fan_out
        preds = torch.empty(rows, dtype=torch.long, device=self.device)
        p_label = torch.empty(rows, dtype=torch.float32, device=self.device)
        p_top = torch.empty(rows, dtype=torch.float32, device=self.device)
        finite = torch.empty(rows, dtype=torch.bool, device=self.device)
        start = 0
        while start < total:
            stop = min(total, start + max(1, self.batch // cost))
            try:
                logits = self._logits(make_inputs, slice(start, stop), (stop - start) * fan_out, observers)
            except torch.cuda.OutOfMemoryError:
                for o in observers:
                    o.abort_chunk()
                if self.batch <= 1 or (cost > 1 and stop - start <= 1):
                    raise ModelError("CUDA ran out of memory even with a batch of one image; use --device cpu.") from None
                self.batch = max(1, min(self.batch, (stop - start) * cost) // 2)
                self.notes.append(f"CUDA out of memory: device batch halved to {self.batch}")
                torch.cuda.empty_cache()
                continue
            self.num_classes = int(logits.shape[1])
            self.rows += (stop - start) * fan_out
            out_sl = slice(start * fan_out, stop * fan_out)
            ok = torch.isfinite(logits).all(dim=1)
            probs = torch.softmax(logits, dim=1)
            top, pred = probs.max(dim=1)
            preds[out_sl] = pred
            p_top[out_sl] = top
            finite[out_sl] = ok
            if labels is not None:
                p_label[out_sl] = _label_probability(probs, labels[out_sl])
            start = stop
        return preds, p_label, p_top, finite

    def _logits(
        self, make_inputs: Callable[[slice], torch.Tensor], sl: slice, n_rows: int, observers: tuple[Observer, ...]
    ) -> torch.Tensor:
        """One chunk of inputs through the model, observers watching; a failing model is a ModelError (CUDA out of
        memory passes through, for the caller to halve the batch)."""
        x = None
        try:
            for o in observers:
                o.begin_chunk(sl)
            x = make_inputs(sl)
            for o in observers:
                o.on_inputs(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                try:
                    out = self._call(x)
                except (ModelError, KeyboardInterrupt, torch.cuda.OutOfMemoryError):
                    raise
                except BaseException as exc:  # the user's model failed: a TypeError, even a SystemExit(0), is its fault
                    raise ModelError(f"The model failed on a batch of shape {tuple(x.shape)}: {failure_text(exc)}") from None
            logits = as_logits(out, n_rows).float()
            for o in observers:
                o.on_logits(logits)
                o.end_chunk()
            return logits
        except (torch.cuda.OutOfMemoryError, ModelError, KeyboardInterrupt):
            raise
        except RuntimeError as exc:
            shape = tuple(x.shape) if x is not None else "?"
            raise ModelError(f"The model failed on a batch of shape {shape}: {first_line(exc)}") from None


def _label_probability(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """P(label) per row; a label beyond the model's classes is the data's fault, said in one sentence."""
    if int(labels.max()) >= probs.shape[1]:
        raise DataError(
            f"Labels go up to {int(labels.max())} but the model has {probs.shape[1]} classes; "
            "pass --class-map to map folder names to the model's class indices."
        )
    return probs.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)
