#!/usr/bin/env bash
# Regenerates the CPU figures in docs/benchmarks.md (about 15–25 minutes on the 2-core project machine).
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/benchmarks
mkdir -p "$out"
./replknet bench dwconv --device cpu --sizes 16,32,64 --layers 2 --reps 3 \
  --json "$out/dwconv-cpu.json" --plot "$out/dwconv-cpu-fwd.png" | tee "$out/dwconv-cpu-fwd.txt"
./replknet bench dwconv --device cpu --sizes 32 --kernels 3,7,13,21,27,31 --layers 1 --reps 3 --pass bwd \
  --json "$out/dwconv-cpu-bwd.json" --plot "$out/dwconv-cpu-dgrad.png" | tee "$out/dwconv-cpu-bwd.txt"
./replknet bench model --arch RepLKNet-31B --batch 8 --mode infer --reps 3 --json "$out/model-cpu-infer.json" | tee "$out/model-cpu-infer.txt"
./replknet bench model --arch RepLKNet-31B --batch 8 --mode train --reps 2 --json "$out/model-cpu-train.json" | tee "$out/model-cpu-train.txt"
