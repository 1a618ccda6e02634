"""Shared fixtures: tiny models and data made in the test, never downloaded."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["COLUMNS"] = "200"  # wide rich tables, so CLI tests can read whole layer names
# `make mutate` forks a test process per mutant and asks for one thread (an OpenMP pool does not survive a fork)
torch.set_num_threads(int(os.environ.get("SHIFTAUDIT_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))


@pytest.fixture
def seeded() -> None:
    torch.manual_seed(0)
