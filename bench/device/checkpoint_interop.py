"""PyTorch-side half of the checkpoint interop check (issue 3), run on the GPU machine by checkpoint-interop.sh.

mode 'make': writes PyTorch-made files for replknet to read: a training container {'model', 'model_ema', 'optimizer',
             'epoch', 'args': argparse.Namespace}, an MMSeg-style {'state_dict': backbone.*, 'meta'} and a plain
             safetensors file, all from the official small fixture.
mode 'check': reads what replknet wrote (.pth and .safetensors) with torch.load / safetensors and compares it with the
             official deploy state dict; compares replknet's CUDA logits with the official ones.
"""
import argparse
import json
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def make(fx, out):
    sd = torch.load(f"{fx}/small-train.pth", map_location="cpu")
    ema = {k: (v + 0.001 if v.is_floating_point() else v) for k, v in sd.items()}
    ns = argparse.Namespace(model="RepLKNet-31B", lr=4e-3, drop_path=0.5, model_ema=True)
    torch.save({"model": sd, "model_ema": ema, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
                "epoch": 7, "scaler": None, "args": ns}, f"{out}/pt-training.pth")
    backbone = {"backbone." + k: v for k, v in sd.items() if not k.startswith(("head.", "norm."))}
    backbone["decode_head.conv_seg.weight"] = torch.zeros(19, 512, 1, 1)
    torch.save({"state_dict": backbone, "meta": {"epoch": 3, "CLASSES": ["road", "sky"]}}, f"{out}/pt-mmseg.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, f"{out}/pt-plain.safetensors", metadata={"note": "made by PyTorch"})
    print("made PyTorch files:", "pt-training.pth pt-mmseg.pth pt-plain.safetensors")


def compare(name, ours, official):
    assert set(ours) == set(official), f"{name}: key sets differ: {sorted(set(ours) ^ set(official))[:5]}"
    worst = 0.0
    for k, v in official.items():
        o = ours[k]
        assert o.dtype == v.dtype and o.shape == v.shape, f"{name}: {k} {o.dtype}{tuple(o.shape)} vs {v.dtype}{tuple(v.shape)}"
        worst = max(worst, (o.double() - v.double()).abs().max().item() if v.numel() else 0.0)
    print(f"{name}: {len(official)} keys, dtypes and shapes equal; max |ours - official| = {worst:.3e}")
    return worst


def check(fx, out):
    official = torch.load(f"{fx}/small-deploy.pth", map_location="cpu")
    ok = True
    pth = torch.load(f"{out}/ours-deploy.pth", map_location="cpu", weights_only=True)
    ok &= compare("torch.load(replknet .pth export)", pth, official) <= 1e-6
    st = load_file(f"{out}/ours-deploy.safetensors")
    ok &= compare("safetensors.load_file(replknet .safetensors)", st, official) <= 1e-6
    with safe_open(f"{out}/ours-deploy.safetensors", "pt") as f:
        meta = f.metadata()
    print("replknet safetensors metadata:", {k: (v if len(v) < 60 else v[:57] + "...") for k, v in meta.items()})
    ok &= meta.get("format") == "replknet" and meta.get("form") == "deploy" and json.loads(meta["config"])["dw_ratio"] == 1.5
    ref = np.fromfile(f"{fx}/small-logits-train.bin", dtype="<f4")
    for name in ("y-cuda.bin", "y-cuda-ema-container.bin", "y-cuda-plain-st.bin"):
        y = np.fromfile(f"{out}/{name}", dtype="<f4")
        diff = float(np.abs(y - ref).max())
        print(f"replknet --device cuda logits ({name}) vs official CPU logits: max abs diff {diff:.3e}")
        ok &= diff <= 1e-5 if name != "y-cuda-ema-container.bin" else diff > 1e-3  # EMA weights were shifted on purpose
    for i in range(4):
        a = np.fromfile(f"{out}/mm-f{i}.bin", dtype="<f4")
        b = np.fromfile(f"{fx}/small-features-train-s{i}.bin", dtype="<f4")
        diff = float(np.abs(a - b).max())
        print(f"MMSeg-container backbone stage-{i} features on CUDA vs official CPU: max abs diff {diff:.3e}")
        ok &= diff <= 1e-5
    print("INTEROP", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    mode, fx, out = sys.argv[1:4]
    sys.exit(make(fx, out) if mode == "make" else check(fx, out))
