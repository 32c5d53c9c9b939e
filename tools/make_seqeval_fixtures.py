"""Writes golden seqeval outputs for random and adversarial tag sequences.

Run by a developer (not CI) after `pip install seqeval`:
    python3 tools/make_seqeval_fixtures.py
Output: fixtures/seqeval/cases.json — each case has gold and predicted sentences and seqeval's
per-type and micro precision/recall/F1/support, in the default mode and in mode="strict" (IOB2).
"""
import json
import os
import random
import warnings

from seqeval.metrics import classification_report
from seqeval.scheme import IOB2

warnings.filterwarnings("ignore")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TYPES = ["PER", "LOC", "ORG", "MISC"]


def random_sentence(rng, n, prefixes):
    tags = []
    for _ in range(n):
        p = rng.choice(prefixes)
        tags.append("O" if p == "O" else f"{p}-{rng.choice(TYPES)}")
    return tags


def perturb(rng, gold, prefixes):
    """A prediction close to gold: a few tags changed (type switches, B/I flips, O)."""
    pred = list(gold)
    for i in range(len(pred)):
        if rng.random() < 0.25:
            choice = rng.random()
            if choice < 0.3:
                pred[i] = "O"
            elif choice < 0.6 and pred[i] != "O":
                pred[i] = pred[i][0] + "-" + rng.choice(TYPES)
            elif choice < 0.8 and pred[i] != "O":
                pred[i] = rng.choice([p for p in prefixes if p != "O"]) + pred[i][1:]
            else:
                pred[i] = random_sentence(rng, 1, prefixes)[0]
    return pred


def adversarial():
    """Hand-written edge cases: I- after O, type switches, B- inside, empty sentences, no entities."""
    return [
        ([["O", "I-PER", "I-PER", "O"]], [["O", "B-PER", "I-PER", "O"]]),
        ([["B-PER", "I-LOC", "I-LOC"]], [["B-PER", "I-PER", "I-LOC"]]),
        ([["B-ORG", "B-ORG", "I-ORG"]], [["B-ORG", "I-ORG", "I-ORG"]]),
        ([[], ["B-LOC"]], [[], ["B-LOC"]]),
        ([["O", "O", "O"]], [["O", "O", "O"]]),
        ([["O", "O"]], [["B-PER", "O"]]),
        ([["B-PER"]], [["O"]]),
        ([["I-MISC"], ["I-MISC"]], [["I-MISC"], ["B-MISC"]]),
        ([["B-PER", "I-PER"], ["I-PER", "O"]], [["B-PER", "I-PER"], ["I-PER", "O"]]),
        ([["B-LOC", "I-LOC", "B-LOC", "I-ORG", "I-ORG", "O", "I-LOC"]],
         [["B-LOC", "I-LOC", "I-LOC", "B-ORG", "I-ORG", "O", "B-LOC"]]),
    ]


def score(gold, pred, strict):
    kwargs = {"mode": "strict", "scheme": IOB2} if strict else {}
    report = classification_report(gold, pred, output_dict=True, zero_division=0, **kwargs)
    rows = {}
    # seqeval averages over zero types to NaN (no entities anywhere); surgery reports 0 there, so
    # NaN is written as null and not compared.
    clean = lambda v: None if v != v else v
    for name, row in report.items():
        rows[name] = {"precision": clean(row["precision"]), "recall": clean(row["recall"]),
                      "f1": clean(row["f1-score"]), "support": int(row["support"])}
    return rows


def main():
    rng = random.Random(2026)
    cases = []
    for gold, pred in adversarial():
        cases.append((gold, pred, ["B", "I", "O"]))
    for k in range(400):
        prefixes = ["B", "I", "O", "O", "O"] if k % 4 else ["B", "I", "O", "E", "S"]
        gold, pred = [], []
        for _ in range(rng.randint(1, 12)):
            n = rng.randint(0, 14)
            g = random_sentence(rng, n, prefixes)
            gold.append(g)
            pred.append(perturb(rng, g, prefixes) if rng.random() < 0.8
                        else random_sentence(rng, n, prefixes))
        cases.append((gold, pred, prefixes))
    out = []
    sentences = 0
    for gold, pred, prefixes in cases:
        if sum(len(s) for s in gold) == 0 and sum(len(s) for s in pred) == 0:
            continue
        case = {"gold": gold, "pred": pred, "default": score(gold, pred, False)}
        if set(prefixes) <= {"B", "I", "O"}:
            case["strict"] = score(gold, pred, True)
        out.append(case)
        sentences += len(gold)
    path = os.path.join(ROOT, "fixtures", "seqeval", "cases.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    print(f"wrote {path}: {len(out)} cases, {sentences} sentences")


if __name__ == "__main__":
    main()
