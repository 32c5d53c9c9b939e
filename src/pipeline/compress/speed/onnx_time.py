"""Times ONNX models side by side over token-id batches for `surgery compress --runtime
onnx|onnx-int8`.

argv: BATCHES.json THREADS ROUNDS MIN_SECONDS MODEL.onnx... BATCHES.json holds {"pad": id,
"batches": [[ids of each sentence] per batch]}, batched as `surgery eval` batches. One warm-up
pass of each model, then rounds of one pass of each model in turn, at least ROUNDS of them and
until MIN_SECONDS have passed; prints each model's tokens/s over its median pass as one JSON
line. Alternating the models makes a machine whose speed drifts slow them all alike.
"""
import json
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

batches_file, threads, rounds, min_seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
models = sys.argv[5:]
with open(batches_file) as f:
    spec = json.load(f)
options = ort.SessionOptions()
options.intra_op_num_threads = threads
options.inter_op_num_threads = 1
sessions = [ort.InferenceSession(m, options, providers=["CPUExecutionProvider"]) for m in models]
inputs, tokens = [], 0
for batch in spec["batches"]:
    length = max(len(row) for row in batch)
    ids = np.full((len(batch), length), spec["pad"], dtype=np.int64)
    mask = np.zeros((len(batch), length), dtype=np.int64)
    for r, row in enumerate(batch):
        ids[r, : len(row)] = row
        mask[r, : len(row)] = 1
        tokens += len(row)
    inputs.append((ids, mask))


def feeds(sess):
    names = {i.name for i in sess.get_inputs()}
    out = []
    for ids, mask in inputs:
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(ids)
        out.append(feed)
    return out


all_feeds = [feeds(s) for s in sessions]


def one_pass(i):
    start = time.perf_counter()
    for feed in all_feeds[i]:
        sessions[i].run(None, feed)
    return time.perf_counter() - start


for i in range(len(sessions)):
    one_pass(i)
seconds = [[] for _ in sessions]
began = time.perf_counter()
while len(seconds[0]) < rounds or time.perf_counter() - began < min_seconds:
    for i in range(len(sessions)):
        seconds[i].append(one_pass(i))
print(json.dumps({"tokens": tokens, "rounds": len(seconds[0]),
                  "tokens_per_second": [tokens / statistics.median(s) for s in seconds]}))
