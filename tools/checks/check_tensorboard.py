#!/usr/bin/env python3
"""Reads a run's TensorBoard event files with TensorBoard's own reader and checks that they hold
the same scalars as its metrics.jsonl (train/loss and dev/f1 at the same steps).
Usage: python3 tools/checks/check_tensorboard.py RUN_DIR      (pip install tensorboard)"""
import json, sys, pathlib
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

run = pathlib.Path(sys.argv[1])
acc = EventAccumulator(str(run / "tensorboard"))
acc.Reload()
tags = acc.Tags()["scalars"]
lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
want = {
    "train/loss": [(l["step"], l["loss"]) for l in lines if "loss" in l],
    "dev/f1": [(l["step"], l["f1"]) for l in lines if l.get("eval") == "dev"],
}
ok = True
for tag, expected in want.items():
    got = [(e.step, e.value) for e in acc.Scalars(tag)] if tag in tags else []
    same = len(got) == len(expected) and all(
        gs == es and abs(gv - ev) <= 1e-6 * max(1.0, abs(ev)) for (gs, gv), (es, ev) in zip(got, expected))
    print(f"{tag}: {len(got)} events, {'match' if same else 'MISMATCH'} metrics.jsonl")
    ok &= same
print("scalar tags:", ", ".join(sorted(tags)))
sys.exit(0 if ok else 1)
