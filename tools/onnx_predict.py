#!/usr/bin/env python3
"""Tags raw text with a `surgery export` folder in ONNX Runtime: the deployment side of
`surgery predict`. Needs only: pip install onnxruntime numpy tokenizers

  echo "John Smith works for Acme in Paris." | python3 tools/onnx_predict.py EXPORT_DIR

Reads one passage per line on stdin (or the files given with --input) and prints one JSON line per
passage with its entities (type, text, character offsets, mean word probability), as
`surgery predict` does. Words are split on whitespace and around punctuation, as BERT's basic
tokenizer does; the first word piece of each word carries its tag.
"""
import argparse
import json
import pathlib
import re
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

WORD = re.compile(r"[^\W_]+|[^\w\s]|_", re.UNICODE)


def load(export_dir, threads):
    export = pathlib.Path(export_dir)
    labels = json.loads((export / "labels.json").read_text())["labels"]
    tokenizer = Tokenizer.from_file(str(export / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(export / "model.onnx"), options, providers=["CPUExecutionProvider"])
    return labels, tokenizer, sess


def tag(line, labels, tokenizer, sess):
    spans = [(m.group(), m.start(), m.end()) for m in WORD.finditer(line)]
    if not spans:
        return {"text": line, "entities": []}
    enc = tokenizer.encode([w for w, _, _ in spans], is_pretokenized=True)
    ids = np.array([enc.ids], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "token_type_ids" in {i.name for i in sess.get_inputs()}:
        feed["token_type_ids"] = np.zeros_like(ids)
    logits = sess.run(None, feed)[0][0]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    tags, scores, prev = [labels[0]] * len(spans), [0.0] * len(spans), None
    for pos, w in enumerate(enc.word_ids):
        if w is not None and w != prev:
            tags[w], scores[w] = labels[int(probs[pos].argmax())], float(probs[pos].max())
        prev = w
    return {"text": line, "entities": entities(line, spans, tags, scores)}


def entities(line, spans, tags, scores):
    """Entity spans from IOB tags (an I- without a matching B- starts an entity, as seqeval)."""
    found, current = [], None
    for i, t in enumerate(tags + ["O"]):
        kind = t.split("-", 1)[-1] if t != "O" else None
        starts = t.startswith("B-") or (kind and (current is None or current[0] != kind))
        if current and (kind is None or starts):
            k, first, last = current
            found.append({"type": k, "text": line[spans[first][1]:spans[last][2]],
                          "start": spans[first][1], "end": spans[last][2],
                          "score": sum(scores[first:last + 1]) / (last - first + 1)})
            current = None
        if kind and current is None:
            current = (kind, i, i)
        elif kind:
            current = (kind, current[1], i)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export")
    parser.add_argument("--input", nargs="*", help="text files (default: stdin)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    labels, tokenizer, sess = load(args.export, args.threads)
    streams = [open(p, encoding="utf-8") for p in args.input] if args.input else [sys.stdin]
    for stream in streams:
        for line in stream:
            line = line.rstrip("\n")
            if line.strip():
                print(json.dumps(tag(line, labels, tokenizer, sess), ensure_ascii=False))


if __name__ == "__main__":
    main()
