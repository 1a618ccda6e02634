"""The batched forward pass (shiftaudit/engine/forward.py) when the device runs out of memory: the batch is halved,
the answer stays the same, and the report says so."""

from __future__ import annotations

import json

import pytest
import torch

from shiftaudit.errors import ModelError
from tests.helpers import (
    eval_tiny,
)


def test_forward_halves_the_batch_on_out_of_memory_and_gets_the_same_answer(tiny_models):
    """``_Forward`` catches torch.cuda.OutOfMemoryError on any device, so a model raising it tests the halving on CPU."""
    from shiftaudit.engine.forward import BatchedForward as _Forward

    mod, _, _ = tiny_models
    torch.manual_seed(0)
    oom = mod.oom_above_eight(3).eval()
    plain = mod.tiny(3).eval()
    plain.load_state_dict(oom.state_dict())
    x = torch.randn(40, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(2))
    fwd = _Forward(oom, torch.device("cpu"), "fp32", batch=64, channels_last=False)
    with torch.inference_mode():
        pred, p_label, p_top, finite = fwd.run(lambda sl: x[sl], 40, labels)
        logits = plain(x)
    assert 4 <= fwd.batch <= 8  # halved from the chunk that failed (40 rows) until it fits: 20, 10, 5
    halvings = [n for n in fwd.notes if n.startswith("CUDA out of memory: device batch halved to")]
    assert len(halvings) >= 2 and halvings[-1].endswith(f"to {fwd.batch}")
    probs = torch.softmax(logits, 1)
    assert torch.equal(pred, probs.argmax(1)) and bool(finite.all())
    assert torch.allclose(p_label, probs.gather(1, labels[:, None])[:, 0])
    assert torch.allclose(p_top, probs.max(1).values)
    assert fwd.rows == 40


def test_forward_out_of_memory_at_batch_one_is_a_clean_error():
    from shiftaudit.engine.forward import BatchedForward as _Forward

    class AlwaysOom(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    fwd = _Forward(AlwaysOom(), torch.device("cpu"), "fp32", batch=4, channels_last=False)
    with pytest.raises(ModelError, match="out of memory even with a batch of one"):
        fwd.run(lambda sl: torch.zeros(sl.stop - sl.start, 3, 8, 8), 4, None)


def test_out_of_memory_halving_is_noted_in_the_report(tiny_models, tmp_path):
    _, ckpt, data = tiny_models
    report = tmp_path / "r.json"
    res = eval_tiny(ckpt, data, "oom_above_eight", "--batch-size", "50", "--json", report, "--quiet")
    assert res.exit_code == 0, res.output
    notes = json.loads(report.read_text())["notes"]
    assert any("CUDA out of memory: device batch halved to" in n for n in notes), notes
    assert json.loads(report.read_text())["data"]["num_images"] == 6


def test_out_of_memory_outside_the_forward_is_exit_2_not_a_bug(tiny_models, monkeypatch):
    _, ckpt, data = tiny_models

    def oom(*args: object, **kwargs: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr("shiftaudit.cli.eval_cmd.run_plan", oom)
    res = eval_tiny(ckpt, data, "tiny")
    assert res.exit_code == 2 and "internal error" not in res.stderr
    assert res.stderr.startswith("error: ") and "--batch-size" in res.stderr
