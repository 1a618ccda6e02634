"""Long calls into other libraries that Ctrl-C and SIGTERM can still stop.

Python runs signal handlers in the main thread, between bytecodes: while the main thread is inside one long call
(sympy simplifying a shape expression in ``torch.export.load``, a native loader), Ctrl-C and SIGTERM wait for it to
return. :func:`interruptible` runs the call in a worker thread while the main thread waits in short waits, so the
handlers run within a fraction of a second and the command ends with its usual line and exit code (130, 143); the
abandoned worker is a daemon thread, ended with the process.

This works when the call lets go of the GIL: pure Python (sympy) does every few milliseconds, and most native code
that blocks does. onnxruntime's session creation does not (a Python thread gets no time while it runs), so its
length is bounded instead (:mod:`shiftaudit.loading.onnx_check`: no constant folding, at most 10,000 nodes).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
WAIT_S = 0.05  # how often the main thread wakes; a signal's handler runs at the latest this much after it arrives


def interruptible(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, run so that Ctrl-C and SIGTERM interrupt the main thread while it waits.

    Its result or exception (any BaseException, an exit included) comes back as if called directly. Outside the main
    thread, where no signal handler runs, it is a plain call.
    """
    if threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the caller's thread as it is
            outcome["error"] = exc

    worker = threading.Thread(target=work, name=f"shiftaudit:{getattr(fn, '__name__', 'call')}", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(WAIT_S)  # a KeyboardInterrupt (or Terminated) from a handler is raised here
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
