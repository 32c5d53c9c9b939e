"""The usual Hugging Face transformers + PyTorch loop, for side-by-side measurements on this CPU.

Run by a developer (not CI) after `pip install torch transformers seqeval`:

  # forward throughput (eval mode) on the same sentences and batches `surgery eval` uses
  python3 tools/checks/hf_reference.py forward --model M --data test.txt --batch-size 32

  # fine-tuning like `surgery train finetune` (same model, data, batch size, lr, epochs, schedule,
  # first-sub-token labels); --batching random is the usual loop, bucketed mirrors ours
  python3 tools/checks/hf_reference.py train --model M --train train.txt --dev valid.txt --test test.txt \
      --batching random --epochs 3 --lr 1e-4 --batch-size 32 [--max-steps N]

Both use 2 threads and print one JSON line with the figures (real, non-pad tokens per second).
"""
import argparse
import json
import math
import random
import time

import torch
from seqeval.metrics import f1_score
from transformers import (AutoModelForTokenClassification, PreTrainedTokenizerFast,
                          get_linear_schedule_with_warmup)


def read_conll(path):
    sentences, words, tags = [], [], []
    for line in open(path, encoding="utf-8"):
        cols = line.split()
        if not cols or cols[0] == "-DOCSTART-":
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        words.append(cols[0])
        tags.append(cols[-1])
    if words:
        sentences.append((words, tags))
    return sentences


def label_list(train):
    seen = sorted({t for _, tags in train for t in tags if t != "O"},
                  key=lambda t: (t.split("-", 1)[-1], t[0] != "B", t))
    return ["O"] + seen


def encode(tokenizer, sentences, label_ids, max_len):
    """First sub-token of each word carries its label; windows longer than max_len are cut here
    (CoNLL has none at 128 with these tokenizers)."""
    examples = []
    for words, tags in sentences:
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_len)
        labels, prev = [], None
        for w in enc.word_ids():
            labels.append(-100 if w is None or w == prev else label_ids.get(tags[w], 0))
            prev = w
        examples.append((enc["input_ids"], labels, enc.word_ids()))
    return examples


def batches(examples, batch_size, batching, rng):
    order = list(range(len(examples)))
    rng.shuffle(order)
    if batching == "bucketed":
        order.sort(key=lambda i: len(examples[i][0]))
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        rng.shuffle(chunks)
        return chunks
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def collate(examples, idx, pad_id):
    length = max(len(examples[i][0]) for i in idx)
    ids = torch.full((len(idx), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), length), dtype=torch.long)
    labels = torch.full((len(idx), length), -100, dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(examples[i][0])
        ids[row, :n] = torch.tensor(examples[i][0])
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(examples[i][1])
    return ids, mask, labels


def load_tokenizer(model):
    return PreTrainedTokenizerFast(tokenizer_file=f"{model}/tokenizer.json", pad_token="[PAD]",
                                   unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")


DEVICE = "cpu"
# bf16 autocast (oneDNN, AMX where the CPU has it) when --autocast bf16; f32 otherwise.
AUTOCAST = None


def autocast():
    import contextlib
    if AUTOCAST is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda" if DEVICE.startswith("cuda") else "cpu", dtype=AUTOCAST)


def sync():
    """Waits for the GPU's queued work, so a step's time includes it (no-op on the CPU)."""
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def evaluate(model, tokenizer, sentences, labels, batch_size, max_len):
    label_ids = {l: i for i, l in enumerate(labels)}
    examples = encode(tokenizer, sentences, label_ids, max_len)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    preds = [None] * len(examples)
    model.eval()
    tokens, start = 0, time.perf_counter()
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            ids, mask, _ = collate(examples, idx, tokenizer.pad_token_id)
            ids, mask = ids.to(DEVICE), mask.to(DEVICE)
            with autocast():
                logits = model(input_ids=ids, attention_mask=mask).logits.argmax(-1).cpu()
            tokens += int(mask.sum())
            for row, i in enumerate(idx):
                words, prev, out = examples[i][2], None, []
                for pos, w in enumerate(words):
                    if w is not None and w != prev:
                        out.append(labels[int(logits[row, pos])])
                    prev = w
                preds[i] = out
    seconds = time.perf_counter() - start
    gold = [tags[:len(p)] for (_, tags), p in zip(sentences, preds)]
    batches = math.ceil(len(order) / batch_size)
    return f1_score(gold, preds), tokens / seconds, 1000 * seconds / batches


def cmd_forward(args):
    model = AutoModelForTokenClassification.from_pretrained(args.model, num_labels=9)
    tokenizer = load_tokenizer(args.model)
    sentences = read_conll(args.data)
    # A fine-tuned checkpoint names its labels (then the F1 is real); a bare one gets placeholders.
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if not all("-" in l or l == "O" for l in labels):
        labels = ["O"] + [f"{p}-X{i}" for i in range(4) for p in "BI"]
    f1, tps, ms = evaluate(model, tokenizer, sentences, labels, args.batch_size, args.max_len)
    print(json.dumps({"what": "hf-forward", "autocast": str(AUTOCAST), "sentences": len(sentences), "batch_size": args.batch_size,
                      "tokens_per_s": tps, "ms_per_batch": ms, "f1": f1,
                      "threads": torch.get_num_threads()}))


def cmd_train(args):
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    train, dev = read_conll(args.train), read_conll(args.dev)
    labels = label_list(train)
    label_ids = {l: i for i, l in enumerate(labels)}
    tokenizer = load_tokenizer(args.model)
    model = AutoModelForTokenClassification.from_pretrained(
        args.model, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_ids)
    model = model.float().to(DEVICE)
    examples = encode(tokenizer, train, label_ids, args.max_len)
    steps_per_epoch = math.ceil(len(examples) / args.batch_size)
    total = steps_per_epoch * args.epochs
    if args.max_steps:
        total = min(total, args.max_steps)
    no_decay = ["bias", "LayerNorm.weight"]
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
         "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
         "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    schedule = get_linear_schedule_with_warmup(optimizer, round(0.1 * total), total)
    step, tokens, padded, train_seconds = 0, 0, 0, 0.0
    best_dev, log = -1.0, []
    for epoch in range(args.epochs):
        model.train()
        for idx in batches(examples, args.batch_size, args.batching, rng):
            ids, mask, lab = collate(examples, idx, tokenizer.pad_token_id)
            ids, mask, lab = ids.to(DEVICE), mask.to(DEVICE), lab.to(DEVICE)
            sync()
            start = time.perf_counter()
            with autocast():
                loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            sync()
            train_seconds += time.perf_counter() - start
            tokens += int(mask.sum())
            padded += mask.numel()
            step += 1
            if step % 50 == 0:
                print(f"step {step}/{total} loss {loss.item():.4f} {tokens / train_seconds:.0f} tok/s",
                      flush=True)
            if step >= total:
                break
        if args.max_steps and step >= total:
            break
        dev_f1, _, _ = evaluate(model, tokenizer, dev, labels, 64, args.max_len)
        log.append({"epoch": epoch + 1, "dev_f1": dev_f1})
        print(f"epoch {epoch + 1}: dev F1 {dev_f1:.4f}", flush=True)
        if dev_f1 > best_dev and args.test:
            best_dev = dev_f1
            best_test, _, _ = evaluate(model, tokenizer, read_conll(args.test), labels, 64, args.max_len)
    if DEVICE.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = 0
    result = {"what": "hf-train", "peak_allocated_mib": peak, "autocast": str(AUTOCAST), "batching": args.batching, "steps": step, "device": DEVICE,
              "train_tokens_per_s": tokens / train_seconds, "padding_ratio": 1 - tokens / padded,
              "threads": torch.get_num_threads(), "epochs": log}
    if args.test and log:
        result["best_dev_f1"] = best_dev
        result["test_f1_at_best_dev"] = best_test
    print(json.dumps(result))


def main():
    global DEVICE, AUTOCAST
    torch.set_num_threads(2)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("forward")
    f.add_argument("--model", required=True)
    f.add_argument("--data", required=True)
    f.add_argument("--batch-size", type=int, default=32)
    f.add_argument("--max-len", type=int, default=128)
    t = sub.add_parser("train")
    t.add_argument("--model", required=True)
    t.add_argument("--train", required=True)
    t.add_argument("--dev", required=True)
    t.add_argument("--test")
    t.add_argument("--batching", choices=["random", "bucketed"], default="random")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--weight-decay", type=float, default=0.01)
    t.add_argument("--max-len", type=int, default=128)
    t.add_argument("--max-steps", type=int, default=0)
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--tf32", type=int, choices=[0, 1], default=0,
                   help="1: f32 products on TF32 tensor cores (cuda)")
    for p in (f, t):
        p.add_argument("--autocast", choices=["none", "bf16"], default="none")
    args = parser.parse_args()
    if args.autocast == "bf16":
        AUTOCAST = torch.bfloat16
    if getattr(args, "device", "cpu") != "cpu":
        DEVICE = args.device
        tf32 = bool(getattr(args, "tf32", 0))
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    cmd_forward(args) if args.cmd == "forward" else cmd_train(args)


if __name__ == "__main__":
    main()
