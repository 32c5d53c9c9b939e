#!/usr/bin/env python3
"""Two ONNX exports timed side by side in one process: the same length-sorted batches (batch 32,
as `surgery eval` makes them), one pass of A then one pass of B, ROUNDS times, after one warm-up
pass each; prints every pass and the speed-up of B over A (fastest passes and medians).

  python3 experiments/compress-minilm/onnx-int8/side_by_side.py TEACHER_EXPORT MODEL_EXPORT \
      PREDICTIONS.txt [ROUNDS] [THREADS]

PREDICTIONS.txt is `surgery eval … --write-predictions` output (the words of the timed file).
"""
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools" / "checks"))
from onnx_check import feeds, read_predictions, session, windows  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

a_dir, b_dir, predictions = sys.argv[1:4]
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 10
threads = int(sys.argv[5]) if len(sys.argv) > 5 else 2

tokenizer = Tokenizer.from_file(str(Path(a_dir) / "tokenizer.json"))
tokenizer.no_padding()
tokenizer.no_truncation()
pad = tokenizer.token_to_id("[PAD]") or 0
unk = tokenizer.token_to_id("[UNK]") or pad
rows = []
for s in read_predictions(predictions):
    encoding = tokenizer.encode([w for w, _, _ in s], is_pretokenized=True)
    rows.extend(ids for ids, _ in windows(encoding, len(s), 128, unk))
rows.sort(key=len)
batches, tokens = [], 0
for start in range(0, len(rows), 32):
    batch = rows[start:start + 32]
    ids = np.full((len(batch), max(map(len, batch))), pad, dtype=np.int64)
    mask = np.zeros_like(ids)
    for r, row in enumerate(batch):
        ids[r, :len(row)], mask[r, :len(row)] = row, 1
    batches.append((ids, mask))
    tokens += int(mask.sum())

sessions = {"teacher": session(a_dir, threads), "model": session(b_dir, threads)}
inputs = {k: [feeds(s, ids, mask) for ids, mask in batches] for k, s in sessions.items()}


def one_pass(name):
    start = time.perf_counter()
    for feed in inputs[name]:
        sessions[name].run(None, feed)
    return time.perf_counter() - start


for name in sessions:
    one_pass(name)
seconds = {name: [] for name in sessions}
for r in range(rounds):
    for name in sessions:
        seconds[name].append(one_pass(name))
        print(json.dumps({"round": r + 1, "model": name, "seconds": seconds[name][-1],
                          "tokens_per_s": tokens / seconds[name][-1]}))
per_round = [t / m for t, m in zip(seconds["teacher"], seconds["model"])]
print(json.dumps({
    "tokens": tokens, "rounds": rounds, "threads": threads,
    "teacher_tokens_per_s_best": tokens / min(seconds["teacher"]),
    "model_tokens_per_s_best": tokens / min(seconds["model"]),
    "speedup_best": min(seconds["teacher"]) / min(seconds["model"]),
    "speedup_median": statistics.median(seconds["teacher"]) / statistics.median(seconds["model"]),
    "speedup_per_round_min": min(per_round), "speedup_per_round_max": max(per_round),
}))
