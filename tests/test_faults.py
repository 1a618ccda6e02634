"""Faults during a run: Ctrl-C, a failing write, the GPU running out of memory.

A long audit on a shared GPU gets interrupted, killed or starved; none of that may cost the user a good file or
leave a half-written one, and each must end with one line saying what happened.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shiftaudit.errors import ModelError, OutputError, ShiftAuditError
from shiftaudit.files import atomic_path, write_bytes_atomic, write_json_atomic
from tests.helpers import (
    cli,
    tiny_models_on_path,
)

MODULE = "sa_faults_models"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    """The test models on sys.path, a tiny 3-class state dict and a 16x16 ImageFolder of 6 images."""
    with tiny_models_on_path(tmp_path_factory.mktemp("faults"), MODULE) as setup:
        yield setup


def _eval(ckpt: Path, data: Path, factory: str, *extra: object):
    return cli("eval", ckpt, "--arch", f"{MODULE}:{factory}", "--data", data, "--size", "16", "--max-shift", "2",
               "--device", "cpu", "--workers", "0", *extra)


# -- Ctrl-C -----------------------------------------------------------------------------------------------------------
def test_ctrl_c_exits_130_says_how_far_and_writes_nothing(setup, tmp_path):
    _, ckpt, data = setup
    report, out = tmp_path / "r.json", tmp_path / "report"
    # 25 shifts per image and a device batch of 25: one image per forward pass, Ctrl-C during the second
    res = _eval(ckpt, data, "interrupt_on_second_call", "--batch-size", "25", "--json", report, "--out", out)
    assert res.exit_code == 130, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: stopped cleanly"), res.stderr
    assert "after 1 of 6 images" in lines[0]
    assert "Traceback" not in res.output
    assert not report.exists() and not out.exists()
    assert not list(tmp_path.glob(".r.json.*"))


def test_ctrl_c_outside_an_audit_still_exits_130(setup, tmp_path, monkeypatch):
    """Interrupted while loading: no progress to report, the same clean exit."""
    _, ckpt, data = setup

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("shiftaudit.loading.load_model", interrupted)
    res = _eval(ckpt, data, "tiny")
    assert res.exit_code == 130
    assert res.stderr.strip() == "interrupted: stopped cleanly; no output file was left half-written."


def test_interrupted_audit_says_how_far_it_got_and_where_it_saved():
    from shiftaudit.cli.common import interrupted_message
    from shiftaudit.errors import AuditInterrupted

    assert interrupted_message(AuditInterrupted(40, 1000)) == (
        "interrupted: stopped cleanly after 40 of 1000 images; no output file was left half-written.")
    assert interrupted_message(AuditInterrupted(40, 1000, "run.state", terminated=True)) == (
        "terminated (SIGTERM): stopped cleanly after 40 of 1000 images; progress saved in run.state: run the same "
        "command again to continue.")


# -- atomic writes ----------------------------------------------------------------------------------------------------
def _leftovers(folder: Path, name: str) -> list[Path]:
    return list(folder.glob(f".{name}.*"))


def test_failing_serialiser_leaves_the_previous_file_intact(tmp_path):
    dest = tmp_path / "report.json"
    write_json_atomic(dest, {"run": 1})
    before = dest.read_bytes()
    with pytest.raises(ValueError):  # NaN is not JSON: the serialiser refuses before anything is replaced
        write_json_atomic(dest, {"run": 2, "value": float("nan")})
    with pytest.raises(TypeError):
        write_json_atomic(dest, {"run": 3, "value": object()})
    assert dest.read_bytes() == before and json.loads(before) == {"run": 1}
    assert not _leftovers(tmp_path, dest.name)


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError, OSError])
def test_failure_half_way_through_a_write_keeps_the_old_file(tmp_path, error):
    dest = tmp_path / "model.safetensors"
    write_bytes_atomic(dest, b"old and complete")
    raised: type[BaseException] = OutputError if error is OSError else error
    with pytest.raises(raised), atomic_path(dest) as tmp, tmp.open("wb") as f:
        f.write(b"new but only ha")
        f.flush()
        raise error(28, "No space left on device") if error is OSError else error("stop")
    assert dest.read_bytes() == b"old and complete"
    assert not _leftovers(tmp_path, dest.name)


def test_disk_full_is_one_sentence_naming_the_file(tmp_path, monkeypatch):
    dest = tmp_path / "r.json"

    def full(self: Path, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OutputError) as exc:
        write_json_atomic(dest, {"a": 1})
    text = str(exc.value)
    assert "\n" not in text and str(dest) in text and "no space left on device" in text
    assert not dest.exists() and not _leftovers(tmp_path, dest.name)


def test_first_write_that_fails_leaves_no_file_at_all(tmp_path):
    dest = tmp_path / "new.json"
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("{")
        raise RuntimeError("serialiser crashed")
    assert not dest.exists() and not _leftovers(tmp_path, dest.name)


@pytest.mark.parametrize("where", ["/proc/x.json", "FILE/x.json", "FILE/deeper/x.json"])
def test_unwritable_destinations_are_output_errors(tmp_path, where):
    (tmp_path / "FILE").write_text("a regular file where a folder should be")
    dest = Path(where.replace("FILE", str(tmp_path / "FILE")))
    with pytest.raises(OutputError) as exc:
        write_json_atomic(dest, {"a": 1})
    assert isinstance(exc.value, ShiftAuditError) and "\n" not in str(exc.value)


# -- CUDA out of memory -------------------------------------------------------------------------------------------
def test_forward_halves_the_batch_on_out_of_memory_and_gets_the_same_answer(setup):
    """``_Forward`` catches torch.cuda.OutOfMemoryError on any device, so a model raising it tests the halving on CPU."""
    from shiftaudit.engine.forward import BatchedForward as _Forward

    mod, _, _ = setup
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


def test_out_of_memory_halving_is_noted_in_the_report(setup, tmp_path):
    _, ckpt, data = setup
    report = tmp_path / "r.json"
    res = _eval(ckpt, data, "oom_above_eight", "--batch-size", "50", "--json", report, "--quiet")
    assert res.exit_code == 0, res.output
    notes = json.loads(report.read_text())["notes"]
    assert any("CUDA out of memory: device batch halved to" in n for n in notes), notes
    assert json.loads(report.read_text())["data"]["num_images"] == 6


def test_out_of_memory_outside_the_forward_is_exit_2_not_a_bug(setup, monkeypatch):
    _, ckpt, data = setup

    def oom(*args: object, **kwargs: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr("shiftaudit.cli.eval_cmd.run_plan", oom)
    res = _eval(ckpt, data, "tiny")
    assert res.exit_code == 2 and "internal error" not in res.stderr
    assert res.stderr.startswith("error: ") and "--batch-size" in res.stderr
