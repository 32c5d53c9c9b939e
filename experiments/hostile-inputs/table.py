#!/usr/bin/env python3
"""The Markdown tables of README.md from two sweep results (before and after the fixes).

Usage: python3 experiments/hostile-inputs/table.py before.json after.json
"""
import json
import sys

ORDER = ["clear-error", "handled", "unclear-error", "refused-valid", "exit-1", "panic", "abort",
         "hang", "silent-wrong", "input-modified"]


def main():
    before, after = (json.load(open(p)) for p in sys.argv[1:3])
    print("| outcome | before | after |")
    print("|---|---:|---:|")
    for o in ORDER:
        b, a = before["outcomes"].get(o, 0), after["outcomes"].get(o, 0)
        print(f"| {o} | {b} | {a} |")
    print(f"| **cases** | **{before['cases']}** | **{after['cases']}** |")
    print()
    print("| # | case | expected | before | after |")
    print("|---:|---|---|---|---|")
    old = {r["name"]: r for r in before["results"]}
    for i, r in enumerate(after["results"], 1):
        b = old.get(r["name"], {}).get("outcome", "-")
        mark = "" if b == r["outcome"] else " ←"
        name = r["name"].replace("|", "\\|")
        print(f"| {i} | {name} | {r['expect']} | {b} | {r['outcome']}{mark} |")


if __name__ == "__main__":
    main()
