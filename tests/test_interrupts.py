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
from tests.helpers import tiny_cnn

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
@pytest.mark.parametrize(("signum", "code", "words"), [(signal.SIGINT, 130, "interrupted"),
                                                        (signal.SIGTERM, 143, "terminated (SIGTERM)")], ids=["int", "term"])
def test_a_signal_ends_the_process_within_2_s_while_a_long_load_call_runs(graph, tmp_path, busy, signum, code, words):
    mark = tmp_path / "started"
    env = {**os.environ, "SA_MARK": str(mark), "SA_SLOW": busy}
    # a shell's background job ignores SIGINT, and Python keeps it ignored: give the default a terminal's Ctrl-C meets
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(graph)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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
