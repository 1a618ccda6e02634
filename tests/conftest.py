"""Settings for every test process: headless matplotlib, wide tables, one torch thread, the hypothesis profile
(fixtures live in tests/helpers.py and the test files)."""

from __future__ import annotations

import os

import torch
from hypothesis import settings

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["COLUMNS"] = "200"  # wide rich tables, so CLI tests can read whole layer names
# `make mutate` forks a test process per mutant and asks for one thread (an OpenMP pool does not survive a fork)
# One thread per test process: pytest -n 2 already fills both cores, and two torch threads per worker on a busy
# 2-core machine spin instead of computing (measured: 10 s of CPU for an audit that takes 0.5 s with one thread).
torch.set_num_threads(int(os.environ.get("SHIFTAUDIT_TEST_THREADS", 1)))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # the same for the CLI runs tests start as subprocesses

# Property tests (docs/testing.md). "ci", the default (`make test`, .ci/run): derandomised, so a run draws the same
# examples on every machine and a failure does not depend on luck; no example database. "fuzz" (`make fuzz`, or
# `pytest --hypothesis-profile fuzz`): fresh randomness and ten times the examples, for exploration; a failure prints
# the @reproduce_failure blob to pin it. A test's own @settings(max_examples=examples(n)) scales with the profile
# (tests/helpers.py) and inherits derandomize from it: no test sets derandomize itself
# (tests/test_hypothesis_profiles.py checks both).
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("fuzz", derandomize=False, database=None, deadline=None, print_blob=True, max_examples=1000)
settings.load_profile(os.environ.get("SHIFTAUDIT_HYPOTHESIS_PROFILE", "ci"))
