"""Table 1 per instruction set over several runs of bench/cpu-table1-isa.sh, from their printed logs.

Usage: python3 bench/render_table1_runs.py run1.txt run2.txt ...   (each: the script's whole output, both ISAs)
Prints, per instruction set and pass, libtorch ms / our ms per (R, K) as "lowest–highest" over the runs, then every
cell below 1 in any run, and the cells below 1 in every run. The machine is shared: one run's outlier cell (another
tenant's burst) shows as a wide range; a cell slower in every run is a real one.
"""
import collections
import re
import sys

line_re = re.compile(r"^\s+(ours|torch)\s+(fwd|dgrad|wgrad)\s+R=(\d+)\s+K=(\d+)\s+([\d.]+) ms")
if len(sys.argv) < 2:
    print("usage: python3 bench/render_table1_runs.py run1.txt [run2.txt ...]", file=sys.stderr)
    sys.exit(2)
cells = collections.defaultdict(lambda: collections.defaultdict(dict))  # (isa, pass) -> (R, K, run) -> impl -> ms
for run, path in enumerate(sys.argv[1:]):
    isa = None
    try:
        lines = open(path).readlines()
    except OSError as e:
        sys.exit(f"render_table1_runs.py: {path}: {e.strerror}")
    for line in lines:
        if "Measured FMA peak" in line:
            isa = "AVX-512" if "Vector512" in line else "AVX2" if "Vector256" in line else "scalar"
        m = line_re.match(line)
        if m and isa:
            impl, p, r, k, ms = m[1], m[2], int(m[3]), int(m[4]), float(m[5])
            cells[(isa, p)][(r, k, run)][impl] = ms

names = {"fwd": "forward", "dgrad": "input gradient", "wgrad": "weight gradient"}
runs = len(sys.argv) - 1
for isa in ("AVX-512", "AVX2"):
    for p in ("fwd", "dgrad", "wgrad"):
        c = cells.get((isa, p))
        if not c:
            continue
        rs = sorted({r for r, _, _ in c})
        ks = sorted({k for _, k, _ in c})
        print(f"**{isa}, {names[p]}**: libtorch ms / our ms, lowest–highest over the runs that measured the cell ({runs} given)\n")
        print("| R | " + " | ".join(f"K={k}" for k in ks) + " |")
        print("|---|" + "---|" * len(ks))
        any_below, all_below = [], []
        for r in rs:
            row = []
            for k in ks:
                q = [c[(r, k, i)]["torch"] / c[(r, k, i)]["ours"] for i in range(runs) if len(c.get((r, k, i), {})) == 2]
                if not q:  # a cut-off log: neither run has both sides of this cell
                    row.append("–")
                    continue
                lo, hi = min(q), max(q)
                row.append(f"{lo:.2f}–{hi:.2f}" if hi - lo >= 0.005 else f"{lo:.2f}")
                if lo < 1:
                    any_below.append(f"R {r} K {k}")
                if hi < 1:
                    all_below.append(f"R {r} K {k}")
            print(f"| {r} | " + " | ".join(row) + " |")
        print(f"\nbelow 1 in some run: {', '.join(any_below) or 'none'}; in every run: {', '.join(all_below) or 'none'}\n")
