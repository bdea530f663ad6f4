#!/usr/bin/env bash
# The paper's Table 1 on the CPU, every pass (forward, input gradient, weight gradient), ours (with its dispatch: libtorch
# where the measured rules say it is faster) against libtorch, once per instruction set: AVX-512 where the CPU has it, and
# AVX2 on the same machine by capping all three code generators (our kernels, ATen's, oneDNN's) at AVX2.
# Writes docs/benchmarks/table1-cpu-<isa>.json and prints the cells; then the speed-up tables (bench/render_table1_isa.py).
# Over several runs: save each run's output (bash bench/cpu-table1-isa.sh | tee run1.txt) and pass the files to
# bench/render_table1_runs.py, which gives each cell's lowest–highest ratio (docs/benchmarks/table1-cpu-run{1,2}.txt).
# About 5–8 minutes per instruction set on the 2-core project machine (libtorch's large-kernel cells dominate).
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/benchmarks
mkdir -p "$out"
./replknet info > /dev/null   # builds the CLI once, outside the timed runs

sweep() {
  local name=$1
  shift
  env "$@" ./replknet bench dwconv --device cpu --sizes 16,32,64 --layers 2 --reps 3 --pass fwd,dgrad,wgrad \
    --json "$out/table1-cpu-$name.json"
}

if grep -q avx512f /proc/cpuinfo; then
  sweep avx512
else
  echo "no AVX-512 on this CPU: skipping that sweep" >&2
fi
sweep avx2 REPLKNET_CPU_ISA=vector256 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
python3 bench/render_table1_isa.py "$out"
