"""How many CPU threads the forward passes use, and running with that many.

``AuditConfig(threads=N)`` (``--threads N``) is taken as asked. Without it, :func:`default_threads` keeps torch's own
count (its physical cores, or ``OMP_NUM_THREADS``) except where several threads per process would fight over the
cores: one thread per process under pytest-xdist or torchrun (the other processes hold the other cores), and on a
machine whose load already fills the cores, as many as the load leaves free (at least one). OpenMP threads wait for
one another at every layer, so a thread that shares its core with another process stalls them all: on the loaded
2-core machine of docs/performance.md two torch threads ran resnet18 at 4-5 images/s against 80 with one. The default
is decided once per process (a later audit must not see the load of the one before it).

:func:`using_threads` sets torch's thread count for a block and restores it after, so that a library call leaves the
caller's setting as it found it; the runtimes of :mod:`shiftaudit.engine.backends` are given the same count.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterator

import torch


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _shares_machine() -> str | None:
    """Why each process of a group should take one thread (None when this process is alone)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return "pytest-xdist"
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    return "torchrun" if world > 1 else None


def _load() -> float:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):  # no load average on this OS: assume an idle machine
        return 0.0


@functools.lru_cache(maxsize=1)
def default_threads() -> int:
    """Torch's own thread count, or fewer where the cores are taken (see the module doc); decided once per process."""
    own = max(1, torch.get_num_threads())
    if _shares_machine() is not None:
        return 1
    free = available_cpus() - _load()  # cores that the last minute's other work left idle
    return max(1, min(own, math.floor(free + 0.5)))


def resolve_threads(asked: int | None) -> int:
    return default_threads() if asked is None else int(asked)


@contextlib.contextmanager
def using_threads(threads: int) -> Iterator[None]:
    """Torch runs with ``threads`` intra-op threads inside the block; the caller's count is restored after it."""
    before = torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
