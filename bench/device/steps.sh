# Shared by the GPU-machine scripts (source it): $OUT, the app command, a summary file and step NAME LIMIT CMD...,
# which runs CMD with a time limit, logs to $OUT/NAME.log and appends "name rc seconds" to the summary.
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export REPLKNET_CUDA_CACHE=/tmp/replknet-cubins
app=(bash .device/run.sh .device/app/replknet.dll)
summary="$OUT/summary.txt"
: > "$summary"

step() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '%-10s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$summary"
  return 0
}

# Few files come back from the GPU machine: pack the logs into one archive.
pack_logs() {
  tar czf "$OUT/logs.tgz" -C "$OUT" $(cd "$OUT" && ls *.log summary.txt nvidia-smi.csv 2>/dev/null) && (cd "$OUT" && rm -f *.log summary.txt nvidia-smi.csv)
}
