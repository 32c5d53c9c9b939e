#!/usr/bin/env python3
"""Runs a `surgery export` folder in ONNX Runtime and checks it against surgery's own runtime.

Needs: pip install onnxruntime numpy tokenizers (onnx too, for the checker).

  # logits parity on the ids `surgery forward` wrote (what the CI test runs on tiny models)
  python3 tools/onnx_check.py logits EXPORT_DIR FORWARD.safetensors [--tol 1e-4]

  # word predictions, F1 and speed on labelled data: the words, gold tags and surgery's own
  # predictions come from `surgery eval CKPT --data test.txt --write-predictions P.txt`
  python3 tools/onnx_check.py eval EXPORT_DIR --predictions P.txt [--batch-size 32] [--threads 2]

Both print one JSON line; `logits` exits 1 when the largest difference exceeds --tol, `eval` when
ONNX Runtime's F1 differs from surgery's by more than --f1-tol (default 0: identical).
"""
import argparse
import json
import os
import pathlib
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

DTYPES = {"F32": np.float32, "I64": np.int64, "F16": np.float16}


def read_safetensors(path):
    """The tensors of a safetensors file (no dependency on the safetensors package)."""
    data = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[8 + n + start:8 + n + end]
        out[name] = np.frombuffer(raw, dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def session(export_dir, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(pathlib.Path(export_dir) / "model.onnx"), options,
                                providers=["CPUExecutionProvider"])


def feeds(sess, ids, mask):
    names = {i.name for i in sess.get_inputs()}
    feed = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
    if "token_type_ids" in names:
        feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
    return feed


def check_model(export_dir):
    """The official checker, with shape inference, when the onnx package is installed."""
    try:
        import onnx
    except ImportError:
        return "onnx package not installed"
    onnx.checker.check_model(str(pathlib.Path(export_dir) / "model.onnx"), full_check=True)
    return "ok"


def cmd_logits(args):
    tensors = read_safetensors(args.forward)
    sess = session(args.export, args.threads)
    out = sess.run(None, feeds(sess, tensors["input_ids"], tensors["attention_mask"]))[0]
    reference = tensors["logits"] if "logits" in tensors else tensors["last_hidden_state"]
    diff = float(np.max(np.abs(out - reference)))
    real = tensors["attention_mask"].astype(bool)
    agree = float(np.mean(out.argmax(-1)[real] == reference.argmax(-1)[real]))
    print(json.dumps({"what": "onnx-logits", "export": args.export, "checker": check_model(args.export),
                      "max_abs_diff": diff, "argmax_agreement": agree, "shape": list(out.shape)}))
    return 0 if diff <= args.tol else 1


def read_predictions(path):
    """Sentences of (word, gold, predicted) from an `eval --write-predictions` file."""
    sentences, current = [], []
    for line in open(path, encoding="utf-8"):
        cols = line.split()
        if not cols:
            if current:
                sentences.append(current)
            current = []
            continue
        current.append((cols[0], cols[1], cols[2]))
    if current:
        sentences.append(current)
    return sentences


def cmd_eval(args):
    from tokenizers import Tokenizer

    export = pathlib.Path(args.export)
    labels = json.loads((export / "labels.json").read_text())["labels"]
    tokenizer = Tokenizer.from_file(str(export / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    pad = tokenizer.token_to_id("[PAD]") or 0
    sentences = read_predictions(args.predictions)
    encoded = [tokenizer.encode([w for w, _, _ in s], is_pretokenized=True) for s in sentences]
    sess = session(export, args.threads)
    # Length-sorted batches, as `surgery eval` makes them.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
    predicted = [[labels[0]] * len(s) for s in sentences]
    tokens, batch_seconds = 0, []
    for start in range(0, len(order), args.batch_size):
        idx = order[start:start + args.batch_size]
        length = max(len(encoded[i].ids) for i in idx)
        ids = np.full((len(idx), length), pad, dtype=np.int64)
        mask = np.zeros((len(idx), length), dtype=np.int64)
        for row, i in enumerate(idx):
            n = len(encoded[i].ids)
            ids[row, :n] = encoded[i].ids
            mask[row, :n] = 1
        t0 = time.perf_counter()
        logits = sess.run(None, feeds(sess, ids, mask))[0]
        batch_seconds.append(time.perf_counter() - t0)
        tokens += int(mask.sum())
        for row, i in enumerate(idx):
            prev = None
            for pos, w in enumerate(encoded[i].word_ids):
                if w is not None and w != prev:
                    predicted[i][w] = labels[int(logits[row, pos].argmax())]
                prev = w
    seconds = sum(batch_seconds)
    words = sum(len(s) for s in sentences)
    differ = sum(p != s[k][2] for p_row, s in zip(predicted, sentences) for k, p in enumerate(p_row))
    f1_onnx = score(args.surgery, sentences, predicted)
    f1_surgery = score(args.surgery, sentences, [[p for _, _, p in s] for s in sentences])
    result = {"what": "onnx-eval", "export": args.export, "batch_size": args.batch_size,
              "threads": args.threads, "sentences": len(sentences), "tokens": tokens,
              "tokens_per_s": tokens / seconds, "ms_per_batch": 1000 * seconds / len(batch_seconds),
              "f1": f1_onnx, "f1_surgery": f1_surgery, "words": words,
              "words_predicted_differently": differ,
              "file_mb": (export / "model.onnx").stat().st_size / 1e6}
    print(json.dumps(result))
    return 0 if abs(f1_onnx - f1_surgery) <= args.f1_tol else 1


def score(binary, sentences, predicted):
    """Entity F1 from `surgery score` (the same seqeval implementation `surgery eval` uses)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        for s, p in zip(sentences, predicted):
            for (word, gold, _), tag in zip(s, p):
                f.write(f"{word} {gold} {tag}\n")
            f.write("\n")
    try:
        out = subprocess.run([binary, "score", f.name, "--json"], check=True, capture_output=True,
                             text=True).stdout
    finally:
        os.unlink(f.name)
    return json.loads(out)["micro"]["f1"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    logits = sub.add_parser("logits")
    logits.add_argument("export")
    logits.add_argument("forward")
    logits.add_argument("--tol", type=float, default=1e-4)
    logits.add_argument("--threads", type=int, default=2)
    ev = sub.add_parser("eval")
    ev.add_argument("export")
    ev.add_argument("--predictions", required=True)
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--threads", type=int, default=2)
    ev.add_argument("--f1-tol", type=float, default=0.0)
    ev.add_argument("--surgery", default="target/release/surgery")
    args = parser.parse_args()
    sys.exit(cmd_logits(args) if args.command == "logits" else cmd_eval(args))


if __name__ == "__main__":
    main()
