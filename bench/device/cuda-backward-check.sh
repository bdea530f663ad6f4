#!/usr/bin/env bash
# Issue 7 on the GPU machine in one call (prepared without a GPU; not run yet): the backward kernels' correctness
# (input grad = forward with the rotated filter, weight grad = deterministic split reduction) against float64 autograd,
# Table 1 backward ours vs libtorch, RepLKNet-31B training step both ways,
# and a short CUDA training run with resume. Run from the repository root with .device carried:
#   bash bench/device/cuda-backward-check.sh      (logs packed into $OUT/logs.tgz, summary and tables printed)
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
export REPLKNET_CUDA_BACKWARD=1

step check 150 "${app[@]}" cuda check --device cuda --backward
step bwd 300 "${app[@]}" bench dwconv --device cuda --pass bwd --kernels 3,7,13,31 --json "$OUT/dwconv-cuda-bwd.json"
step train31b 200 "${app[@]}" bench model --arch RepLKNet-31B --device cuda --mode train --batch 64 --reps 5 --json "$OUT/model-train-31b.json"
# The GPU machine has no datasets: a small random Fashion-MNIST in IDX format (2,000 train, 500 test images).
python3 - "$OUT/fmnist" <<'PY'
import gzip, os, struct, sys, random
d = sys.argv[1]; os.makedirs(d, exist_ok=True); random.seed(0)
def write(name, magic, dims, data):
    with gzip.open(os.path.join(d, name), "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", x) for x in dims) + bytes(data))
for split, n in (("train", 2000), ("t10k", 500)):
    labels = [random.randrange(10) for _ in range(n)]
    pixels = bytearray()
    for y in labels:
        pixels += bytes(min(255, (r * 9 + y * 23 + random.randrange(40))) for r in range(784))
    write(f"{split}-images-idx3-ubyte.gz", 2051, (n, 28, 28), pixels)
    write(f"{split}-labels-idx1-ubyte.gz", 2049, (n,), labels)
PY
step train 200 "${app[@]}" train --device cuda --data "$OUT/fmnist" --epochs 1 --max-steps 40 --save-every 20 --out "$OUT/run"
step resume 200 "${app[@]}" train --device cuda --data "$OUT/fmnist" --epochs 1 --max-steps 60 --save-every 20 --out "$OUT/run" --resume

for f in check train31b train resume; do echo "---- $f"; tail -n 14 "$OUT/$f.log"; done
echo "---- summary"; cat "$summary"
echo "---- bwd"; tail -n 30 "$OUT/bwd.log"
pack_logs
