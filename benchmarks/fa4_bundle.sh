#!/usr/bin/env bash
# FlashAttention-4 (CuTe DSL) for a Hopper machine without a network: download the wheels, unpack them
# for CPython 3.12 on x86-64, drop what the sm_90 forward does not use, and pack the site as xz parts.
#   bash benchmarks/fa4_bundle.sh        # -> .fa4/bundle/fa4site.tar.xz.part-* and SHA256SUMS (about 53 MiB)
# Then, on the GPU machine (carry .fa4/bundle): OUT=results bash benchmarks/fa4_run.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WHL="$ROOT/.fa4/whl"
OUT="$ROOT/.fa4/bundle"
SITE="${SITE:-/tmp/fa4site}"
# flash-attn-4 and its requirements that the GPU image lacks (it has torch, triton, numpy, cuda-bindings,
# einops); the cu12 libraries nvidia-cutlass-dsl also names are not needed with a CUDA 13 driver
WHEELS=(flash-attn-4==4.0.0b40 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1
  nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 apache-tvm-ffi==0.1.15.post2
  torch-c-dlpack-ext==0.1.5 quack-kernels==0.6.5)
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64)
mkdir -p "$WHL"
python3 -m pip download -q --no-deps "${PLATFORM[@]}" -d "$WHL" "${WHEELS[@]}"
rm -rf "$SITE"
python3 -m pip install -q --no-deps --no-index --no-compile --find-links "$WHL" --target "$SITE" "${PLATFORM[@]}" \
  "${WHEELS[@]}"
echo "unpacked: $(du -sb "$SITE" | cut -f1) bytes"

cd "$SITE"
# not used by the forward kernel on x86-64 Linux with torch 2.11
rm -rf bin build_backend.py                                     # console scripts, build hook
rm -rf nvidia_cutlass_dsl/cu13/lib/stubs                        # aarch64 and QNX link stubs
rm -rf nvidia_cutlass_dsl/cu13/include                          # the ahead-of-time C header
rm -f nvidia_cutlass_dsl/cu13/lib/libcuda_dialect_runtime_static.a
rm -rf nvidia_cutlass_dsl/dsl_packages/iket                     # a profiler package nothing here imports
rm -rf tvm_ffi/3rdparty                                         # libbacktrace sources
rm -f torch_c_dlpack_ext/libtorch_c_dlpack_addon_torch*.so      # builds for torch 2.4-2.9 only
find . -name __pycache__ -type d -prune -exec rm -rf {} +
echo "pruned:   $(du -sb "$SITE" | cut -f1) bytes"

# the x86 filter and a dictionary larger than the 193 MB compiler library: 53 MiB instead of 58
mkdir -p "$OUT"
rm -f "$OUT"/fa4site.tar.xz*
tar -C "$SITE" --sort=name --owner=0 --group=0 --numeric-owner -cf - . |
  xz --x86 --lzma2=preset=9e,dict=192MiB -T1 >"$OUT/fa4site.tar.xz"
# parts of 45 MiB: each fits one device call beside a small working tree
(cd "$OUT" && split -b 45M fa4site.tar.xz fa4site.tar.xz.part- && rm fa4site.tar.xz && sha256sum fa4site.tar.xz.part-* >SHA256SUMS)
ls -l "$OUT"
