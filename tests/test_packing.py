"""Rows packed across image batches (pack_rows) and the reused input buffer: the same per-image predictions as a
naive torch.roll loop, full device batches except the run's last, and no result aliasing a later batch's inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import shiftaudit
from shiftaudit.engine.forward import BatchedForward
from shiftaudit.engine.packing import RowPacker
from shiftaudit.engine.passes import DrawPlan, dense_job
from shiftaudit.shifts.sets import ShiftSet
from tests.helpers import tiny_cnn

SIZE = 12


class Recorder(nn.Module):
    """Wraps a model; records each forward's batch size and input storage address."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.sizes: list[int] = []
        self.pointers: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(int(x.shape[0]))
        self.pointers.append(x.data_ptr())
        return self.model(x)


def _data(n: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=gen, dtype=torch.float64), torch.randint(0, 5, (n,), generator=gen)


def _model() -> nn.Module:
    torch.manual_seed(1)
    return tiny_cnn(5, spatial_head=True, size=SIZE).double().eval()


def _naive(model: nn.Module, x: torch.Tensor, shifts: ShiftSet) -> np.ndarray:
    """(N, S) predictions, one torch.roll and one forward per shift."""
    with torch.inference_mode():
        cols = [model(torch.roll(x, (int(dh), int(dw)), (-2, -1))).argmax(1) for dh, dw in zip(shifts.dh, shifts.dw)]
    return torch.stack(cols, 1).numpy()


def _packed(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, shifts: ShiftSet, batch: int, image_batches: list[int], carry: bool
) -> tuple[list, Recorder]:
    """Every image batch as a job through one RowPacker: the ShiftBatches in order, and the recorded forwards."""
    rec = Recorder(model)
    forward = BatchedForward(rec, torch.device("cpu"), "fp32", batch, channels_last=False)
    packer = RowPacker(forward, carry=carry)
    dh = torch.as_tensor(shifts.dh, dtype=torch.long)
    dw = torch.as_tensor(shifts.dw, dtype=torch.long)
    draws = DrawPlan(seed=0, pairs=2, num_shifts=len(shifts))
    out, start = [], 0
    with torch.inference_mode():
        for b in image_batches:
            ids = np.arange(start, start + b)
            xb, yb = x[start : start + b], y[start : start + b]
            out += packer.add(dense_job(forward, xb, yb, yb, ids, shifts, True, draws, 2, dh, dw))
            start += b
        out += packer.flush()
    return out, rec


@pytest.mark.parametrize("batch", [1, 7, 16])
def test_packed_rows_match_the_naive_loop_and_fill_every_device_batch(batch):
    shifts = ShiftSet.window((SIZE, SIZE), 4, 1)  # 81 shifts: batches of 7 and 16 leave a tail per image
    assert len(shifts) == 81
    model = _model()
    x, y = _data(5)
    results, rec = _packed(model, x, y, shifts, batch, [2, 1, 2], carry=True)
    assert [len(r[0]) for r in results] == [2, 1, 2]  # one ShiftBatch per image batch, in order
    preds = np.concatenate([r[0].preds for r in results])
    assert np.array_equal(preds, _naive(model, x, shifts))
    assert all(r[1] == 0 for r in results)
    rows = 5 * 81
    assert sum(rec.sizes) == rows
    assert rec.sizes[:-1] == [batch] * (len(rec.sizes) - 1)  # full device batches, only the run's last is short
    assert rec.sizes[-1] == (rows % batch or batch)


def test_without_carry_the_chunks_are_those_of_each_image_batch():
    shifts = ShiftSet.window((SIZE, SIZE), 4, 1)
    model = _model()
    x, y = _data(3)
    results, rec = _packed(model, x, y, shifts, 16, [1, 2], carry=False)
    assert rec.sizes == [16] * 5 + [1] + [16] * 10 + [2]  # 81 rows, then 162: each image batch ends in its own tail
    preds = np.concatenate([r[0].preds for r in results])
    assert np.array_equal(preds, _naive(model, x, shifts))


def test_the_input_buffer_is_reused_and_no_result_aliases_a_later_batch():
    """Every forward reads the same storage, yet each batch's outputs are its own rows' (a model whose logits are
    its input pixels would show a later batch's images if results aliased the buffer)."""

    class Pixels(nn.Module):
        def forward(self, x):
            return x[:, 0, 0, :5] * 1.0 + 0.0 * x.sum()

    shifts = ShiftSet.window((SIZE, SIZE), 1, 1)
    x, y = _data(4, seed=3)
    results, rec = _packed(Pixels(), x, y, shifts, 4, [1, 1, 1, 1], carry=True)
    assert len(set(rec.pointers)) == 1 and len(rec.pointers) == 9
    naive = _naive(Pixels(), x, shifts)
    assert np.array_equal(np.concatenate([r[0].preds for r in results]), naive)
    assert np.array_equal(np.concatenate([r[0].p_top for r in results]), _naive_top(Pixels(), x, shifts))


def _naive_top(model: nn.Module, x: torch.Tensor, shifts: ShiftSet) -> np.ndarray:
    with torch.inference_mode():
        cols = [
            torch.softmax(model(torch.roll(x, (int(a), int(b)), (-2, -1))).float(), 1).max(1).values
            for a, b in zip(shifts.dh, shifts.dw)
        ]
    return torch.stack(cols, 1).numpy()


@pytest.mark.parametrize("mode", ["exhaustive", "sampled"])
def test_audit_with_pack_rows_gives_the_same_report(mode):
    """In double precision the packed layout gives the unpacked report, every metric and per-image value."""
    model = _model()
    x, y = _data(6, seed=5)
    kw = dict(max_shift=4, batch_size=7, mode=mode, pairs=3, device="cpu", polyphase=False)
    plain = shiftaudit.audit(model, (x, y), pack_rows=False, **kw)
    packed = shiftaudit.audit(model, (x, y), pack_rows=True, **kw)
    assert packed.metrics == plain.metrics and packed.per_image == plain.per_image
    assert packed.timing["forward_rows"] == plain.timing["forward_rows"]


def test_packed_run_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    """Rows forwarded ahead for an unfinished image batch are neither saved nor counted: the resumed report equals
    an uninterrupted one."""
    import json

    from shiftaudit.errors import AuditInterrupted
    from tests.helpers import StopAfter

    model = _model()
    x, y = _data(6, seed=2)
    kw = dict(max_shift=2, batch_size=7, device="cpu", polyphase=False, pack_rows=True)  # 25 rows an image
    want = shiftaudit.audit(StopAfter(model, None), (x, y), **kw)
    state = tmp_path / "state.npz"
    with pytest.raises(AuditInterrupted) as info:
        # calls 1-7 forward 49 rows and finish image 0; image 1 waits for its last row, inside the run stopped at 9
        shiftaudit.audit(StopAfter(model, 9), (x, y), resume=state, **kw)
    assert info.value.progress == (1, 6)
    got = shiftaudit.audit(StopAfter(model, None), (x, y), resume=state, **kw)
    assert json.dumps(got.to_json(), sort_keys=True) == json.dumps(want.to_json(), sort_keys=True)
    assert got.timing["forward_rows"] == want.timing["forward_rows"] == 6 * 25
