#!/usr/bin/env bash
# GPU speed, round two, on one Hopper GPU, from the repository root of a plain checkout:
#   OUT=results bash benchmarks/gpu_round2.sh main     # attention kernels, then the interleaved benchmark with A/Bs
#   OUT=results bash benchmarks/gpu_round2.sh checks   # GPU tests of the fast path, fp8 image-level quality
# Needs diffusers (and pydantic) importable, and the optional fa3-fwd package for the FlashAttention-3 rows.
# Every step writes its own file under OUT as it goes, so a run cut short keeps what it measured.
set -uo pipefail
PART=${1:-main}
OUT=${OUT:?set OUT to a results folder}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD:$PWD/plugins${PYTHONPATH:+:$PYTHONPATH}"
# compiled kernels kept beside the checkout: a second part on the same machine reuses them
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.inductor-cache}
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/steps.log"; }

case "$PART" in
main)
  nvidia-smi -L | tee -a "$OUT/steps.log"
  log "attention kernels"
  timeout 60 "$PY" benchmarks/gpu_attention_kernels.py --out "$OUT/attention.md" >"$OUT/attention.log" 2>&1
  log "attention rc=$?"
  log "interleaved benchmark"
  timeout "${BENCH_LIMIT:-520}" "$PY" benchmarks/gpu_sampling.py --out "$OUT/gpu_sampling.md" \
    --ab attention_kernel=fa3 --ab fp8_linear=True,geglu_kernel=False --ab norm_kernels=True --no-ab-plain \
    --stock-batches 16 --budget-s "${BENCH_BUDGET:-460}" >"$OUT/gpu_sampling.log" 2>&1
  log "benchmark rc=$?"
  ;;
checks)
  # more files than come back from a device run: everything but the step log goes into one archive at the end
  RES="$OUT/checks"
  mkdir -p "$RES"
  trap 'tar -C "$OUT" -cf "$OUT/checks.tar" checks && rm -rf "$RES"' EXIT
  log "GPU tests of the fast path"
  timeout "${TEST_LIMIT:-170}" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/ldmkit/fast -rs \
    >"$RES/gpu_tests.log" 2>&1
  log "tests rc=$?"
  log "fp8 image-level quality"
  timeout "${FP8_LIMIT:-120}" "$PY" benchmarks/fp8_quality.py --out "$RES/fp8_quality.md" >"$RES/fp8_quality.log" 2>&1
  log "fp8 quality rc=$?"
  log "where the time of a batch-2 and a batch-16 UNet call goes (compiled, no CUDA graphs)"
  for b in 2 16; do
    timeout "${PROFILE_LIMIT:-100}" "$PY" benchmarks/gpu_unet_profile.py --batch "$b" --out-dir "$RES/prof$b" \
      --variants default --libraries ldmkit --no-attention >"$RES/prof$b.log" 2>&1
    log "profile batch $b rc=$?"
  done
  ;;
*)
  echo "unknown part $PART (main or checks)" >&2
  exit 2
  ;;
esac
