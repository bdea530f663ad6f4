#!/usr/bin/env bash
# GPU-machine check for issue 3: checkpoints interoperate with real PyTorch both ways, and models run on CUDA.
# Prepare here: pack-runtime + publish/bundle (see foundation-check.sh), then copy the official fixtures:
#   mkdir -p .device/fixtures && cp ../shared/fixtures/official-small/* .device/fixtures/
# Run there:    bash bench/device/checkpoint-interop.sh   (with .device carried; log in $OUT/interop.log)
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
fx=.device/fixtures
app() { bash .device/run.sh .device/app/replknet.dll "$@"; }
cfg=$out/small.json
echo '{"large_kernel_sizes":[13,11,9,5],"layers":[1,1,2,1],"channels":[16,32,64,128],"small_kernel":5,"dw_ratio":1.5,"ffn_ratio":4,"num_classes":10}' > "$cfg"
{
  set -x
  python3 bench/device/checkpoint_interop.py make "$fx" "$out"
  app info --device cuda
  app reparam --arch "$cfg" --weights "$fx/small-train.pth" --out "$out/ours-deploy.pth" --input-size 64 --device cuda
  app reparam --arch "$cfg" --weights "$fx/small-train.pth" --out "$out/ours-deploy.safetensors" --input-size 64 --device cuda
  app forward --arch "$cfg" --weights "$fx/small-train.pth" --input "$fx/small-input.bin" --input-shape 2,3,64,64 --output "$out/y-cuda.bin" --device cuda
  app forward --arch "$cfg" --weights "$out/pt-training.pth" --ema --input "$fx/small-input.bin" --input-shape 2,3,64,64 --output "$out/y-cuda-ema-container.bin" --device cuda
  app forward --arch "$cfg" --weights "$out/pt-training.pth" --input "$fx/small-input.bin" --input-shape 2,3,64,64 --device cuda
  app forward --arch "$cfg" --weights "$out/pt-plain.safetensors" --input "$fx/small-input.bin" --input-shape 2,3,64,64 --output "$out/y-cuda-plain-st.bin" --device cuda
  bb='{"large_kernel_sizes":[13,11,9,5],"layers":[1,1,2,1],"channels":[16,32,64,128],"small_kernel":5,"dw_ratio":1.5,"num_classes":null,"out_indices":[0,1,2,3]}'
  echo "$bb" > "$out/backbone.json"
  app forward --arch "$out/backbone.json" --weights "$out/pt-mmseg.pth" --input "$fx/small-input.bin" --input-shape 2,3,64,64 --features "$out/mm-f" --device cuda
  set +x
  python3 bench/device/checkpoint_interop.py check "$fx" "$out"
} 2>&1 | tee "$out/interop.log"
rm -f "$out"/*.pth "$out"/*.safetensors "$out"/*.bin
