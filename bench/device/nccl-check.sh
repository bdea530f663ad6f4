#!/usr/bin/env bash
# Issue 18 on a GPU machine in one call (prepared without a GPU or NCCL; NOT run yet): the NCCL path of the distributed
# collectives. Needs the CLI command `replknet distributed check --device cuda` (see /work/plan/i18-nccl-notes.md:
# it runs CollectiveCheck over the job's group and, when NCCL loads, straight over an NcclCommunicator).
# Run from the repository root with .device carried:   bash bench/device/nccl-check.sh
#   1. what the machine has: GPUs, the libnccl.so.2 of the PyTorch installation, MPICH;
#   2. one process: NCCL with a world of 1 on cuda:0 (ncclGetUniqueId, ncclCommInitRank by value, allreduce/broadcast,
#      cuStreamSynchronize) — works on a one-GPU machine;
#   3. with MPICH and >= 2 GPUs: mpiexec -n <GPUs> (one rank per GPU, cuda:LocalRank), NCCL across processes,
#      then REPLKNET_NCCL=0 (staged through host) as the reference path;
#   4. PyTorch's own NCCL allreduce on the same GPUs (torch.distributed, independent reference that NCCL works here).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"

gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
nvidia-smi --query-gpu=index,name,memory.total --format=csv > "$OUT/nvidia-smi.csv" 2>&1
nccl=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null || echo "none")
mpi=$(command -v mpiexec.mpich || command -v mpiexec || echo "none")
{ echo "GPUs: $gpus"; echo "PyTorch's libnccl.so.2: $nccl"; echo "mpiexec: $mpi"; } | tee "$OUT/machine.txt"

# 2. One process. Our own search must find NCCL from REPLKNET_LIBTORCH (set by run.sh) without help.
step single 120 env NCCL_DEBUG=WARN "${app[@]}" distributed check --device cuda
step single-off 120 env REPLKNET_NCCL=0 "${app[@]}" distributed check --device cuda

# 3. Several processes (needs MPICH on the machine and one GPU per rank).
if [[ "$mpi" != none && "$gpus" -ge 2 ]]; then
  step multi 300 env NCCL_DEBUG=WARN "$mpi" -n "$gpus" "${app[@]}" distributed check --device cuda
  step multi-off 300 env REPLKNET_NCCL=0 "$mpi" -n "$gpus" "${app[@]}" distributed check --device cuda
else
  echo "multi      skipped (needs mpiexec and >= 2 GPUs; have mpiexec=$mpi, GPUs=$gpus)" | tee -a "$summary"
fi

# 4. Independent reference: PyTorch's NCCL backend on the same GPUs.
if [[ "$gpus" -ge 2 ]]; then
  cat > "$OUT/torch_nccl.py" <<'PY'
import os, torch, torch.distributed as dist
dist.init_process_group("nccl"); r = dist.get_rank(); torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
t = torch.full((1 << 20,), float(r + 1), device="cuda"); dist.all_reduce(t)
w = dist.get_world_size(); assert t.eq(w * (w + 1) / 2).all().item(), t[:4]
print(f"rank {r}: torch NCCL {torch.cuda.nccl.version()} allreduce ok"); dist.destroy_process_group()
PY
  step torch 200 python3 -m torch.distributed.run --standalone --nproc-per-node "$gpus" "$OUT/torch_nccl.py"
fi

for f in single single-off multi multi-off torch; do [[ -f "$OUT/$f.log" ]] && { echo "---- $f"; tail -n 40 "$OUT/$f.log"; }; done
echo "---- summary"; cat "$summary"
pack_logs
