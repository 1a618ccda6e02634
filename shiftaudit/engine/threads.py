"""How many CPU threads the forward passes use, and running with that many.

``AuditConfig(threads=N)`` (``--threads N``) is taken as asked. Without it, :func:`default_threads` keeps torch's own
count (its physical cores, or ``OMP_NUM_THREADS``) except where several threads per process would fight over the
cores: one thread per process under pytest-xdist or torchrun (the other processes hold the other cores), and on a
machine whose other work already fills the cores, as many as that work leaves free (at least one). OpenMP threads
wait for one another at every layer, so a thread that shares its core with another process stalls them all: on the
loaded 2-core machine of docs/performance.md two torch threads ran resnet18 at 4-5 images/s against 80 with one.

The busy cores are measured, not guessed from the load average: on Linux, two reads of ``/proc/stat`` a quarter of a
second apart give the time this process's CPUs spent working (steal included: a hypervisor's other guests hold the
core too). The load average counts tasks, not work, and lags by a minute: on the idle 2-core VM of
docs/performance.md it read 0.9-1.1 with every CPU idle, which halved the threads and made a default audit 0.84x as
fast as before. Elsewhere the load average is the fallback. The default is decided once per process (a later audit
must not see the load of the one before it).

:func:`using_threads` sets torch's thread count for a block and restores it after, so that a library call leaves the
caller's setting as it found it; the runtimes of :mod:`shiftaudit.engine.backends` are given the same count.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Iterator

import torch


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity mask where the OS has one, else every CPU)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def available_cpus() -> int:
    return max(1, len(allowed_cpus()))


def _shares_machine() -> str | None:
    """Why each process of a group should take one thread (None when this process is alone)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return "pytest-xdist"
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    return "torchrun" if world > 1 else None


SAMPLE_SECONDS = 0.25  # long enough to see a busy core, short enough to pay once per process
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (guest time is inside user's)
_IDLE_FIELDS = (3, 4)  # idle iowait


def _read_stat() -> str | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            return f.read(1 << 20)
    except (OSError, ValueError):
        return None


def _cpu_ticks(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) jiffies of ``cpus`` since boot, from /proc/stat; None where there is no such file."""
    text = _read_stat()
    if text is None:
        return None
    busy = total = 0
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        fields = rest.split()[:8]
        if not all(v.isdigit() for v in fields):
            continue
        ticks = [int(v) for v in fields]
        busy += sum(ticks[i] for i in _BUSY_FIELDS if i < len(ticks))
        total += sum(ticks[i] for i in _BUSY_FIELDS + _IDLE_FIELDS if i < len(ticks))
    return (busy, total) if total else None


def _busy_cpus(seconds: float = SAMPLE_SECONDS) -> float | None:
    """How many of this process's CPUs other work kept busy over ``seconds`` (this process sleeps meanwhile)."""
    cpus = allowed_cpus()
    before = _cpu_ticks(cpus)
    if before is None:
        return None
    time.sleep(seconds)
    after = _cpu_ticks(cpus)
    if after is None or after[1] <= before[1]:
        return None
    return len(cpus) * (after[0] - before[0]) / (after[1] - before[1])


def _load() -> float:
    """The CPUs other work holds now: measured on Linux, else the one-minute load average, else none."""
    busy = _busy_cpus()
    if busy is not None:
        return busy
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
    free = available_cpus() - _load()  # cores that other work leaves idle now
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
