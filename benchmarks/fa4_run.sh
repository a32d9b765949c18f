#!/usr/bin/env bash
# On a Hopper GPU: unpack the FlashAttention-4 bundle (benchmarks/fa4_bundle.sh) and run gpu_attention_kernels.py.
#   OUT=/some/dir bash benchmarks/fa4_run.sh        ($OUT defaults to /tmp/fa4out)
# Exit codes: 3 = a bundle part or SHA256SUMS missing, 4 = checksum mismatch, 5 = unpack failed;
# otherwise the last failing benchmark's own (124 = killed by its 150 s timeout; the table keeps its finished rows).
# BATCHES (default "16 2"): the UNet batches timed, one table each; before batch 2, the GPU tests of
# attention_kernel="fa4" (NO_FA4_TESTS=1 skips them).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2 # repo root
OUT="${OUT:-/tmp/fa4out}"
mkdir -p "$OUT"
BUNDLE=.fa4/bundle
SITE="${FA4_SITE:-/tmp/fa4site}"
log() { echo "[run_fa4 $(date +%H:%M:%S)] $*"; }

missing=()
for f in SHA256SUMS fa4site.tar.xz.part-aa fa4site.tar.xz.part-ab; do
    [ -s "$BUNDLE/$f" ] || missing+=("$BUNDLE/$f")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "bundle incomplete, missing: ${missing[*]}"
    ls -la "$BUNDLE" 2>&1
    exit 3
fi

log "checking sha256"
if ! (cd "$BUNDLE" && sha256sum -c SHA256SUMS); then
    log "checksum mismatch"
    exit 4
fi

if [ -f "$SITE/flash_attn/cute/interface.py" ]; then
    log "$SITE already unpacked; reusing it"
else
    log "unpacking into $SITE"
    mkdir -p "$SITE"
    if ! cat "$BUNDLE"/fa4site.tar.xz.part-aa "$BUNDLE"/fa4site.tar.xz.part-ab | tar -xJf - -C "$SITE"; then
        log "unpack failed"
        exit 5
    fi
    du -sh "$SITE" 2>&1
fi

PP="$SITE:$SITE/nvidia_cutlass_dsl/dsl_packages"
if [ -d /tmp/site ]; then
    PP="$PP:/tmp/site" # fa3_fwd, after the FA4 site so flash_attn resolves to FA4's
fi
export PYTHONPATH="$PP${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
log "PYTHONPATH=$PYTHONPATH"

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    python3 - <<'EOF' 2>&1
import sys, time
import torch
print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name())
for name in ("triton", "cuda.bindings", "cutlass", "cutlass.cute", "fa3_fwd_interface"):
    try:
        module = __import__(name, fromlist=["_"])
        print(name, "ok", getattr(module, "__version__", ""))
    except Exception as exc:  # noqa: BLE001
        print(name, "failed:", type(exc).__name__, exc)
start = time.time()
from flash_attn.cute import flash_attn_func  # noqa: E402,F401
print("fa4 import ok", round(time.time() - start, 1), "s")
EOF
} | tee "$OUT/fa4_checks.log"

rc=0
for batch in ${BATCHES:-16 2}; do # the guided batch of 8 pictures, then of one
    if [ "$batch" = 2 ] && [ -z "${NO_FA4_TESTS:-}" ]; then
        # the fast path's FlashAttention-4 operator (compiled, CUDA-graphed) against float32 attention;
        # needs ldmkit importable (pydantic beside it)
        log "GPU tests of attention_kernel='fa4' (timeout 120 s)"
        PYTHONPATH="$PWD:$PWD/plugins:$PYTHONPATH" timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu \
            -k fa4 tests/ldmkit/fast/test_attention_kernel.py -rs 2>&1 | tee "$OUT/fa4_tests.log"
        log "tests exit code $?"
    fi
    log "running gpu_attention_kernels.py --batch $batch (timeout 150 s)"
    timeout 150 python3 benchmarks/gpu_attention_kernels.py --batch "$batch" --out "$OUT/attention-b$batch.md" 2>&1 |
        tee "$OUT/attention-b$batch.log"
    step=$?
    log "gpu_attention_kernels.py --batch $batch exit code $step"
    ((step == 0)) || rc=$step
done
exit "$rc"
