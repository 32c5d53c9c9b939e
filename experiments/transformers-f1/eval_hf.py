"""Test F1 of a checkpoint the toolkit wrote, loaded in transformers (trust_remote_code=True),
against `surgery eval` on the same file. Words are fed pre-split, the prediction of a word is the
argmax at its first sub-token (as `surgery eval`), scored with seqeval.

    python3 eval_hf.py CHECKPOINT CONLL_FILE
prints one JSON line: {"checkpoint", "f1", "sentences", "remote_code"}.
"""
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from seqeval.metrics import f1_score
from transformers import AutoModelForTokenClassification, AutoTokenizer


def read_conll(path):
    sentences, words, tags = [], [], []
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line or line.startswith("-DOCSTART-"):
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        parts = line.split()
        words.append(parts[0])
        tags.append(parts[-1])
    if words:
        sentences.append((words, tags))
    return sentences


def main():
    folder, data = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForTokenClassification.from_pretrained(folder, trust_remote_code=True).eval()
    id2label = model.config.id2label
    gold, predicted = [], []
    for words, tags in read_conll(data):
        enc = tokenizer(words, is_split_into_words=True, return_tensors="pt", truncation=False)
        with torch.no_grad():
            logits = model(**enc).logits[0]
        labels = logits.argmax(-1).tolist()
        seen, row = set(), ["O"] * len(words)
        for pos, w in enumerate(enc.word_ids()):
            if w is not None and w not in seen:
                seen.add(w)
                row[w] = id2label[labels[pos]]
        gold.append(tags)
        predicted.append(row)
    remote = os.path.isfile(os.path.join(folder, "modeling_surgery.py"))
    print(json.dumps({"checkpoint": folder, "f1": f1_score(gold, predicted), "sentences": len(gold), "remote_code": remote}))


main()
