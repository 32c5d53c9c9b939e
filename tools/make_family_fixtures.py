"""Writes tiny random token-classification checkpoints of every non-BERT family the toolkit reads,
each with a tokenizer of its own kind, plus transformers' reference outputs for the Rust tests.

Run by a developer (not CI), offline, after `pip install torch transformers tokenizers safetensors`:
    python3 tools/make_family_fixtures.py

Outputs (committed, well under 1 MB each), for NAME in roberta, xlm-roberta, camembert,
distilbert, electra:
  fixtures/families/NAME/            config.json, model.safetensors, tokenizer.json (+ the
                                     tokenizer_config.json transformers writes); random weights
  fixtures/families/NAME.reference.safetensors
                                     input_ids, attention_mask, word_ids (-1 for special tokens)
                                     and logits of transformers on fixtures/parity/sentences.txt
                                     (is_split_into_words=True, padding="longest", eval mode)
  fixtures/families/counts.json      model.num_parameters() of each checkpoint

Tokenizers are trained with `tokenizers`' trainers on the sentences plus a short text below:
byte-level BPE with a prefix space (roberta), SentencePiece-style Unigram (xlm-roberta,
camembert), WordPiece (distilbert uncased, electra cased).
"""
import json
import os

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer, PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = os.path.join(ROOT, "fixtures", "parity", "sentences.txt")
OUT = os.path.join(ROOT, "fixtures", "families")
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
TEXT = """Peter Blackburn spoke in Brussels on Monday about the European Commission .
The team won the cup in London after a long season , said the coach .
Germany and France agreed on new rules for farmers and workers in the region .
Shares in the company rose sharply in New York trading on Friday morning .
She visited Tokyo , Madrid and Cairo before returning to her home in Toronto .
"""


def read_sentences():
    with open(SENTENCES, encoding="utf-8") as f:
        return [line.rstrip("\n").split(" ") for line in f if line.strip()]


def corpus(sentences):
    lines = [" ".join(s) for s in sentences] + TEXT.strip().split("\n")
    return lines * 3


def byte_level_bpe(lines):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0),
                                                      add_prefix_space=True, trim_offsets=True)
    return tok, dict(bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                     pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")


def unigram(lines):
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.UnigramTrainer(vocab_size=240, special_tokens=specials, unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(lines, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok, dict(bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                     pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")


def wordpiece(lines, lowercase):
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=240, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(lines, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok, dict(cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]",
                     mask_token="[MASK]")


def config_for(model_type, vocab_size, pad):
    common = dict(vocab_size=vocab_size, id2label=dict(enumerate(LABELS)),
                  label2id={l: i for i, l in enumerate(LABELS)}, pad_token_id=pad)
    if model_type == "distilbert":
        return AutoConfig.for_model(model_type, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                    max_position_embeddings=128, **common)
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    if model_type == "electra":
        return AutoConfig.for_model(model_type, embedding_size=16, max_position_embeddings=128,
                                    **sizes, **common)
    # RoBERTa-style: positions start after the padding index, one token type.
    return AutoConfig.for_model(model_type, max_position_embeddings=130, type_vocab_size=1,
                                layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2,
                                **sizes, **common)


def make(name, model_type, tokenizer_and_specials, sentences):
    tok, specials = tokenizer_and_specials
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    fast.save_pretrained(folder)
    pad = tok.token_to_id(specials["pad_token"])
    config = config_for(model_type, tok.get_vocab_size(), pad)
    model = AutoModelForTokenClassification.from_config(config)
    # Non-trivial LayerNorm parameters and biases so the tests see them.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "LayerNorm" in pname or "layer_norm" in pname:
                p.add_(0.1 * torch.randn_like(p))
            elif pname.endswith("bias"):
                p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=True)
    # What a user of transformers gets from the saved folder.
    reference = AutoTokenizer.from_pretrained(folder, add_prefix_space=True)
    enc = reference(sentences, is_split_into_words=True, padding="longest", return_tensors="pt")
    word_ids = [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(sentences))]
    model.eval()
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    tensors = {
        "input_ids": enc["input_ids"].to(torch.int64),
        "attention_mask": enc["attention_mask"].to(torch.int64),
        "word_ids": torch.tensor(word_ids, dtype=torch.int64),
        "logits": out.logits,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(OUT, f"{name}.reference.safetensors"))
    print(f"{name}: {type(model).__name__}, {model.num_parameters()} parameters, "
          f"ids {tuple(enc['input_ids'].shape)}, tokenizer {type(reference).__name__}")
    return model.num_parameters()


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    sentences = read_sentences()
    lines = corpus(sentences)
    counts = {
        "roberta": make("roberta", "roberta", byte_level_bpe(lines), sentences),
        "xlm-roberta": make("xlm-roberta", "xlm-roberta", unigram(lines), sentences),
        "camembert": make("camembert", "camembert", unigram(lines), sentences),
        "distilbert": make("distilbert", "distilbert", wordpiece(lines, True), sentences),
        "electra": make("electra", "electra", wordpiece(lines, False), sentences),
    }
    with open(os.path.join(OUT, "counts.json"), "w") as f:
        json.dump(counts, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
