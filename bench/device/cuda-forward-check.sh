#!/usr/bin/env bash
# Every GPU check and benchmark of the CUDA depthwise kernel in one call, for the scarce GPU machine
# (../shared/device/README.md). Run from the repository root with .device carried:
#   bash bench/device/cuda-forward-check.sh            (writes logs, JSON and PNGs to $OUT, prints a summary and the table last)
# Steps: driver/NVRTC info, compile report (NVRTC of the machine), correctness sweep vs float64/cuDNN/our CPU kernel,
# compute-sanitizer memcheck on exact-size buffers, tile tuning (table written to $OUT and used by the benchmarks),
# the paper's Table 1 ours vs libtorch, RepLKNet-31B inference both ways, and PyTorch's own Table 1 for reference.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv > "$OUT/nvidia-smi.csv" 2>&1
step info 60 "${app[@]}" cuda info --device cuda
[ "${COMPILE:-1}" = 1 ] && step compile 120 "${app[@]}" cuda compile --arch sm_90 --kernels 3,13,31,63
step check 150 "${app[@]}" cuda check --device cuda
[ "${SANITIZER:-1}" = 1 ] && step sanitizer 150 compute-sanitizer --tool memcheck --error-exitcode 9 "${app[@]}" cuda check --raw
step tune 200 "${app[@]}" cuda tune --device cuda --sizes 7,14,16,28,32,56,64 --out "$OUT/dwconv_fwd_tuning.json"
[ -s "$OUT/dwconv_fwd_tuning.json" ] && export REPLKNET_CUDA_TUNING="$OUT/dwconv_fwd_tuning.json"
step bench 240 "${app[@]}" bench dwconv --device cuda --check --json "$OUT/dwconv-cuda.json" --plot "$OUT/dwconv-cuda.png"
# RepLKNet-31B's own depthwise layers at batch 64 (stages 1-3: large kernel and its 5x5 branch)
step stage1 60 "${app[@]}" bench dwconv --device cuda --channels 128 --sizes 56 --kernels 31,5 --layers 2 --check
step stage2 60 "${app[@]}" bench dwconv --device cuda --channels 256 --sizes 28 --kernels 29,5 --layers 2 --check
step stage3 60 "${app[@]}" bench dwconv --device cuda --channels 512 --sizes 14 --kernels 27,5 --layers 18 --check
step model 150 "${app[@]}" bench model --arch RepLKNet-31B --device cuda --mode infer --batch 64 --reps 10 --json "$OUT/model-infer-31b.json"
step deploy 150 "${app[@]}" bench model --arch RepLKNet-31B --device cuda --mode infer --deploy --batch 64 --reps 10 --json "$OUT/model-infer-31b-deploy.json"
[ "${PYTORCH_TABLE:-1}" = 1 ] && step pytorch 150 python3 bench/device/torch_dwconv_table.py --out "$OUT/pytorch-dwconv.json"

for f in info compile check sanitizer tune; do echo "---- $f"; tail -n 12 "$OUT/$f.log"; done
for f in stage1 stage2 stage3; do echo "---- $f"; grep -A3 "^│ R\|speed-up\|ours  \|torch " "$OUT/$f.log" | tail -n 6; done
for f in model deploy; do echo "---- $f"; tail -n 4 "$OUT/$f.log"; done
[ -f "$OUT/pytorch.log" ] && { echo "---- pytorch"; tail -n 31 "$OUT/pytorch.log"; }
echo "---- summary"; cat "$summary"
echo "---- bench"; tail -n 45 "$OUT/bench.log"
pack_logs
