#!/usr/bin/env bash
# GPU speed, round two, on one Hopper GPU, from the repository root of a plain checkout:
#   OUT=results bash benchmarks/gpu_round2.sh main     # attention kernels, then the interleaved benchmark; A/B: the
#                                                      # defaults against MAIN_AB (default: SDPA, no norm kernels)
#   OUT=results bash benchmarks/gpu_round2.sh ab       # attention kernels, then only the batch-16 A/Bs (fewer compiles)
#   OUT=results bash benchmarks/gpu_round2.sh checks   # GPU tests, fp8 image-level quality, batch-2/16 profiles
#   OUT=results BATCH=16 bash benchmarks/gpu_round2.sh levers  # one batch: the defaults against LEVERS_AB (default:
#                                                      # the exact GELU, unmerged context projections, and cuDNN's
#                                                      # heuristics instead of its autotuner), diffusers at its
#                                                      # best and stock, the VAE and the pictures of that batch;
#                                                      # several A/Bs separated by ';'; GEGLU=1: the GEGLU kernel first;
#                                                      # FA4_TILES=file: FlashAttention-4 tiles (gpu_fa4_tiles.py --winners);
#                                                      # STOCK="": no stock torch.compile row of diffusers
#   OUT=results bash benchmarks/gpu_round2.sh tests    # GPU tests, then where the time of a batch-16 call goes
#   OUT=results bash benchmarks/gpu_round2.sh quick    # GPU tests of the GEGLU and GroupNorm kernels and the
#                                                      # precision line, the GroupNorm kernels' two forms, the
#                                                      # linear/conv shapes against the roofline, then
#                                                      # the GEGLU kernel alone with exact and tanh GELU
#   OUT=results bash benchmarks/gpu_round2.sh tiles    # FlashAttention-4 (unpacked at FA4_SITE) tile by tile at the
#                                                      # 64x64 and 32x32 self-attentions (gpu_fa4_tiles.py); the
#                                                      # tiles that beat its own go to OUT/fa4_tiles.json
#   OUT=results BATCH=16 STOCK= bash benchmarks/gpu_round2.sh tiled  # tiles, then levers with the winning tiles
#                                                      # against attention_tiles=False (and EXTRA_AB, e.g.
#                                                      # autotune_matmuls=True), then FA4's GPU tests
#   OUT=results bash benchmarks/gpu_round2.sh fa4      # the batch-16 guided step with the defaults, which take
#                                                      # FlashAttention-4 (unpacked by benchmarks/fa4_run.sh on
#                                                      # this machine, at FA4_SITE), against attention_kernel="fa3"
# Each step's time limit is cut to what is left of STEPS_S seconds (default: no cut) from the part's start.
# Needs diffusers (and pydantic) importable, and the optional fa3-fwd package for the FlashAttention-3 rows.
# Every step writes its own file under OUT as it goes, so a run cut short keeps what it measured.
set -uo pipefail
PART=${1:-main}
OUT=${OUT:?set OUT to a results folder}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD:$PWD/plugins${PYTHONPATH:+:$PYTHONPATH}"
# FlashAttention-4, where benchmarks/fa4_run.sh unpacked it on this machine: every part then runs with it
# (attention_kernel=None takes it), so MAIN_AB=attention_kernel=fa3 measures it against FlashAttention-3
SITE=${FA4_SITE:-/tmp/fa4site}
if [ -f "$SITE/flash_attn/cute/interface.py" ]; then
  export PYTHONPATH="$PWD:$PWD/plugins:$SITE:$SITE/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH#"$PWD:$PWD/plugins"}"
fi
# compiled kernels kept beside the checkout: a second part on the same machine reuses them
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.inductor-cache}
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/steps.log"; }
# SM clock, power and temperature every half second while a part runs (does a long batch-16 run hold its clocks?)
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu \
    --format=csv -lms 500 >"$OUT/clocks-$PART.csv" 2>/dev/null &
  CLOCKS_PID=$!
  trap 'kill $CLOCKS_PID 2>/dev/null' EXIT
fi
[ "$PART" = tiled ] && : "${STEPS_S:=580}"
END=$(($(date +%s) + ${STEPS_S:-100000}))
# the smaller of a step's own limit and the seconds left before END (at least 1)
limit() { local left=$((END - $(date +%s))); ((left < $1)) && echo $((left > 1 ? left : 1)) || echo "$1"; }

case "$PART" in
main)
  nvidia-smi -L | tee -a "$OUT/steps.log"
  log "attention kernels"
  timeout 60 "$PY" benchmarks/gpu_attention_kernels.py --out "$OUT/attention.md" >"$OUT/attention.log" 2>&1
  log "attention rc=$?"
  log "interleaved benchmark"
  timeout "${BENCH_LIMIT:-520}" "$PY" benchmarks/gpu_sampling.py --out "$OUT/gpu_sampling.md" \
    --ab "${MAIN_AB:-attention_kernel=sdpa,norm_kernels=False}" --ab-batches 16,2 --no-ab-plain \
    --stock-batches 16 --budget-s "${BENCH_BUDGET:-460}" >"$OUT/gpu_sampling.log" 2>&1
  log "benchmark rc=$?"
  ;;
ab)
  log "attention kernels"
  timeout "$(limit 60)" "$PY" benchmarks/gpu_attention_kernels.py --out "$OUT/attention.md" >"$OUT/attention.log" 2>&1
  log "attention rc=$?"
  log "batch-16 A/Bs against the default fast path and diffusers at its best"
  timeout "$(limit "${BENCH_LIMIT:-330}")" "$PY" benchmarks/gpu_sampling.py --out "$OUT/gpu_sampling_ab.md" \
    --batches 16 --plain-batches 2 --stock-batches 2 --no-ab-plain --budget-s "${BENCH_BUDGET:-270}" \
    --ab attention_kernel=fa3 --ab fp8_linear=True,geglu_kernel=False --ab norm_kernels=True \
    >"$OUT/gpu_sampling_ab.log" 2>&1
  log "benchmark rc=$?"
  ;;
checks)
  source scripts/plain_checkout_plugins.sh  # the tests load the shipped model through the plugins' entry points
  # more files than come back from a device run: everything but the step log goes into one archive at the end
  RES="$OUT/checks"
  mkdir -p "$RES"
  trap 'kill ${CLOCKS_PID:-} 2>/dev/null; tar -C "$OUT" -cf "$OUT/checks.tar" checks && rm -rf "$RES"' EXIT
  log "GPU tests of the fast path"
  timeout "$(limit "${TEST_LIMIT:-300}")" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/ldmkit/fast -rs \
    >"$RES/gpu_tests.log" 2>&1
  log "tests rc=$?"
  log "fp8 image-level quality"
  timeout "$(limit "${FP8_LIMIT:-180}")" "$PY" benchmarks/fp8_quality.py --out "$RES/fp8_quality.md" >"$RES/fp8_quality.log" 2>&1
  log "fp8 quality rc=$?"
  log "where the time of a batch-2 and a batch-16 UNet call goes (compiled, no CUDA graphs)"
  for b in ${PROFILE_BATCHES:-2 16}; do  # the module the fast path compiles, with the kernels its defaults choose
    timeout "$(limit "${PROFILE_LIMIT:-100}")" "$PY" benchmarks/gpu_unet_profile.py --batch "$b" --out-dir "$RES/prof$b" \
      --variants default --libraries ldmkit-fast --no-attention >"$RES/prof$b.log" 2>&1
    log "profile batch $b rc=$?"
  done
  ;;
levers)
  B=${BATCH:-16}
  nvidia-smi -L | tee -a "$OUT/steps.log"
  if [ -n "${GEGLU:-}" ]; then  # the GEGLU kernel alone first: exact against tanh GELU at each level
    log "GEGLU kernel, exact and tanh GELU"
    timeout "$(limit 100)" "$PY" benchmarks/gpu_geglu.py --library-tile --batches 16,2 --out "$OUT/geglu.md" \
      >"$OUT/geglu.log" 2>&1
    log "geglu rc=$?"
  fi
  log "batch $B: the defaults against ${LEVERS_AB:=approximate_gelu=False;merge_context_projections=False;cudnn_benchmark=False}, diffusers at its best"
  AB_ARGS=()
  IFS=';' read -ra ABS <<<"$LEVERS_AB"  # several A/Bs, in the order given, separated by ';'
  for ab in "${ABS[@]}"; do AB_ARGS+=(--ab "$ab"); done
  timeout "$(limit "${BENCH_LIMIT:-560}")" "$PY" benchmarks/gpu_sampling.py --out "$OUT/gpu_sampling_b$B.md" \
    --timeline-batches "$B" \
    --batches "$B" --plain-batches "$B" --stock-batches "${STOCK-$B}" "${AB_ARGS[@]}" --ab-batches "$B" --no-ab-plain \
    ${FA4_TILES:+--fa4-tiles "$FA4_TILES"} --budget-s "${BENCH_BUDGET:-480}" >"$OUT/gpu_sampling_b$B.log" 2>&1
  log "benchmark rc=$?"
  ;;
tests)
  source scripts/plain_checkout_plugins.sh
  log "GPU tests of the fast path"
  timeout "$(limit "${TEST_LIMIT:-330}")" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/ldmkit/fast -rs \
    >"$OUT/gpu_tests.log" 2>&1
  log "tests rc=$?"
  for b in ${PROFILE_BATCHES:-16}; do
    timeout "$(limit "${PROFILE_LIMIT:-120}")" "$PY" benchmarks/gpu_unet_profile.py --batch "$b" --out-dir "$OUT/prof$b" \
      --variants default --libraries ldmkit-fast --no-attention >"$OUT/prof$b.log" 2>&1
    log "profile batch $b rc=$?"
  done
  ;;
quick)
  source scripts/plain_checkout_plugins.sh
  log "GPU tests: the GEGLU kernel (exact and tanh GELU), the precision line of each setting"
  timeout "$(limit "${TEST_LIMIT:-240}")" "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs \
    tests/ldmkit/fast/test_geglu_kernel.py tests/ldmkit/fast/test_group_norm_kernels.py tests/benchmarks \
    tests/ldmkit/fast/test_fast_path.py -k "kernel or precision_line or graphed" >"$OUT/gpu_tests_quick.log" 2>&1
  log "tests rc=$?"
  log "GroupNorm kernels: three launches against two"
  timeout "$(limit 90)" "$PY" benchmarks/gpu_group_norm.py --forms --out "$OUT/group_norm_forms.md" \
    >"$OUT/group_norm_forms.log" 2>&1
  log "group norm forms rc=$?"
  log "the UNet's linear layers and convolutions, shape by shape, against the roofline"
  for b in ${ROOFLINE_BATCHES:-16 2}; do
    timeout "$(limit 60)" "$PY" benchmarks/unet_roofline.py --batch "$b" --time --out "$OUT/roofline_b$b.md" \
      >"$OUT/roofline_b$b.log" 2>&1
    log "roofline batch $b rc=$?"
  done
  if [ "${GEGLU:-1}" != 0 ]; then  # GEGLU=0: the tests, the GroupNorm forms and the roofline only
    log "GEGLU kernel, exact and tanh GELU"
    timeout "$(limit 120)" "$PY" benchmarks/gpu_geglu.py --library-tile --batches 16,2 --out "$OUT/geglu.md" \
      >"$OUT/geglu.log" 2>&1
    log "geglu rc=$?"
  fi
  ;;
tiles)
  [ -f "$SITE/flash_attn/cute/interface.py" ] || { echo "no FlashAttention-4 at $SITE: run benchmarks/fa4_run.sh" >&2; exit 2; }
  log "FlashAttention-4's tiles at the 64x64 and 32x32 self-attentions, batches 16 and 2"
  timeout "$(limit 240)" "$PY" benchmarks/gpu_fa4_tiles.py --out "$OUT/fa4_tiles.md" --winners "$OUT/fa4_tiles.json" \
    >"$OUT/fa4_tiles.log" 2>&1
  log "tiles rc=$?"
  ;;
tiled)
  # one device call: the tile sweep, then the batch-BATCH step with the tiles that won against
  # attention_tiles=False (or, where none won, against LEVERS_AB), then the GPU tests of FlashAttention-4
  # with a named tile; STEPS_S (default 580) is shared, the tests take what is left
  STEPS_S=${TILES_S:-200} OUT="$OUT/tiles" bash "$0" tiles
  W="$OUT/tiles/fa4_tiles.json"
  if [ -s "$W" ] && [ "$(cat "$W")" != "{}" ]; then
    export FA4_TILES=$W LEVERS_AB="attention_tiles=False${EXTRA_AB:+;$EXTRA_AB}"
  elif [ -n "${EXTRA_AB:-}" ]; then
    export LEVERS_AB=$EXTRA_AB
  fi
  log "tiles that won: $(cat "$W" 2>/dev/null || echo none); A/B: ${LEVERS_AB:-default}"
  LEFT=$((END - $(date +%s) - ${TEST_S:-60}))
  BENCH_LIMIT=$LEFT BENCH_BUDGET=$((LEFT - 75)) OUT="$OUT/levers" bash "$0" levers
  log "GPU tests of FlashAttention-4, its own tile and a named one"
  timeout "$(limit "${TEST_S:-60}")" "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs \
    tests/ldmkit/fast/test_attention_kernel.py -k fa4 >"$OUT/fa4_tests.log" 2>&1
  log "tests rc=$?"
  ;;
fa4)
  [ -f "$SITE/flash_attn/cute/interface.py" ] || { echo "no FlashAttention-4 at $SITE: run benchmarks/fa4_run.sh" >&2; exit 2; }
  log "guided step: the defaults (FlashAttention-4) against attention_kernel='fa3' and diffusers at its best"
  timeout "$(limit "${BENCH_LIMIT:-520}")" "$PY" benchmarks/gpu_sampling.py --out "$OUT/gpu_sampling_fa4.md" \
    --batches 16 --plain-batches 2 --stock-batches 2 --no-ab-plain --ab attention_kernel=fa3 \
    --budget-s "${BENCH_BUDGET:-460}" >"$OUT/gpu_sampling_fa4.log" 2>&1
  log "benchmark rc=$?"
  ;;
*)
  echo "unknown part $PART (main, ab, checks, levers, tests, quick, tiles, tiled or fa4)" >&2
  exit 2
  ;;
esac
