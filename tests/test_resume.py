"""An interrupted audit, resumed from its state file, gives the same JSON as an uninterrupted one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from shiftaudit.engine.runner import audit
from shiftaudit.errors import AuditInterrupted, UsageError

from .helpers import StopAfter, tiny_cnn


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = tiny_cnn(spatial_head=True, size=8).eval()
    images = torch.randn(10, 3, 8, 8)
    labels = torch.randint(0, 5, (10,))
    return model, images, labels


def run(model, images, labels, **kw):
    return audit(model, (images, labels), max_shift=2, device="cpu", batch_size=25, polyphase=False, **kw)


def test_interrupted_then_resumed_equals_uninterrupted(setup, tmp_path):
    model, images, labels = setup
    want = run(StopAfter(model, None), images, labels).to_json()
    state = tmp_path / "state.npz"
    with pytest.raises(AuditInterrupted) as info:
        run(StopAfter(model, 4), images, labels, resume=state)  # 25 rows a call = one image: stops at image 4
    assert state.exists() and info.value.progress == (3, 10) and info.value.resume_path == str(state)
    assert isinstance(info.value, KeyboardInterrupt) and not info.value.terminated
    got = run(StopAfter(model, None), images, labels, resume=state).to_json()
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


def test_state_of_another_run_is_refused(setup, tmp_path):
    model, images, labels = setup
    state = tmp_path / "state.npz"
    with pytest.raises(KeyboardInterrupt):
        run(StopAfter(model, 3), images, labels, resume=state)
    with pytest.raises(UsageError, match=r"Cannot resume: --seed changed since the run saved in .* \(was 0, now 1\)"):
        run(StopAfter(model, None), images, labels, resume=state, seed=1)
    state.write_bytes(b"not a state")
    with pytest.raises(UsageError, match="not a shiftaudit audit state"):
        run(StopAfter(model, None), images, labels, resume=state)


def test_cli_resume_message_and_cleanup(setup, tmp_path, monkeypatch):
    from shiftaudit.cli import app

    model, images, labels = setup
    data = tmp_path / "d.npz"
    np.savez(data, images=images.numpy(), labels=labels.numpy())
    (tmp_path / "stopmod.py").write_text(
        "import torch\nfrom tests.helpers import tiny_cnn\nfrom tests.helpers import StopAfter\n"
        "def build(num_classes=5, stop=None):\n    torch.manual_seed(0)\n"
        "    return StopAfter(tiny_cnn(num_classes, spatial_head=True, size=8), stop)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ckpt = tmp_path / "m.pt"
    torch.save(StopAfter(model, None).state_dict(), ckpt)
    state, report = tmp_path / "run.state", tmp_path / "r.json"
    args = ["eval", str(ckpt), "--data", str(data), "--raw", "--max-shift", "2", "--device", "cpu", "--workers", "0",
            "--batch-size", "25", "--no-polyphase", "--json", str(report), "--resume", str(state), "--quiet"]
    import stopmod

    monkeypatch.setattr(stopmod, "build", lambda num_classes=5: StopAfter(tiny_cnn(num_classes, spatial_head=True, size=8), 5))
    res = CliRunner().invoke(app, [*args, "--arch", "stopmod:build"])
    assert res.exit_code == 130 and "progress saved in" in res.stderr and not report.exists() and state.exists()
    monkeypatch.setattr(stopmod, "build", lambda num_classes=5: StopAfter(tiny_cnn(num_classes, spatial_head=True, size=8), None))
    res = CliRunner().invoke(app, [*args, "--arch", "stopmod:build"])
    assert res.exit_code == 0, res.output
    assert report.exists() and not state.exists()
