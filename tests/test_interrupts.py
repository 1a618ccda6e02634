"""Ctrl-C and SIGTERM while a long call into another library runs (shiftaudit.interrupts): real processes, real signals,
and the call made slow on purpose, in pure Python (as sympy in torch.export.load) or in native code that lets go of
the GIL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

from shiftaudit.interrupts import interruptible
from tests.helpers import (
    REPO,
    cli,
    env_eval_args,
    eval_tiny,
    setup_eval_args,
    tiny_cnn,
)

DRIVER = """
import hashlib, os, sys, time
import onnxruntime

def slow(*args, **kwargs):  # onnxruntime's session creation, made slow the way the test asks
    open(os.environ["SA_MARK"], "w").close()
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if os.environ["SA_SLOW"] == "python":
            sum(i * i for i in range(10_000))  # pure Python: it lets go of the GIL every few milliseconds
        else:  # native code that releases the GIL and never looks at signals: tens of seconds in one call
            hashlib.pbkdf2_hmac("sha256", b"x", b"y", 20_000_000)
    raise SystemExit("the slow call was never interrupted")

onnxruntime.InferenceSession = slow
sys.argv = ["shiftaudit", "inspect", sys.argv[1]]
from shiftaudit.cli import main
main()
"""


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("interrupts") / "tiny.onnx"
    pytest.importorskip("onnxruntime")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny_cnn(3).eval(), (torch.zeros(1, 3, 12, 12),), str(path), dynamo=False)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("busy", ["python", "native"])
@pytest.mark.parametrize(
    ("signum", "code", "words"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
    ids=["int", "term"],
)
def test_a_signal_ends_the_process_within_2_s_while_a_long_load_call_runs(graph, tmp_path, busy, signum, code, words):
    mark = tmp_path / "started"
    env = {**os.environ, "SA_MARK": str(mark), "SA_SLOW": busy}
    # a shell's background job ignores SIGINT, and Python keeps it ignored: give the default a terminal's Ctrl-C meets
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(graph)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while not mark.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the slow call never started"
            time.sleep(0.05)
        time.sleep(0.3)  # well inside the call
        sent = time.monotonic()
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert proc.returncode == code, stderr
    assert len(lines) == 1 and lines[0].startswith(words) and "Traceback" not in stderr, stderr
    assert took < 2.0, f"{took:.2f} s from the signal to the end of the process"


def test_interruptible_gives_back_the_result_or_the_exception_of_the_call():
    assert interruptible(lambda a, b=0: a + b, 2, b=3) == 5
    for exc in (ValueError("bad"), SystemExit(0), KeyboardInterrupt()):

        def fail(exc=exc):
            raise exc

        with pytest.raises(type(exc)):
            interruptible(fail)
    seen: list[str] = []
    interruptible(lambda: seen.append(threading.current_thread().name))
    assert seen[0].startswith("shiftaudit:")  # run in a worker, so the main thread can take signals


def test_outside_the_main_thread_it_is_a_plain_call():
    seen: list[str] = []
    worker = threading.Thread(target=lambda: seen.append(interruptible(lambda: threading.current_thread().name)))
    worker.start()
    worker.join()
    assert seen == [worker.name]


@pytest.mark.slow  # a real process with a slowed model (~8 s); test_resume.py resumes in-process interruptions
@pytest.mark.timeout(120)
def test_sigterm_saves_progress_and_the_resumed_run_equals_an_uninterrupted_one(tiny_env, tmp_path):
    """SIGTERM (timeout, schedulers) to a real process mid-audit: exit 143, progress saved; resuming gives the same
    bytes as a run that was never interrupted."""
    state, mark, resumed, reference = (
        tmp_path / "run.state",
        tmp_path / "forwards",
        tmp_path / "resumed.json",
        tmp_path / "ref.json",
    )
    args = [str(a) for a in env_eval_args(tiny_env, "--batch-size", "25", "--no-polyphase", "--quiet", arch="slow")]
    child_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tiny_env["pkgs"]), os.getcwd()]),
        "SA_SLOW": "0.4",
        "SA_MARK": str(mark),
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
        "COLUMNS": "200",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "shiftaudit", *args, "--resume", str(state), "--json", str(resumed)],
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (mark.exists() and mark.read_text().count("forward") >= 3) and proc.poll() is None:
            assert time.monotonic() < deadline, "the audit never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 143, (proc.returncode, out, err)
    assert len(lines) == 1 and lines[0].startswith("terminated (SIGTERM): stopped cleanly after "), err
    assert f"progress saved in {state}" in lines[0] and state.is_file() and not resumed.exists()
    res = cli(*args, "--resume", state, "--json", resumed)  # the same command again: continues, then cleans up
    assert res.exit_code == 0, res.output
    assert not state.exists()
    assert cli(*args, "--json", reference).exit_code == 0
    assert resumed.read_bytes() == reference.read_bytes()


def test_sigterm_handler_is_restored_after_a_command(tiny_env, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    assert cli(*env_eval_args(tiny_env, "--quiet", "--limit", "1")).exit_code == 0
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.slow  # a real process (~6 s); the in-process Ctrl-C tests of this file hold what is written
def test_ctrl_c_sent_to_a_real_process_mid_audit_leaves_no_output(tiny_setup, tmp_path):
    """SIGINT to the real CLI while its (slow) model runs: exit 130, one line, no report, no JUnit, no temp file."""
    root = tiny_setup[0]
    marker = tmp_path / "started"
    args = [
        str(a)
        for a in setup_eval_args(
            tiny_setup,
            "--json",
            tmp_path / "r.json",
            "--out",
            tmp_path / "report",
            "--junit",
            tmp_path / "j.xml",
            "--min-consistency",
            "0",
            "--batch-size",
            "1",
            factory="slow_with_marker",
        )
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "pkgs"), str(REPO)]), "SA_TEST_MARKER": str(marker)}
    # a shell's background job (CI started with `&`, nohup) ignores SIGINT, and Python keeps an ignored SIGINT
    # ignored: give the CLI the default disposition a terminal's Ctrl-C meets
    proc = subprocess.Popen(
        [sys.executable, "-m", "shiftaudit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 40
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the audit never started"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().startswith("interrupted: stopped cleanly") and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["started"]


def test_ctrl_c_exits_130_says_how_far_and_writes_nothing(tiny_models, tmp_path):
    _, ckpt, data = tiny_models
    report, out = tmp_path / "r.json", tmp_path / "report"
    # 25 shifts per image and a device batch of 25: one image per forward pass, Ctrl-C during the second
    res = eval_tiny(ckpt, data, "interrupt_on_second_call", "--batch-size", "25", "--json", report, "--out", out)
    assert res.exit_code == 130, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: stopped cleanly"), res.stderr
    assert "after 1 of 6 images" in lines[0]
    assert "Traceback" not in res.output
    assert not report.exists() and not out.exists()
    assert not list(tmp_path.glob(".r.json.*"))


def test_ctrl_c_outside_an_audit_still_exits_130(tiny_models, tmp_path, monkeypatch):
    """Interrupted while loading: no progress to report, the same clean exit."""
    _, ckpt, data = tiny_models

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("shiftaudit.loading.load_model", interrupted)
    res = eval_tiny(ckpt, data, "tiny")
    assert res.exit_code == 130
    assert res.stderr.strip() == "interrupted: stopped cleanly; no output file was left half-written."


def test_interrupted_audit_says_how_far_it_got_and_where_it_saved():
    from shiftaudit.cli.common import interrupted_message
    from shiftaudit.errors import AuditInterrupted

    assert interrupted_message(AuditInterrupted(40, 1000)) == (
        "interrupted: stopped cleanly after 40 of 1000 images; no output file was left half-written."
    )
    assert interrupted_message(AuditInterrupted(40, 1000, "run.state", terminated=True)) == (
        "terminated (SIGTERM): stopped cleanly after 40 of 1000 images; progress saved in run.state: run the same "
        "command again to continue."
    )
