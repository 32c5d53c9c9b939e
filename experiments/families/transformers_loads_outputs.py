"""Do surgery's outputs of each family load in transformers, and give the same logits?

For every fixture in fixtures/families, runs `surgery drop-layers --keep 0` (a vanilla shape with
one layer) and `surgery prune-vocab` (a smaller vocabulary and a rewritten tokenizer), loads each
output with AutoModelForTokenClassification / AutoTokenizer, and compares transformers' logits
with `surgery forward` on fixtures/parity/sentences.txt.

    python3 experiments/families/transformers_loads_outputs.py [--surgery target/release/surgery]
Needs torch, transformers, safetensors. Prints one JSON line per output.
"""
import argparse
import json
import os
import subprocess
import tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoModelForTokenClassification, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SENTENCES = os.path.join(ROOT, "fixtures", "parity", "sentences.txt")
FAMILIES = ["roberta", "xlm-roberta", "camembert", "distilbert", "electra"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--surgery", default=os.path.join(ROOT, "target", "release", "surgery"))
    args = parser.parse_args()
    with open(SENTENCES, encoding="utf-8") as f:
        sentences = [line.rstrip("\n").split(" ") for line in f if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            for s in sentences:
                f.write("".join(f"{w} O\n" for w in s) + "\n")
        for name in FAMILIES:
            source = os.path.join(ROOT, "fixtures", "families", name)
            for op, extra in [("drop-layers", ["--keep", "0"]), ("prune-vocab", ["--corpus", corpus])]:
                out = os.path.join(tmp, f"{name}-{op}")
                subprocess.run([args.surgery, op, source, out, *extra], check=True,
                               capture_output=True)
                forward = os.path.join(tmp, f"{name}-{op}.safetensors")
                subprocess.run([args.surgery, "forward", out, "--input", SENTENCES, "--out", forward],
                               check=True, capture_output=True)
                ours = load_file(forward)
                model = AutoModelForTokenClassification.from_pretrained(out).eval()
                tok = AutoTokenizer.from_pretrained(out, add_prefix_space=True)
                enc = tok(sentences, is_split_into_words=True, padding="longest",
                          return_tensors="pt")
                with torch.no_grad():
                    logits = model(input_ids=enc["input_ids"],
                                   attention_mask=enc["attention_mask"]).logits
                print(json.dumps({
                    "family": name, "op": op, "class": type(model).__name__,
                    "vocab": model.config.vocab_size,
                    "layers": model.config.num_hidden_layers,
                    "ids_equal": bool(torch.equal(enc["input_ids"], ours["input_ids"])),
                    "max_abs_diff": float((logits - ours["logits"]).abs().max()),
                }))


if __name__ == "__main__":
    main()
