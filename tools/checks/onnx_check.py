#!/usr/bin/env python3
"""Runs a `surgery export` folder in ONNX Runtime and checks it against surgery's own runtime.

Needs: pip install onnxruntime numpy tokenizers (onnx too, for the checker).

  # logits parity on the ids `surgery forward` wrote (what the CI test runs on tiny models)
  python3 tools/checks/onnx_check.py logits EXPORT_DIR FORWARD.safetensors [--tol 1e-4]

  # word predictions, F1 and speed on labelled data: the words, gold tags and surgery's own
  # predictions come from `surgery eval CKPT --data test.txt --write-predictions P.txt`
  python3 tools/checks/onnx_check.py eval EXPORT_DIR --predictions P.txt [--batch-size 32] [--threads 2]

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
    # Real tokens only: nobody reads the outputs at padding positions (reported apart).
    real = tensors["attention_mask"].astype(bool)
    diff = np.abs(out - reference)
    agree = float(np.mean(out.argmax(-1)[real] == reference.argmax(-1)[real]))
    print(json.dumps({"what": "onnx-logits", "export": args.export, "checker": check_model(args.export),
                      "max_abs_diff": float(diff[real].max()),
                      "max_abs_diff_padding": float(diff[~real].max()) if (~real).any() else 0.0,
                      "argmax_agreement": agree, "shape": list(out.shape)}))
    diff = float(diff[real].max())
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


def windows(encoding, words, max_len, unk):
    """The model inputs of one sentence as `surgery eval` makes them (src/data/align.rs): the
    words' pieces between the leading and trailing special tokens, split greedily into windows of
    at most max_len tokens; a word without pieces becomes [UNK]. Yields (ids, [(position, word)])."""
    pieces, prefix, suffix = [[] for _ in range(words)], [], []
    for pos, (tid, w) in enumerate(zip(encoding.ids, encoding.word_ids)):
        if w is not None:
            pieces[w].append(tid)
        elif pos == 0 or all(not p for p in pieces):
            prefix.append(tid)
        else:
            suffix.append(tid)
    room = max(max_len - len(prefix) - len(suffix), 1)
    start = 0
    while start < words:
        end, used = start, 0
        while end < words:
            n = max(len(pieces[end]), 1)
            if used + n > room and end > start:
                break
            used += min(n, room)
            end += 1
        ids, starts = list(prefix), []
        for w in range(start, end):
            starts.append((len(ids), w))
            ids.extend(pieces[w][:room] if pieces[w] else [unk])
        yield ids + suffix, starts
        start = end


def cmd_eval(args):
    from tokenizers import Tokenizer

    export = pathlib.Path(args.export)
    labels = json.loads((export / "labels.json").read_text())["labels"]
    tokenizer = Tokenizer.from_file(str(export / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    pad = tokenizer.token_to_id("[PAD]") or 0
    sentences = read_predictions(args.predictions)
    unk = tokenizer.token_to_id("[UNK]") or pad
    examples = []  # (sentence, ids, word starts)
    for i, s in enumerate(sentences):
        encoding = tokenizer.encode([w for w, _, _ in s], is_pretokenized=True)
        examples.extend((i, ids, starts) for ids, starts in windows(encoding, len(s), args.max_len, unk))
    sess = session(export, args.threads)
    # Length-sorted batches, as `surgery eval` makes them.
    order = sorted(range(len(examples)), key=lambda k: len(examples[k][1]))
    predicted = [[labels[0]] * len(s) for s in sentences]
    tokens, batch_seconds = 0, []
    for start in range(0, len(order), args.batch_size):
        batch = [examples[k] for k in order[start:start + args.batch_size]]
        length = max(len(ids) for _, ids, _ in batch)
        ids = np.full((len(batch), length), pad, dtype=np.int64)
        mask = np.zeros((len(batch), length), dtype=np.int64)
        for row, (_, row_ids, _) in enumerate(batch):
            ids[row, :len(row_ids)] = row_ids
            mask[row, :len(row_ids)] = 1
        t0 = time.perf_counter()
        logits = sess.run(None, feeds(sess, ids, mask))[0]
        batch_seconds.append(time.perf_counter() - t0)
        tokens += int(mask.sum())
        for row, (i, _, starts) in enumerate(batch):
            for pos, w in starts:
                predicted[i][w] = labels[int(logits[row, pos].argmax())]
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
    ev.add_argument("--max-len", type=int, default=128, help="as `surgery eval --max-len`")
    ev.add_argument("--f1-tol", type=float, default=0.0)
    ev.add_argument("--surgery", default="target/release/surgery")
    args = parser.parse_args()
    sys.exit(cmd_logits(args) if args.command == "logits" else cmd_eval(args))


if __name__ == "__main__":
    main()
