#!/usr/bin/env bash
# GPU-machine check for the foundation (issue 2): TorchSharp on an existing CUDA libtorch through REPLKNET_LIBTORCH.
# Prepare here:  ../shared/device/pack-runtime.sh
#                dotnet publish src/RepLKNet.Cli -c Release -o /tmp/replknet-pub && ../shared/device/bundle-app.sh /tmp/replknet-pub
# Run there:     bash bench/device/foundation-check.sh   (with .device carried; writes $OUT/foundation.log)
set -uo pipefail
out=${OUT:-/tmp}
log="$out/foundation.log"
app=.device/app/replknet.dll
step() { echo; echo "=== $*"; }
{
  step "GPU"; nvidia-smi -L
  step "PyTorch on this machine (reference)"
  python3 -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'
  step "replknet info --device cuda --check (via run.sh: REPLKNET_LIBTORCH + LD_LIBRARY_PATH)"
  bash .device/run.sh "$app" info --device cuda --check; echo "exit code $?"
  step "replknet info --device auto --json"
  bash .device/run.sh "$app" info --json; echo "exit code $?"
  step "REPLKNET_LIBTORCH only, without LD_LIBRARY_PATH (our preload alone)"
  tl=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  env -u LD_LIBRARY_PATH REPLKNET_LIBTORCH="$tl" DOTNET_ROOT=/tmp/dnrt /tmp/dnrt/dotnet "$app" info --device cuda --check; echo "exit code $?"
  step "--device cpu with the CUDA libtorch"
  bash .device/run.sh "$app" info --device cpu --check; echo "exit code $?"
  step "bad REPLKNET_LIBTORCH (must fail clearly, exit 1)"
  env REPLKNET_LIBTORCH=/nonexistent DOTNET_ROOT=/tmp/dnrt /tmp/dnrt/dotnet "$app" info --device cuda; echo "exit code $?"
  step "--device cuda:7 (must fail clearly, exit 1)"
  bash .device/run.sh "$app" info --device cuda:7; echo "exit code $?"
} 2>&1 | tee "$log"
