#!/usr/bin/env bash
# benchmarks/gpu.sh's fine-tuning stage (issue 26): `shiftaudit patch --distill` under torchrun, images/s per GPU at
# bf16 (resnet18, 224 px, random weights, synthetic images); on a dry run 2 gloo processes on the CPU at toy sizes.
# Called by gpu.sh with $PY (the interpreter), $OUT and GPU_SH_DRY_RUN; writes $OUT/gpu-finetune.json.
set -uo pipefail
args=(--out "${OUT:-bench-results}")
if [ "${GPU_SH_DRY_RUN:-0}" = "1" ]; then args+=(--dry-run); fi
exec "${PY:-python3}" -m benchmarks.finetune_bench "${args[@]}"
