#!/usr/bin/env python3
"""The paper's Table 1 with PyTorch itself (F.conv2d, cuDNN), for comparison with `replknet bench dwconv --device cuda`
on the same card: 24 depthwise layers of (64, 384, R, R), fp32, NCHW, stride 1, pad K/2, CUDA events, median of 7.
Run on the GPU machine; writes JSON in the shape of the bench's results (impl "pytorch")."""
import argparse, json, statistics, datetime
import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--sizes", default="16,32,64")
p.add_argument("--kernels", default="3,5,7,9,13,17,21,27,29,31")
p.add_argument("--batch", type=int, default=64)
p.add_argument("--channels", type=int, default=384)
p.add_argument("--layers", type=int, default=24)
p.add_argument("--reps", type=int, default=7)
p.add_argument("--benchmark", type=int, default=1, help="torch.backends.cudnn.benchmark (the official code sets it)")
p.add_argument("--out")
a = p.parse_args()
torch.backends.cudnn.benchmark = bool(a.benchmark)
torch.backends.cudnn.allow_tf32 = False
dev = torch.device("cuda")
results = []
for r in map(int, a.sizes.split(",")):
    for k in map(int, a.kernels.split(",")):
        x = torch.randn(a.batch, a.channels, r, r, device=dev)
        ws = [torch.randn(a.channels, 1, k, k, device=dev) / k for _ in range(a.layers)]

        def stack():
            y = x
            for w in ws:
                y = F.conv2d(y, w, padding=k // 2, groups=a.channels)
            return y

        with torch.no_grad():
            stack(); stack()
            times = []
            for _ in range(a.reps):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record(); stack(); e.record(); e.synchronize()
                times.append(s.elapsed_time(e))
        ms = statistics.median(times)
        gflops = 2.0 * a.batch * a.channels * r * r * k * k * a.layers / (ms / 1e3) / 1e9
        results.append({"impl": "pytorch", "pass": "fwd", "N": a.batch, "C": a.channels, "R": r, "K": k, "layers": a.layers,
                        "ms": round(ms, 3), "gflops": gflops, "reps": a.reps})
        print(f"pytorch fwd R={r:<3} K={k:<3} {ms:10.2f} ms {gflops / 1e3:7.2f} TFLOP/s", flush=True)
        del x, ws
doc = {"machine": {"device": "cuda", "name": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "cudnn_benchmark": bool(a.benchmark), "date": datetime.date.today().isoformat()}, "results": results}
if a.out:
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=2)
