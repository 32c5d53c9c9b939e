#!/usr/bin/env python3
"""Markdown table of the structured-pruning runs in RAW (written by run.sh).
Usage: python3 table.py RAW"""
import glob, json, os, sys

raw = sys.argv[1]
load = lambda p: json.load(open(p)) if os.path.exists(p) else None
teacher = load(f"{raw}/teacher-inspect.json")
teacher_flops = teacher["flops_per_token"]
t_test = load(f"{raw}/teacher-test.json")["f1"]
t_dev = load(f"{raw}/teacher-dev.json")["f1"]
rows = [("teacher", 1.0, teacher["budget"]["unique"], t_dev, t_test, "", "")]
names = sorted(
    os.path.basename(p)[: -len("-inspect.json")]
    for p in glob.glob(f"{raw}/*-inspect.json")
    if not p.endswith("teacher-inspect.json")
)
for name in names:
    ins, dev, test = (load(f"{raw}/{name}{s}.json") for s in ("-inspect", "-dev", "-test"))
    if not (ins and dev and test):
        continue
    report = (load(f"{raw}/{name}.json") or {}).get("report", {})
    wall = (load(f"{raw}/{name}.time.json") or {}).get("wall_ms")
    parts = []
    if "fisher_seconds" in report:
        parts.append(f"Fisher {report['fisher_seconds']:.0f} s")
    if "reconstruction" in report:
        parts.append(f"reconstruction {report['reconstruction']['seconds']:.0f} s")
    rows.append((name, ins["flops_per_token"] / teacher_flops, ins["budget"]["unique"],
                 dev["f1"], test["f1"], f"{wall / 1000:.0f} s" if wall else "", ", ".join(parts)))
print("| model | encoder FLOPs | unique params | dev F1 | test F1 | test − teacher (points) | wall time | of which |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for name, f, p, d, t, wall, parts in rows:
    print(f"| {name} | {f:.1%} | {p:,} | {d:.4f} | {t:.4f} | {100 * (t - t_test):+.2f} | {wall} | {parts} |")
for p in sorted(glob.glob(f"{raw}/*.infeasible")):
    print(f"\n{open(p).read().strip()}")

# Held-out (dev) relative error of each layer's output, without and with the reconstruction.
held = [(n, (load(f"{raw}/{n}.json") or {}).get("report", {})) for n in names]
held = [(n, r) for n, r in held if "heldout_layer_error_reconstructed" in r]
if held:
    print("\nHeld-out relative error of each layer's output (Σ‖y′−y‖²/Σ‖y‖² on the first dev sentences), pruned → reconstructed:\n")
    layers = len(held[0][1]["heldout_layer_error_pruned"])
    print("| model | " + " | ".join(f"layer {i}" for i in range(layers)) + " |")
    print("|---|" + "---:|" * layers)
    for n, r in held:
        cells = [f"{a:.3f} → {b:.3f}" for a, b in zip(r["heldout_layer_error_pruned"], r["heldout_layer_error_reconstructed"])]
        print(f"| {n} | " + " | ".join(cells) + " |")
