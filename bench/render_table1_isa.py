"""Renders the per-instruction-set Table 1 sweeps (bench/cpu-table1-isa.sh) as Markdown.

Usage: python3 bench/render_table1_isa.py [docs/benchmarks]
For each table1-cpu-<isa>.json present: per pass, a table of libtorch ms / our ms per (R, K) (> 1: ours faster), our ms,
and a closing line with the smallest ratio and every cell below 1.
"""
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "docs/benchmarks"
names = {"fwd": "forward", "dgrad": "input gradient", "wgrad": "weight gradient"}
if not any(os.path.exists(f"{root}/table1-cpu-{isa}.json") for isa in ("avx512", "avx2")):
    sys.exit(f"render_table1_isa.py: no table1-cpu-avx512.json or table1-cpu-avx2.json in {root}")
for isa in ("avx512", "avx2"):
    path = f"{root}/table1-cpu-{isa}.json"
    if not os.path.exists(path):
        continue
    with open(path) as f:
        data = json.load(f)
    res = data["results"]
    machine = data.get("machine", {})
    print(f"### {isa.upper()}: (8, 384, R, R), 2 layers, ms for the stack (FMA peak {machine.get('peak_gflops', float('nan')):.0f} GFLOP/s)\n")
    for p in ("fwd", "dgrad", "wgrad"):
        cells = [x for x in res if x["pass"] == p]
        if not cells:
            continue
        ks, rs = sorted({x["K"] for x in cells}), sorted({x["R"] for x in cells})

        def ms(impl, r, k):
            return next(x["ms"] for x in cells if x["impl"] == impl and x["R"] == r and x["K"] == k)

        print(f"**{names[p]}**\n")
        print("| R | | " + " | ".join(f"K={k}" for k in ks) + " |")
        print("|---|---|" + "---|" * len(ks))
        worst = []
        for r in rs:
            print(f"| {r} | ours ms | " + " | ".join(f"{ms('ours', r, k):.1f}" for k in ks) + " |")
            print(f"| {r} | torch ms | " + " | ".join(f"{ms('torch', r, k):.1f}" for k in ks) + " |")
            ratios = [ms("torch", r, k) / ms("ours", r, k) for k in ks]
            worst += [(q, r, k) for q, k in zip(ratios, ks)]
            print(f"| {r} | **torch/ours** | " + " | ".join(f"**{q:.2f}×**" for q in ratios) + " |")
        q, r, k = min(worst)
        slower = [f"R {r} K {k} ({q:.2f}×)" for q, r, k in sorted(worst) if q < 1.0]
        print(f"\nsmallest ratio {q:.2f}× (R {r}, K {k}); cells below 1: {', '.join(slower) if slower else 'none'}\n")
