"""Loads checkpoints the toolkit wrote with transformers and reports what the Rust tests compare
(tests/transformers.rs runs it; it needs `pip install torch transformers`).

    python3 transformers_check.py available
        exits 0 when torch and transformers import.
    python3 transformers_check.py logits MANIFEST.json
        MANIFEST is a list of {"name", "dir", "forward", "head", "remote", "resave"}: each
        checkpoint folder is loaded with AutoModelForTokenClassification (head) or AutoModel
        (trust_remote_code=True) and run on the input_ids / attention_mask of its `surgery forward`
        output (the `forward` file); prints one JSON line per entry with the largest absolute
        difference of the logits (or last hidden state) over real tokens, whether the folder
        carries the modeling code and an auto_map (compared with `remote`), and, when `resave` is
        a path, writes the loaded model and its tokenizer there with `save_pretrained`.
    python3 transformers_check.py pipeline DIR TEXT
        runs pipeline("token-classification", aggregation_strategy="first") on each line of TEXT;
        prints one JSON line per line of text: {"comparable", "entities"}, the entities as
        {type, start, end, text}, and whether the pipeline's words are the toolkit's on it
        (see `comparable`).
"""
import json
import os
import sys
import warnings


def quiet():
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def carries_code(folder):
    files = all(os.path.isfile(os.path.join(folder, f)) for f in ("configuration_surgery.py", "modeling_surgery.py"))
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        auto_map = json.load(f).get("auto_map")
    return files and auto_map is not None


def logits(manifest_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForTokenClassification, AutoTokenizer

    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    for entry in manifest:
        folder = entry["dir"]
        cls = AutoModelForTokenClassification if entry["head"] else AutoModel
        model = cls.from_pretrained(folder, trust_remote_code=True).eval()
        ours = load_file(entry["forward"])
        ids = ours["input_ids"].long()
        mask = ours["attention_mask"].long()
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask)
        theirs = out.logits if entry["head"] else out.last_hidden_state
        expected = ours["logits"] if entry["head"] else ours["last_hidden_state"]
        real = mask.bool()
        diff = (theirs[real] - expected[real]).abs().max().item()
        if entry.get("resave"):
            model.save_pretrained(entry["resave"])
            AutoTokenizer.from_pretrained(folder).save_pretrained(entry["resave"])
        print(
            json.dumps(
                {
                    "name": entry["name"],
                    "max_diff": diff,
                    "remote": carries_code(folder),
                    "class": type(model).__name__,
                    "tokens": int(real.sum().item()),
                }
            ),
            flush=True,
        )


def is_cjk(c):
    """The CJK ideograph blocks BERT's `tokenize_chinese_chars` splits on."""
    cp = ord(c)
    return any(
        lo <= cp <= hi
        for lo, hi in (
            (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
            (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
        )
    )


def comparable(tokenizer, line):
    """Whether the pipeline's words are the toolkit's on this line. The pipeline groups tokens into
    words by their offsets: with a word-piece prefix (WordPiece) as the tokenizer's pre-tokenizer
    splits, which `surgery predict` does too; otherwise (byte-level BPE, Unigram) at spaces only,
    so a word with punctuation inside splits differently, and a token that is only the space
    marker (`Ġ`, `▁` on their own) becomes a word of its own. BERT's pre-tokenizer also makes
    each CJK ideograph a word, where `surgery predict` keeps a run of them as one."""
    if any(is_cjk(c) for c in line):
        return False
    encoding = tokenizer(line, return_offsets_mapping=True, add_special_tokens=False)
    pieces = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
    if any(p in ("\u2581", "\u0120") for p in pieces):
        return False
    if any(not line[s:e].strip() for s, e in encoding["offset_mapping"]):
        return False
    if getattr(tokenizer.backend_tokenizer.model, "continuing_subword_prefix", None):
        return True
    return all(len(chunk) == 1 or chunk.isalnum() for chunk in line.split())


def trimmed(line, entity):
    """An entity as {type, start, end, text}, its span without the spaces that some tokenizers'
    offsets include (a Unigram piece `▁Word` may start at the space before the word)."""
    start, end = int(entity["start"]), int(entity["end"])
    while start < end and line[start].isspace():
        start += 1
    while end > start and line[end - 1].isspace():
        end -= 1
    return {"type": entity["entity_group"], "start": start, "end": end, "text": line[start:end]}


def run_pipeline(folder, text_path):
    from transformers import pipeline

    tagger = pipeline("token-classification", model=folder, trust_remote_code=True, aggregation_strategy="first")
    with open(text_path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    for line in lines:
        entities = tagger(line) if line.strip() else []
        print(
            json.dumps(
                {
                    "comparable": comparable(tagger.tokenizer, line),
                    "entities": [trimmed(line, e) for e in entities],
                }
            ),
            flush=True,
        )


def main():
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "available":
        import torch  # noqa: F401
        import transformers  # noqa: F401

        return
    quiet()
    if command == "logits":
        logits(sys.argv[2])
    elif command == "pipeline":
        run_pipeline(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
