#!/usr/bin/env bash
# Runs on the GPU machine's CPU (AVX-512, 16 cores): verifies the Vector512 kernels against libtorch (float64) and
# times them, since the project machine's VM exposes only AVX2. Writes JSON and a log to $OUT.
set -uo pipefail
out=${OUT:-/tmp}
app() { bash .device/run.sh .device/app/replknet.dll "$@"; }
{
  app info --device cpu
  app bench dwconv --device cpu --check --threads 2 --sizes 32 --kernels 7,13,31 --layers 2 --reps 3 --pass all \
    --json "$out/dwconv-avx512-2threads.json"
  app bench dwconv --device cpu --threads 16 --sizes 64 --kernels 7,31 --layers 2 --reps 3 \
    --json "$out/dwconv-avx512-16threads.json"
} 2>&1 | tee "$out/cpu-avx512.log"
