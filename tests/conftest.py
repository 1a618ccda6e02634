"""Settings for every test process: headless matplotlib, wide tables, one torch thread (fixtures live in tests/helpers.py and
the test files)."""

from __future__ import annotations

import os

import torch

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["COLUMNS"] = "200"  # wide rich tables, so CLI tests can read whole layer names
# `make mutate` forks a test process per mutant and asks for one thread (an OpenMP pool does not survive a fork)
# One thread per test process: pytest -n 2 already fills both cores, and two torch threads per worker on a busy
# 2-core machine spin instead of computing (measured: 10 s of CPU for an audit that takes 0.5 s with one thread).
torch.set_num_threads(int(os.environ.get("SHIFTAUDIT_TEST_THREADS", 1)))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # the same for the CLI runs tests start as subprocesses
