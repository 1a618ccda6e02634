"""The CUDA paths, checked on a GPU (``pytest -m gpu``, run by benchmarks/gpu.sh; every test skips without CUDA).

AMP (bf16, fp16) against fp32 within a stated drift, channels_last, torch.compile, out-of-memory halving forced by a
real out-of-memory error, packed rows, and the polyphase engine on CUDA against the CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import shiftaudit
from shiftaudit.engine.forward import BatchedForward
from tests.helpers import tiny_cnn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = torch.device("cuda")
AMP_MAX_CHANGED = 0.01  # stated drift: at most 1 % of predictions may change under bf16/fp16 autocast
AMP_MAX_P_TOP = 0.05  # and the top-1 probability by at most 0.05


def _demo() -> tuple[nn.Module, torch.Tensor]:
    """The trained demo model and its rows: 16 test images at 16 circular shifts."""
    from shiftaudit.cli.demo_cmd import demo_dataset
    from shiftaudit.loading import load_model
    from shiftaudit.models import demo_checkpoint_path

    loaded = load_model(demo_checkpoint_path())
    data = demo_dataset(16, loaded.preprocessing)
    x = torch.stack([data[i][0] for i in range(len(data))])
    rows = torch.cat([torch.roll(x, (k, 2 * k), (-2, -1)) for k in range(16)])
    return loaded.model.eval(), rows


def _forward(
    model: nn.Module, rows: torch.Tensor, precision: str = "fp32", channels_last: bool = False, batch: int = 128
) -> tuple[torch.Tensor, ...]:
    model = model.to(CUDA)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    fwd = BatchedForward(model, CUDA, precision, batch, channels_last)
    x = rows.to(CUDA)
    with torch.inference_mode():
        out = fwd.run(lambda sl: x[sl], x.shape[0], None)
    return tuple(t.cpu() for t in out)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_amp_predictions_match_fp32_within_the_stated_drift(precision):
    model, rows = _demo()
    ref_pred, _, ref_top, ref_ok = _forward(model, rows)
    pred, _, top, ok = _forward(model, rows, precision)
    assert ref_ok.all() and ok.all()
    assert (pred != ref_pred).float().mean().item() <= AMP_MAX_CHANGED
    assert (top - ref_top).abs().max().item() <= AMP_MAX_P_TOP


def test_channels_last_matches_contiguous():
    model, rows = _demo()
    ref_pred, _, ref_top, _ = _forward(model, rows)
    pred, _, top, _ = _forward(model, rows, channels_last=True)
    assert (pred != ref_pred).float().mean().item() <= 1e-3  # a change only where two logits tie to rounding
    assert (top - ref_top).abs().max().item() <= 1e-3


def test_audit_on_cuda_with_amp_and_channels_last_runs_and_agrees():
    model, rows = _demo()
    x, y = rows[:16], torch.zeros(16, dtype=torch.long)
    ref = shiftaudit.audit(model, (x, y), max_shift=2, device="cuda", polyphase=False)
    for kw in ({"precision": "bf16"}, {"channels_last": True}):
        got = shiftaudit.audit(model, (x, y), max_shift=2, device="cuda", polyphase=False, **kw)
        assert got.settings["engine"] == "dense" and got.environment["device"] == "cuda"
        a, b = ref.metrics["consistency"]["exact"]["value"], got.metrics["consistency"]["exact"]["value"]
        assert abs(a - b) <= 2 * AMP_MAX_CHANGED


class WideConv(nn.Module):
    """One wide stride-1 conv and a global pool: its activation is 256 x H x W floats a row."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 256, 3, padding=1)
        self.fc = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).relu().mean((2, 3)))


def test_out_of_memory_halves_the_batch_and_gives_the_same_outputs():
    """A device batch whose activations exceed the free GPU memory: CUDA raises out-of-memory, the batch halves
    until it fits (noted), and every row comes out as at a small batch."""
    torch.manual_seed(0)
    model = WideConv().eval().to(CUDA)
    free, _ = torch.cuda.mem_get_info(CUDA)
    side = 128
    per_row = 256 * side * side * 4
    total = int(math.ceil(1.5 * free / per_row))  # one batch of every row cannot fit
    image = torch.randn(1, 3, side, side, device=CUDA)

    def make_inputs(sl: slice) -> torch.Tensor:  # row i is the image scaled by a row-dependent factor
        scale = torch.arange(sl.start, sl.stop, device=CUDA, dtype=torch.float32)[:, None, None, None] % 7 + 1
        return image * scale

    fwd = BatchedForward(model, CUDA, "fp32", total, False)
    with torch.inference_mode():
        pred, _, top, ok = fwd.run(make_inputs, total, None)
        small = BatchedForward(model, CUDA, "fp32", 7, False).run(lambda sl: make_inputs(sl), 7, None)
    assert fwd.batch < total and any("device batch halved" in n for n in fwd.notes)
    assert ok.all()
    assert torch.equal(pred[:7].cpu(), small[0].cpu())
    assert torch.allclose(top[:7].cpu(), small[2].cpu(), atol=1e-4)


def test_packed_rows_on_cuda_equal_unpacked_in_double():
    torch.manual_seed(1)
    model = tiny_cnn(5, spatial_head=True, size=12).double().eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 12, 12, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=gen)
    kw = dict(max_shift=4, batch_size=7, device="cuda", polyphase=False)
    packed = shiftaudit.audit(model, (x, y), **kw)  # packing is the CUDA default
    plain = shiftaudit.audit(model, (x, y), pack_rows=False, **kw)
    _assert_close(packed.metrics, plain.metrics)


def test_polyphase_on_cuda_equals_cpu():
    torch.manual_seed(2)
    model = tiny_cnn(5, padding_mode="circular").double().eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 12, 12, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (4,), generator=gen)
    runs = {dev: shiftaudit.audit(model, (x, y), device=dev, polyphase=True) for dev in ("cpu", "cuda")}
    assert runs["cuda"].settings["engine"] == runs["cpu"].settings["engine"] == "polyphase"
    _assert_close(runs["cuda"].metrics, runs["cpu"].metrics)
    assert runs["cuda"].per_image.keys() == runs["cpu"].per_image.keys()


def test_compile_on_cuda_matches_eager():
    model, rows = _demo()
    x, y = rows[:8], torch.zeros(8, dtype=torch.long)
    eager = shiftaudit.audit(model, (x, y), max_shift=1, device="cuda", polyphase=False)
    compiled = shiftaudit.audit(model, (x, y), max_shift=1, device="cuda", polyphase=False, compile=True)
    assert not any("torch.compile failed" in n for n in compiled.notes), compiled.notes
    assert abs(compiled.metrics["consistency"]["exact"]["value"] - eager.metrics["consistency"]["exact"]["value"]) <= 1e-3


def _assert_close(a: object, b: object, rel: float = 1e-6) -> None:
    """Equal structure and equal values; floats to ``rel``: double logits on CUDA and CPU can differ in their last bits,
    which can move the float32 probabilities the metrics read by one unit in the last place."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_close(a[k], b[k], rel)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _assert_close(u, v, rel)
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=rel, abs=1e-12) or (math.isnan(a) and math.isnan(b))
    else:
        assert a == b
