#!/usr/bin/env bash
# The paper experiment on one GPU, from the repository root of a plain checkout (ldmkit need not be installed):
#   OUT=runs/paper bash examples/paper/gpu_job.sh            (TINY=1 for the tiny CPU version: DEVICE=cpu)
# It writes OUT/results.json (rewritten as results arrive), OUT/results.md, OUT/run.log (the whole log) and
# OUT/classifier.safetensors: the Shapes classifier behind the Frechet distance, trained first on the same device
# (about 20 s on a GPU; if that fails, the shipped classifier is used and results.json says so). With
# CLASSIFIER_WEIGHTS=shipped the shipped classifier (the same recipe, trained on the CPU) scores the run instead.
set -uo pipefail
OUT=${OUT:-runs/paper}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD:$PWD/plugins${PYTHONPATH:+:$PYTHONPATH}"

source scripts/plain_checkout_plugins.sh
"$PY" -m ldmkit.cli plugins 2>&1 | tee "$OUT/run.log"
nvidia-smi 2>&1 | head -15 | tee -a "$OUT/run.log"
CLS_ARGS="--train 24000 --test 4000 --epochs 8"
[ -n "${TINY:-}" ] && CLS_ARGS="--train 64 --test 32 --epochs 1"
CLASSIFIER=()
if [ "${CLASSIFIER_WEIGHTS:-}" = shipped ]; then
  echo "scoring with the shipped Shapes classifier" | tee -a "$OUT/run.log"
elif "$PY" scripts/train_shapes_classifier.py --device "$DEVICE" $CLS_ARGS --out "$OUT/classifier.safetensors" 2>&1 \
    | tee -a "$OUT/run.log" && [ -f "$OUT/classifier.safetensors" ]; then
  CLASSIFIER=(--classifier "$OUT/classifier.safetensors")
fi
"$PY" -m ldmkit.cli paper run --out "$OUT" --device "$DEVICE" ${TINY:+--tiny} "${CLASSIFIER[@]}" 2>&1 | tee -a "$OUT/run.log"
