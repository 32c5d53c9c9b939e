"""Writes the Hugging Face reference outputs the Rust parity tests compare against.

Run by a developer (not CI) after `pip install torch transformers tokenizers safetensors`:
    python3 tools/make_parity_fixtures.py [--minilm ../shared/models/minilm-l6-h384-uncased]

Outputs (committed, small):
  fixtures/tiny-bert-tc/            a tiny BertForTokenClassification (bert.-prefixed names, cased
                                    word-piece vocabulary, 5 labels), random weights, seed 0
  fixtures/parity/tiny.safetensors  HF outputs of it on fixtures/parity/sentences.txt
  fixtures/parity/minilm.safetensors HF outputs of the MiniLM BertModel on the same sentences
"""
import argparse
import os

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, decoders
from transformers import BertConfig, BertForTokenClassification, BertModel, PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = os.path.join(ROOT, "fixtures", "parity", "sentences.txt")
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def read_sentences():
    with open(SENTENCES, encoding="utf-8") as f:
        return [line.rstrip("\n").split(" ") for line in f if line.strip()]


def tiny_vocab(sentences):
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for s in sentences for w in s if len(w) <= 6 and w.isascii()})
    chars = sorted({c for s in sentences for w in s for c in w if c.isascii()})
    pieces = specials + chars + ["##" + c for c in chars] + ["##ing", "##ed", "##s"] + words
    seen, vocab = set(), []
    for p in pieces:
        if p not in seen:
            seen.add(p)
            vocab.append(p)
    return vocab


def build_tokenizer(vocab, lowercase):
    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    return tok


def run_hf(model, tokenizer_file, sentences, path):
    fast = PreTrainedTokenizerFast(tokenizer_file=tokenizer_file, pad_token="[PAD]",
                                   unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    enc = fast(sentences, is_split_into_words=True, padding="longest", return_tensors="pt")
    model.eval()
    with torch.no_grad():
        if isinstance(model, BertForTokenClassification):
            out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                        output_hidden_states=True)
            tensors = {"last_hidden_state": out.hidden_states[-1], "logits": out.logits}
        else:
            out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            tensors = {"last_hidden_state": out.last_hidden_state}
    tensors["input_ids"] = enc["input_ids"].to(torch.int64)
    tensors["attention_mask"] = enc["attention_mask"].to(torch.int64)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    print(f"wrote {path}: {tuple(tensors['last_hidden_state'].shape)}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minilm", default=os.path.join(ROOT, "..", "shared", "models",
                                                         "minilm-l6-h384-uncased"))
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    sentences = read_sentences()

    tiny_dir = os.path.join(ROOT, "fixtures", "tiny-bert-tc")
    os.makedirs(tiny_dir, exist_ok=True)
    vocab = tiny_vocab(sentences)
    build_tokenizer(vocab, lowercase=False).save(os.path.join(tiny_dir, "tokenizer.json"))
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=128,
                        id2label=dict(enumerate(LABELS)),
                        label2id={l: i for i, l in enumerate(LABELS)})
    model = BertForTokenClassification(config)
    # Non-trivial LayerNorm parameters so the test sees them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tiny_dir, safe_serialization=True)
    run_hf(model, os.path.join(tiny_dir, "tokenizer.json"), sentences,
           os.path.join(ROOT, "fixtures", "parity", "tiny.safetensors"))

    if os.path.isdir(args.minilm):
        minilm = BertModel.from_pretrained(args.minilm)
        run_hf(minilm, os.path.join(args.minilm, "tokenizer.json"), sentences,
               os.path.join(ROOT, "fixtures", "parity", "minilm.safetensors"))
    else:
        print(f"skipped MiniLM: {args.minilm} not found")


if __name__ == "__main__":
    main()
