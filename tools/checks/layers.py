#!/usr/bin/env python3
"""Checks the library's layering: every module under src/ imports only modules of the layers below
it (the order lib.rs documents; siblings in a layer, such as train and surgery, stay independent),
and lists import cycles between files.
Usage: python3 tools/checks/layers.py   (exit 1 on a violation or a cycle)"""
import re, sys, pathlib, itertools

LAYERS = [["error", "util"], ["arch"], ["io"], ["budget"], ["data"], ["metrics"], ["model"],
          ["eval"], ["surgery", "train", "export"], ["pipeline"]]
rank = {m: i for i, layer in enumerate(LAYERS) for m in layer}
src = pathlib.Path(__file__).resolve().parents[2] / "src"

def module_of(path):
    rel = path.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts.pop()
    return parts

problems = []
edges = {}
for path in sorted(src.rglob("*.rs")):
    parts = module_of(path)
    if not parts or parts[0] in ("lib", "main", "cli"):
        continue
    # Code only: doc comments may name any module.
    text = "\n".join(l.split("//")[0] for l in path.read_text().splitlines())
    own = "::".join(parts)
    if parts[0] not in rank:
        problems.append(f"{own}: not in any layer (add it to LAYERS)")
    deps = set()
    for m in re.finditer(r"crate::([a-z_]+(?:::[a-z_]+)?)", text):
        target = m.group(1).split("::")
        top = target[0]
        if top not in rank:
            continue
        if parts[0] in rank and rank[top] > rank[parts[0]]:
            problems.append(f"{own} (layer {parts[0]}) imports crate::{top}, a higher layer")
        elif parts[0] in rank and top != parts[0] and rank[top] == rank[parts[0]] > 0:
            problems.append(f"{own} imports its sibling crate::{top} (siblings stay independent)")
        # file-level edge: crate::a::b where b is a file module
        cand = src.joinpath(*target)
        if cand.with_suffix(".rs").is_file() or (cand / "mod.rs").is_file():
            deps.add("::".join(target))
        else:
            deps.add(top)
    edges[own] = deps - {own}

# cycles between files (strongly connected components)
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], itertools.count()
def strong(v):
    index[v] = low[v] = next(counter); stack.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in edges:
            continue
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(sorted(comp))
sys.setrecursionlimit(10000)
for v in list(edges):
    if v not in index:
        strong(v)
for c in sccs:
    problems.append("import cycle: " + " ↔ ".join(c))
for p in problems:
    print(p)
print(f"{len(edges)} modules, {len(problems)} problem(s)")
sys.exit(1 if problems else 0)
