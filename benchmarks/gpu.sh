#!/usr/bin/env bash
# The GPU path, proven on a GPU, in one short run (< 8 min on one card, each step under its own timeout): the GPU
# tests (pytest -m gpu), the GPU benchmark (benchmarks/gpu.py) into bench-results/gpu.json, and the opt-in options'
# speed and drift on CUDA (benchmarks/options.py) into bench-results/options.json. Installs nothing but the project itself (make install)
# when .venv is absent. Usage: benchmarks/gpu.sh [extra arguments for benchmarks/gpu.py, e.g. --quick]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    make install
fi
PY=.venv/bin/python

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "benchmarks/gpu.sh: torch sees no CUDA GPU here; for a CPU dry run use: $PY -m benchmarks.gpu --device cpu --quick" >&2
    exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
mkdir -p bench-results

# Tests first, with their own output kept: a failure still lets the benchmark run, and the script exits non-zero.
tests_rc=0
timeout 200 "$PY" -m pytest -p no:xdist -p no:cacheprovider -m gpu -q -rs tests/test_gpu.py \
    --junitxml bench-results/gpu-tests.xml || tests_rc=$?

timeout 150 "$PY" -m benchmarks.gpu --device cuda --out bench-results "$@"
timeout 120 "$PY" -m benchmarks.options --device cuda --reps 3 --out bench-results

echo "gpu tests exit status: $tests_rc (0 = all passed); results in bench-results/gpu.json"
exit "$tests_rc"
