"""Renders docs/benchmarks.md's CPU tables from the JSON files the benchmark commands wrote.

Usage (after bench/cpu-benchmarks.sh): python3 bench/render_benchmarks_md.py > /tmp/tables.md
Prints the forward table, the backward table and the whole-model table as Markdown.
"""
import json
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "docs/benchmarks"


def load(name):
    with open(f"{root}/{name}") as f:
        return json.load(f)


def cell(res, impl, r, k, p):
    return next(x for x in res if x["impl"] == impl and x["R"] == r and x["K"] == k and x["pass"] == p)


fwd = load("dwconv-cpu.json")
res, peak = fwd["results"], fwd["machine"]["peak_gflops"]
ks, rs = sorted({x["K"] for x in res}), sorted({x["R"] for x in res})
print("### Forward, (8, 384, R, R), 2 layers: ms for the stack\n")
print("| R | impl | " + " | ".join(f"K={k}" for k in ks) + " |")
print("|---|---|" + "---|" * len(ks))
for r in rs:
    for impl in ("ours", "torch"):
        print(f"| {r} | {impl} | " + " | ".join(f"{cell(res, impl, r, k, 'fwd')['ms']:.1f}" for k in ks) + " |")
    print(f"| {r} | **speed-up** | " + " | ".join(f"**{cell(res, 'torch', r, k, 'fwd')['ms'] / cell(res, 'ours', r, k, 'fwd')['ms']:.1f}×**" for k in ks) + " |")
    print(f"| {r} | ours, % of peak | " + " | ".join(f"{100 * cell(res, 'ours', r, k, 'fwd')['gflops'] / peak:.0f}%" for k in ks) + " |")

bwd = load("dwconv-cpu-bwd.json")
res = bwd["results"]
ks = sorted({x["K"] for x in res})
print("\n### Backward, (8, 384, 32, 32), 1 layer: ms\n")
print("| pass | impl | " + " | ".join(f"K={k}" for k in ks) + " |")
print("|---|---|" + "---|" * len(ks))
for p in ("dgrad", "wgrad", "bwd"):
    for impl in ("ours", "torch"):
        print(f"| {p} | {impl} | " + " | ".join(f"{cell(res, impl, 32, k, p)['ms']:.1f}" for k in ks) + " |")
    print(f"| {p} | **speed-up** | " + " | ".join(f"**{cell(res, 'torch', 32, k, p)['ms'] / cell(res, 'ours', 32, k, p)['ms']:.1f}×**" for k in ks) + " |")

print("\n### Whole RepLKNet-31B at 224, batch 8, 2 threads\n")
print("| mode | ours | libtorch conv | speed-up | peak RSS ours | peak RSS libtorch |")
print("|---|---|---|---|---|---|")
for name in ("model-cpu-infer.json", "model-cpu-train.json"):
    d = {x["impl"]: x for x in load(name)["results"]}
    o, t = d["ours"], d["torch"]
    print(f"| {o['mode']} | {o['ms'] / 1000:.2f} s ({o['images_per_s']:.2f} img/s) | {t['ms'] / 1000:.2f} s ({t['images_per_s']:.2f} img/s) "
          f"| **{t['ms'] / o['ms']:.2f}×** | {o['peak_rss_bytes'] / 2**20:.0f} MiB | {t['peak_rss_bytes'] / 2**20:.0f} MiB |")
