#!/usr/bin/env python3
"""A sweep of hostile inputs through the release binary.

Each case runs `surgery` in a fresh folder holding a copy of the tiny BERT token classifier
(fixtures/tiny-bert-tc) and a few small data files, with a time limit, and is classified:

  clear-error       exit 2 with a one-line message (what a bad input should get)
  handled           exit 0 and the result is right (what a valid but unusual input should get)
  panic             a Rust panic (exit 101)
  abort             killed by a signal (abort, segfault)
  hang              still running after the time limit
  silent-wrong      exit 0 on an input that should have been refused, or a wrong result
  refused-valid     exit 2 on an input that should have been accepted
  exit-1            an "internal error" exit on a user input
  input-modified    a file or folder given as input changed

Usage: python3 experiments/hostile-inputs/sweep.py [--binary target/release/surgery]
                                                  [--json OUT.json] [--only SUBSTRING]
"""
import argparse
import hashlib
import json
import os
import pathlib
import shutil
import signal
import struct
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = REPO / "fixtures/tiny-bert-tc"
FAMILIES = REPO / "fixtures/families"

CONLL = ("John B-PER\nlives O\nin O\nNew B-LOC\nYork I-LOC\n\n"
         "Anna B-PER\nSmith I-PER\nvisited O\nBerlin B-LOC\n")
SENTENCES = "John lives in Paris\nAnna visited Berlin\n"

CASES = []
BINARY = None


def case(name, expect, argv, setup=None, stdin=None, check=None, needle=None, timeout=60,
         inputs=("m", "d.txt", "s.txt"), env=None):
    """expect: "error" (exit 2), "ok" (exit 0, then `check(dir, result)` returns a problem or
    None), "any" (exit 0 or a clear exit 2 are both right), or "closed-pipe" (standard output
    is a pipe whose reader is gone: ending by SIGPIPE or exit 0 is right, a panic is not)."""
    CASES.append(dict(name=name, expect=expect, argv=argv, setup=setup, stdin=stdin,
                      check=check, needle=needle, timeout=timeout, inputs=inputs, env=env))


# ---------------------------------------------------------------- helpers for setups

def cfg(d, edit, model="m"):
    path = d / model / "config.json"
    value = json.loads(path.read_text())
    edit(value)
    path.write_text(json.dumps(value, indent=2))


def set_cfg(**kv):
    def setup(d):
        cfg(d, lambda v: v.update(kv))
    return setup


def raw_cfg(text):
    def setup(d):
        (d / "m/config.json").write_text(text)
    return setup


def st_split(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def st_join(path, header, body):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


def retype(name, dtype, width):
    """Declares tensor `name` with `dtype` (bytes per element `width`), keeping the file valid:
    the tensor's bytes are resized and every later offset moved."""
    def setup(d):
        path = d / "m/model.safetensors"
        header, body = st_split(path)
        items = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                       key=lambda kv: kv[1]["data_offsets"][0])
        out, new = bytearray(), {}
        for k, v in items:
            a, b = v["data_offsets"]
            chunk = body[a:b]
            if k == name:
                count = 1
                for s in v["shape"]:
                    count *= s
                chunk = bytes(count * width)
                v = dict(v, dtype=dtype)
            new[k] = dict(v, data_offsets=[len(out), len(out) + len(chunk)])
            out += chunk
        if "__metadata__" in header:
            new["__metadata__"] = header["__metadata__"]
        st_join(path, new, bytes(out))
    return setup


def drop_layers_from_files(keep_layers):
    """Rewrites the model with only `keep_layers` layers by hand (config and tensors)."""
    def setup(d):
        path = d / "m/model.safetensors"
        header, body = st_split(path)
        new, out = {}, bytearray()
        for k, v in header.items():
            if k == "__metadata__":
                continue
            if ".encoder.layer." in k and int(k.split(".encoder.layer.")[1].split(".")[0]) >= keep_layers:
                continue
            a, b = v["data_offsets"]
            new[k] = dict(v, data_offsets=[len(out), len(out) + (b - a)])
            out += body[a:b]
        new["__metadata__"] = header.get("__metadata__", {})
        st_join(path, new, bytes(out))
        cfg(d, lambda v: v.update(num_hidden_layers=keep_layers))
    return setup


def write(name, text, mode="w"):
    def setup(d):
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)
    return setup


def chain(*setups):
    def setup(d):
        for s in setups:
            s(d)
    return setup


def tokenizer_text(text):
    return write("m/tokenizer.json", text)


def family(name, as_name="m"):
    def setup(d):
        shutil.rmtree(d / as_name, ignore_errors=True)
        shutil.copytree(FAMILIES / name, d / as_name)
    return setup


def eval_json(binary, d, model, data):
    r = subprocess.run([binary, "eval", str(d / model), "--data", str(d / data), "--json"],
                       capture_output=True, text=True, timeout=60)
    return json.loads(r.stdout) if r.returncode == 0 else None


def same_eval_as_plain(data_file):
    """The data file must score exactly like d.txt (same supports per type)."""
    def check(d, r, binary):
        ours, plain = eval_json(binary, d, "m", data_file), eval_json(binary, d, "m", "d.txt")
        if ours is None:
            return "eval of the file failed"
        a, b = ours["report"], plain["report"]
        if a != b:
            return f"report differs from the plain file: {a['micro']} vs {b['micro']}"
        return None
    return check


def stdout_lines(n):
    def check(d, r, binary):
        lines = [l for l in r.stdout.splitlines() if l.strip()]
        return None if len(lines) == n else f"{len(lines)} output lines, expected {n}"
    return check


def exists(path):
    def check(d, r, binary):
        return None if (d / path).exists() else f"{path} was not written"
    return check


# ---------------------------------------------------------------- the cases

def recipe(text):
    return write("r.toml", text.replace("MODEL", "m"))


def build_cases():
    # -- config.json
    for v in [1025, 10**9, 2**63, -1]:
        case(f"config num_hidden_layers={v}", "error", ["inspect", "m"],
             set_cfg(num_hidden_layers=v), needle="num_hidden_layers")
    for v in [-5, 0, 2**40, 3.5, "177"]:
        case(f"config vocab_size={v!r}", "error", ["inspect", "m"], set_cfg(vocab_size=v),
             needle="vocab_size")
    for h, n in [(30, 4), (32, 5), (32, 64)]:
        case(f"config hidden_size={h} heads={n}", "error", ["inspect", "m"],
             set_cfg(hidden_size=h, num_attention_heads=n), needle="config.json")
    case("config max_position_embeddings=2, eval", "error", ["eval", "m", "--data", "d.txt"],
         set_cfg(max_position_embeddings=2), needle="position_embeddings")
    case("config type_vocab_size=0 with a token-type table", "error", ["inspect", "m"],
         set_cfg(type_vocab_size=0), needle="token_type")
    case("config is a JSON array", "error", ["inspect", "m"], raw_cfg("[1, 2]"),
         needle="config.json")
    case("config is empty", "error", ["inspect", "m"], raw_cfg(""), needle="config.json")
    case("config is null", "error", ["inspect", "m"], raw_cfg("null"), needle="config.json")
    case("config id2label empty", "error", ["eval", "m", "--data", "d.txt"],
         set_cfg(id2label={}, label2id={}), needle="classifier")
    case("config id2label keys not ids", "error", ["eval", "m", "--data", "d.txt"],
         set_cfg(id2label={"a": "O", "b": "B-PER"}, label2id=None), needle="id2label")
    case("config classifier rows != labels", "error", ["eval", "m", "--data", "d.txt"],
         set_cfg(id2label={"0": "O", "1": "B-PER", "2": "I-PER"},
                 label2id={"O": 0, "B-PER": 1, "I-PER": 2}), needle="classifier")
    case("config pad_token_id beyond the vocabulary (BERT)", "any",
         ["eval", "m", "--data", "d.txt"], set_cfg(pad_token_id=10**6))
    case("config pad_token_id beyond the positions (RoBERTa)", "error",
         ["eval", "m", "--data", "d.txt"],
         chain(family("roberta"), lambda d: cfg(d, lambda v: v.update(pad_token_id=10**6))),
         needle="pad_token_id")
    case("config surgery layer_map out of range", "error", ["inspect", "m"],
         set_cfg(surgery={"format_version": 1, "layer_map": [0, 7]}), needle="layer_map")
    case("config surgery layer_map shorter than the layers", "error", ["inspect", "m"],
         set_cfg(surgery={"format_version": 1, "layer_map": [0]}), needle="layer_map")
    case("config surgery factorized rank 0", "error", ["inspect", "m"],
         set_cfg(surgery={"format_version": 1, "embeddings": {"kind": "factorized", "rank": 0}}),
         needle="rank")
    case("config surgery layers list of the wrong length", "error", ["inspect", "m"],
         set_cfg(surgery={"format_version": 1, "layers": [{"num_heads": 4}]}), needle="layers")
    case("config surgery layer heads not dividing hidden", "error", ["inspect", "m"],
         set_cfg(surgery={"format_version": 1,
                          "layers": [{"num_heads": 3}, {"num_heads": 4}]}), needle="query")
    case("config surgery low-rank rank 0", "error", ["inspect", "m"],
         set_cfg(surgery={"format_version": 1, "layers": [
             {"num_heads": 4, "linears": {"query": {"kind": "low_rank", "rank": 0}}},
             {"num_heads": 4}]}), needle="rank")
    case("config hidden_act unknown", "error", ["eval", "m", "--data", "d.txt"],
         set_cfg(hidden_act="swishy"), needle="hidden_act")
    case("config intermediate_size=0", "error", ["inspect", "m"],
         set_cfg(intermediate_size=0), needle="intermediate_size")

    # -- a model with 0 layers (config and tensors agree)
    zero = drop_layers_from_files(0)
    for argv in [["inspect", "m"], ["eval", "m", "--data", "d.txt"], ["predict", "m", "--input", "s.txt"],
                 ["forward", "m", "--input", "s.txt", "--out", "f.safetensors"],
                 ["export", "m", "onnx"], ["drop-layers", "m", "out", "--keep", "0"],
                 ["tie-layers", "m", "out", "--share-all"],
                 ["lowrank-layers", "m", "out", "--rank", "2"],
                 ["magnitude", "m", "out", "--sparsity", "0.5"],
                 ["sparsegpt", "m", "out", "--sparsity", "0.5", "--calib", "d.txt"],
                 ["remove-heads", "m", "out", "--heads", "0:1"],
                 ["prune-neurons", "m", "out", "--keep-ratio", "0.5", "--by", "magnitude"],
                 ["prune-structured", "m", "out", "--flops", "0.5", "--calib", "d.txt"],
                 ["factorize-embeddings", "m", "out", "--rank", "4"],
                 ["train", "finetune", "m", "--train", "d.txt", "--dev", "d.txt", "--out", "run",
                  "--max-steps", "2", "--batch-size", "2", "--reinit-classifier"],
                 ["train", "gates", "m", "--l0", "1", "--train", "d.txt", "--dev", "d.txt", "--out",
                  "run", "--max-steps", "2", "--batch-size", "2", "--reinit-classifier"]]:
        case(f"0-layer model: {argv[0]} {argv[1] if argv[0] == 'train' else ''}".strip(), "any",
             argv, zero)

    # -- tokenizer.json
    for text in ["[]", "{}", "\"x\"", "42", "{\"model\": 5}", "{\"model\": {\"type\": \"WordPiece\"}}",
                 "{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}}"]:
        case(f"tokenizer.json = {text}", "error", ["eval", "m", "--data", "d.txt"],
             tokenizer_text(text), needle="tokenizer.json")
    case("tokenizer.json empty WordPiece vocabulary", "error", ["eval", "m", "--data", "d.txt"],
         lambda d: (d / "m/tokenizer.json").write_text(json.dumps(
             dict(json.loads((d / "m/tokenizer.json").read_text()),
                  model={"type": "WordPiece", "vocab": {}, "unk_token": "[UNK]",
                         "continuing_subword_prefix": "##", "max_input_chars_per_word": 100}))),
         needle="tokenizer")
    case("tokenizer.json is a folder", "error", ["eval", "m", "--data", "d.txt"],
         lambda d: ((d / "m/tokenizer.json").unlink(), (d / "m/tokenizer.json").mkdir()),
         needle="tokenizer.json")

    # -- CoNLL data
    crlf = CONLL.replace("\n", "\r\n")
    case("CoNLL with CRLF line endings", "ok", ["eval", "m", "--data", "c.txt"],
         write("c.txt", crlf), check=same_eval_as_plain("c.txt"))
    case("CoNLL with tabs", "ok", ["eval", "m", "--data", "c.txt"],
         write("c.txt", CONLL.replace(" ", "\t")), check=same_eval_as_plain("c.txt"))
    case("CoNLL with a BOM", "ok", ["eval", "m", "--data", "c.txt"],
         write("c.txt", "\ufeff" + CONLL), check=same_eval_as_plain("c.txt"))
    case("CoNLL with 3 columns", "ok", ["eval", "m", "--data", "c.txt"],
         write("c.txt", "".join(f"{l.split()[0]} NN {l.split()[1]}\n" if l else "\n"
                                for l in CONLL.split("\n")[:-1])),
         check=same_eval_as_plain("c.txt"))
    case("CoNLL with only -DOCSTART-", "error", ["eval", "m", "--data", "c.txt"],
         write("c.txt", "-DOCSTART- -X- -X- O\n\n"), needle="c.txt")
    case("CoNLL with labels unknown to the model (eval)", "any", ["eval", "m", "--data", "c.txt"],
         write("c.txt", "UN B-ORG\nvotes O\n\nJohn B-MISC\n"))
    case("CoNLL with labels unknown to the model (train, same classifier)", "error",
         ["train", "finetune", "m", "--train", "c.txt", "--dev", "c.txt", "--out", "run",
          "--max-steps", "1"],
         write("c.txt", "UN B-ORG\nvotes O\n\nJohn B-MISC\n"), needle="label")
    case("CoNLL empty file", "error", ["eval", "m", "--data", "c.txt"], write("c.txt", ""),
         needle="c.txt")
    case("CoNLL only blank lines", "error", ["eval", "m", "--data", "c.txt"],
         write("c.txt", "\n\n  \n\t\n"), needle="c.txt")
    case("CoNLL CR-only line endings", "ok", ["eval", "m", "--data", "c.txt"],
         write("c.txt", CONLL.replace("\n", "\r")), check=same_eval_as_plain("c.txt"))
    case("CoNLL word of zero-width characters", "any", ["eval", "m", "--data", "c.txt"],
         write("c.txt", "John B-PER\n\u200b\u200d B-LOC\nParis B-LOC\n"))
    case("CoNLL tag in lower case", "error", ["eval", "m", "--data", "c.txt"],
         write("c.txt", "John b-per\n"), needle="c.txt")
    case("CoNLL data is a folder", "error", ["eval", "m", "--data", "m"], needle="folder")
    case("CoNLL data missing", "error", ["eval", "m", "--data", "nope.txt"], needle="nope.txt")
    case("CoNLL 5000-word sentence", "ok", ["eval", "m", "--data", "c.txt"],
         write("c.txt", "John B-PER\n" * 5000), timeout=120)
    case("JSONL negative integer tag", "error",
         ["eval", "m", "--data", "c.jsonl", "--tag-names", "O,B-PER"],
         write("c.jsonl", '{"tokens": ["John"], "ner_tags": [-1]}\n'), needle="c.jsonl")
    case("JSONL a line that is an array", "error", ["eval", "m", "--data", "c.jsonl"],
         write("c.jsonl", '[1,2]\n'), needle="c.jsonl")
    case("score on a one-column file", "error", ["score", "c.txt"], write("c.txt", "John\n"),
         needle="c.txt")
    case("score on an empty file", "error", ["score", "c.txt"], write("c.txt", ""),
         needle="c.txt")
    case("forward on an empty sentence file", "error",
         ["forward", "m", "--input", "e.txt", "--out", "f.safetensors"], write("e.txt", ""),
         needle="e.txt")
    case("forward with a double space in a sentence", "any",
         ["forward", "m", "--input", "e.txt", "--out", "f.safetensors"],
         write("e.txt", "John  Paris\n"))

    # -- recipes
    step = '[[step]]\nname = "{n}"\nkind = "drop-layers"\ninput = "{i}"\nkeep = "0"\n'
    case("recipe with duplicate step names", "error", ["run", "r.toml", "--runs", "runs"],
         recipe(step.format(n="a", i="MODEL") + step.format(n="a", i="MODEL")),
         needle="already named")
    case("recipe step named like a kind, referenced", "ok", ["run", "r.toml", "--runs", "runs"],
         recipe(step.format(n="drop-layers", i="MODEL") + step.format(n="b", i="@drop-layers")),
         check=exists("runs/r/02-b/model.safetensors"))
    case("recipe variable naming an environment variable", "error",
         ["run", "r.toml", "--runs", "runs", "--dry-run"],
         recipe(step.format(n="a", i="${HOME}")), needle="HOME")
    case("recipe variable ${env:HOME}", "error", ["run", "r.toml", "--runs", "runs", "--dry-run"],
         recipe(step.format(n="a", i="${env:HOME}")), needle="env:HOME")
    case("recipe step name with ..", "error", ["run", "r.toml", "--runs", "runs"],
         recipe(step.format(n="../../escape", i="MODEL")), needle="name")
    case("recipe [recipe] name with /", "error", ["run", "r.toml", "--runs", "runs"],
         recipe('[recipe]\nname = "../up"\n' + step.format(n="a", i="MODEL")), needle="name")
    case("recipe empty file", "error", ["run", "r.toml", "--runs", "runs"], recipe(""),
         needle="r.toml")
    case("recipe without steps", "error", ["run", "r.toml", "--runs", "runs"],
         recipe('[recipe]\nname = "x"\n'), needle="r.toml")
    case("recipe step empty name", "error", ["run", "r.toml", "--runs", "runs"],
         recipe(step.format(n="", i="MODEL")), needle="name")
    case("recipe step kind is a number", "error", ["run", "r.toml", "--runs", "runs"],
         recipe('[[step]]\nkind = 5\ninput = "m"\n'), needle="kind")
    case("recipe `step` is a table, not an array", "error", ["run", "r.toml", "--runs", "runs"],
         recipe('[step]\nkind = "drop-layers"\ninput = "m"\nkeep = "0"\n'), needle="step")
    case("recipe option given an array of tables", "error", ["run", "r.toml", "--runs", "runs"],
         recipe(step.format(n="a", i="MODEL") + 'extra = [{a = 1}]\n'), needle="extra")
    case("recipe numeric option as a float", "error",
         ["run", "r.toml", "--runs", "runs", "--dry-run"],
         recipe('[[step]]\nkind = "factorize-embeddings"\ninput = "m"\nrank = 4.5\n'),
         needle="rank")
    case("run --set without =", "error", ["run", "r.toml", "--runs", "runs", "--set", "x"],
         recipe(step.format(n="a", i="MODEL")), needle="--set")
    case("run --set with an empty name", "error", ["run", "r.toml", "--runs", "runs", "--set", "=x"],
         recipe(step.format(n="a", i="MODEL")), needle="--set")
    case("run --from empty", "error", ["run", "r.toml", "--runs", "runs", "--from", ""],
         recipe(step.format(n="a", i="MODEL")), needle="--from")
    case("run --runs is a regular file", "error", ["run", "r.toml", "--runs", "d.txt"],
         recipe(step.format(n="a", i="MODEL")), needle="d.txt")

    # -- outputs over inputs
    for argv in [["drop-layers", "m", "m", "--keep", "0"],
                 ["drop-layers", "m", "m", "--keep", "0", "--force"],
                 ["tie-layers", "m", "m", "--share-all", "--force"],
                 ["export", "m", "m", "--force"],
                 ["forward", "m", "--input", "s.txt", "--out", "s.txt", "--force"],
                 ["forward", "m", "--input", "s.txt", "--out", "m/model.safetensors", "--force"],
                 ["eval", "m", "--data", "d.txt", "--write-predictions", "d.txt", "--force"],
                 ["eval", "m", "--data", "d.txt", "--save-json", "d.txt", "--force"],
                 ["eval", "m", "--data", "d.txt", "--save-json", "m/config.json", "--force"],
                 ["train", "finetune", "m", "--train", "d.txt", "--dev", "d.txt", "--out", "m",
                  "--force"],
                 ["train", "finetune", "m", "--train", "d.txt", "--dev", "d.txt", "--out",
                  "d.txt", "--force"],
                 ["init-student", "m", "--like", "m", "--layers", "1", "--hidden", "16", "--heads",
                  "4", "--intermediate", "8", "--force"],
                 ["prune-vocab", "m", "m", "--corpus", "d.txt", "--force"],
                 ["sparsegpt", "m", "m/sub", "--sparsity", "0.5", "--calib", "d.txt"],
                 ["report", "m", "--out", "m", "--force"],
                 ["quickstart", "--out", "m", "--force"]]:
        case("output over input: " + " ".join(argv), "error", argv, needle="")
    # symlinks
    case("output is a symlink to the input folder", "error",
         ["drop-layers", "m", "link", "--keep", "0", "--force"],
         lambda d: os.symlink(d / "m", d / "link"), needle="link")
    case("output is a symlink to an empty folder", "error",
         ["drop-layers", "m", "link", "--keep", "0"],
         lambda d: ((d / "empty").mkdir(), os.symlink(d / "empty", d / "link")), needle="link")
    case("output inside a symlinked folder that points into the input", "error",
         ["drop-layers", "m", "link/out", "--keep", "0"],
         lambda d: os.symlink(d / "m", d / "link"), needle="")
    case("train --out a symlink to the input", "error",
         ["train", "finetune", "m", "--train", "d.txt", "--dev", "d.txt", "--out", "link",
          "--force"], lambda d: os.symlink(d / "m", d / "link"), needle="")
    case("forward --out a symlink to the data", "error",
         ["forward", "m", "--input", "s.txt", "--out", "link.safetensors", "--force"],
         lambda d: os.symlink(d / "s.txt", d / "link.safetensors"), needle="")
    case("export to an existing regular file", "error", ["export", "m", "d2.txt"],
         write("d2.txt", "hello"), needle="d2.txt", inputs=("m", "d.txt", "s.txt", "d2.txt"))
    case("export --force to an existing regular file", "error", ["export", "m", "d2.txt", "--force"],
         write("d2.txt", "hello"), needle="d2.txt", inputs=("m", "d.txt", "s.txt", "d2.txt"))
    case("surgery output an existing regular file", "error",
         ["drop-layers", "m", "d2.txt", "--keep", "0", "--force"],
         write("d2.txt", "hello"), needle="d2.txt", inputs=("m", "d.txt", "s.txt", "d2.txt"))
    case("output under a regular file", "error", ["drop-layers", "m", "d.txt/out", "--keep", "0"],
         needle="d.txt is a file")
    case("forward --out under a regular file", "error",
         ["forward", "m", "--input", "s.txt", "--out", "d.txt/f.safetensors"], needle="d.txt is a file")

    # -- empty option values
    # An empty head list removes none (the library's tests pin this): an unchanged copy.
    case("empty value: --heads in remove-heads (removes none)", "ok",
         ["remove-heads", "m", "out", "--heads", ""], check=exists("out/model.safetensors"))
    for argv, opt in [(["drop-layers", "m", "out", "--keep", ""], "--keep"),
                      (["tie-layers", "m", "out", "--groups", ""], "--groups"),
                      (["assert-budget", "m", "--max", ""], "--max"),
                      (["eval", "m", "--data", ""], "--data"),
                      (["forward", "m", "--input", "s.txt", "--out", ""], "--out"),
                      (["predict", "m", "--input", ""], "--input"),
                      (["eval", "m", "--data", "d.txt", "--tag-names", ""], "--tag-names"),
                      (["magnitude", "m", "out", "--pattern", ""], "--pattern"),
                      (["sparsegpt", "m", "out", "--pattern", "2:4", "--calib", ""], "--calib"),
                      (["export", "m", ""], "OUT"),
                      (["drop-layers", "", "out", "--keep", "0"], "INPUT"),
                      (["train", "finetune", "m", "--train", "d.txt", "--dev", "d.txt", "--out", ""],
                       "--out"),
                      (["eval", "m", "--data", "d.txt", "--device", ""], "--device"),
                      (["prune-vocab", "m", "out", "--corpus", ""], "--corpus"),
                      (["init-student", "out", "--like", "m", "--layers", "", "--hidden", "16",
                        "--heads", "4", "--intermediate", "8"], "--layers"),
                      (["train", "distill", "m", "--teacher", "m", "--train", "d.txt", "--dev",
                        "d.txt", "--out", "run", "--layer-map", ""], "--layer-map"),
                      (["report", "m", "--out", ""], "--out")]:
        case(f"empty value: {opt} in {argv[0]}", "error", argv, needle="")

    # -- predict and stdin
    case("predict on empty stdin", "ok", ["predict", "m"], stdin=b"", check=stdout_lines(0))
    case("predict on stdin of blank lines", "ok", ["predict", "m"], stdin=b"\n\n\n",
         check=stdout_lines(3))
    case("predict on invalid UTF-8", "error", ["predict", "m"], stdin=b"John \xff\xfe Paris\n",
         needle="UTF-8")
    case("predict on a 20000-word line", "ok", ["predict", "m"],
         stdin=("Paris " * 20000 + "\n").encode(), check=stdout_lines(1), timeout=120)
    case("predict on a line of CRLF", "ok", ["predict", "m"], stdin=b"John Paris\r\nAnna\r\n",
         check=stdout_lines(2))
    case("predict --input a folder", "error", ["predict", "m", "--input", "m"], needle="folder")

    # -- assert-budget numbers
    for v in ["20MM", "1.5.3M", "M", "20 M", "0x10", "-0", "+5", "1_000", "20G", "1e3", "١٢٣",
              "nan", "20m", "0"]:
        exp = "budget" if v in ("20G", "1e3", "20m", "+5", "0", "1_000") else "error"
        case(f"assert-budget --max {v!r}", exp, ["assert-budget", "m", f"--max={v}"],
             needle="--max" if exp == "error" else None)
    case("plan --budget 0", "error", ["plan", "m", "--budget", "0"], needle="fits 0 parameters")

    # -- safetensors
    for dtype, width in [("F8_E4M3", 1), ("I64", 8), ("I32", 4), ("U8", 1), ("BOOL", 1),
                         ("F64", 8), ("XYZ", 4)]:
        case(f"safetensors weight dtype {dtype}", "error", ["eval", "m", "--data", "d.txt"],
             retype("bert.encoder.layer.0.attention.self.query.weight", dtype, width),
             needle="query.weight")
    case("safetensors header length beyond the file", "error", ["inspect", "m"],
         lambda d: (d / "m/model.safetensors").write_bytes(
             struct.pack("<Q", 10**12) + (d / "m/model.safetensors").read_bytes()[8:]),
         needle="model.safetensors")
    case("safetensors metadata not strings", "any", ["inspect", "m"],
         lambda d: st_join(d / "m/model.safetensors",
                           dict(st_split(d / "m/model.safetensors")[0], __metadata__={"a": 1}),
                           st_split(d / "m/model.safetensors")[1]), needle="model.safetensors")
    case("safetensors file of 7 bytes", "error", ["inspect", "m"],
         write("m/model.safetensors", b"\x01\x02\x03\x04\x05\x06\x07"), needle="model.safetensors")
    case("safetensors is a folder", "error", ["inspect", "m"],
         lambda d: ((d / "m/model.safetensors").unlink(), (d / "m/model.safetensors").mkdir()),
         needle="model.safetensors")

    # -- other commands
    case("drop-layers --keep 0,0", "any", ["drop-layers", "m", "out", "--keep", "0,0"])
    case("drop-layers --keep 5", "error", ["drop-layers", "m", "out", "--keep", "5"], needle="5")
    case("drop-layers --keep 1,0 (reordered)", "any", ["drop-layers", "m", "out", "--keep", "1,0"])
    case("tie-layers --groups 0-1,1-1", "error", ["tie-layers", "m", "out", "--groups", "0-1,1-1"],
         needle="--groups")
    case("tie-layers --groups 1-0", "error", ["tie-layers", "m", "out", "--groups", "1-0"],
         needle="--groups")
    case("tie-layers --groups 0-9", "error", ["tie-layers", "m", "out", "--groups", "0-9"],
         needle="--groups")
    case("remove-heads --heads 0:99", "error", ["remove-heads", "m", "out", "--heads", "0:99"],
         needle="99")
    case("remove-heads --heads 0:0,0", "any", ["remove-heads", "m", "out", "--heads", "0:0,0"])
    case("remove-heads every head", "any",
         ["remove-heads", "m", "out", "--heads", "0:0,1,2,3;1:0,1,2,3"])
    case("remove-heads --heads 9:0", "error", ["remove-heads", "m", "out", "--heads", "9:0"],
         needle="9")
    case("init-student --layers 0", "any",
         ["init-student", "out", "--like", "m", "--layers", "0", "--hidden", "16", "--heads", "4",
          "--intermediate", "8"])
    case("init-student hidden not divisible by heads", "error",
         ["init-student", "out", "--like", "m", "--layers", "1", "--hidden", "30", "--heads", "4",
          "--intermediate", "8"], needle="30")
    case("init-student --hidden 0", "error",
         ["init-student", "out", "--like", "m", "--layers", "1", "--hidden", "0", "--heads", "4",
          "--intermediate", "8"], needle="hidden")
    case("init-student --heads 0", "error",
         ["init-student", "out", "--like", "m", "--layers", "1", "--hidden", "16", "--heads", "0",
          "--intermediate", "8"], needle="heads")
    for p in ["4:4", "0:4", "5:4", "2:0", "a:b", "2:4:8"]:
        case(f"magnitude --pattern {p}", "error", ["magnitude", "m", "out", "--pattern", p],
             needle="--pattern")
    case("lowrank-layers --method whiten without --calib", "error",
         ["lowrank-layers", "m", "out", "--rank", "2", "--method", "whiten"], needle="--calib")
    case("eval --device gpu", "error", ["eval", "m", "--data", "d.txt", "--device", "gpu"],
         needle="--device")
    case("eval --device cuda:x", "error", ["eval", "m", "--data", "d.txt", "--device", "cuda:x"],
         needle="cuda")
    case("eval --device cuda (CPU build)", "error", ["eval", "m", "--data", "d.txt", "--device",
                                                      "cuda"], needle="cuda")
    train = ["train", "finetune", "m", "--train", "d.txt", "--dev", "d.txt", "--out", "run",
             "--batch-size", "2", "--reinit-classifier"]
    case("train --log-every 0", "any", train + ["--max-steps", "2", "--log-every", "0"])
    case("train --stop-after 0", "any", train + ["--max-steps", "2", "--stop-after", "0"])
    case("train --max-len beyond the model", "error", train + ["--max-len", "4096"],
         needle="--max-len")
    case("train --max-train-sentences 0", "error", train + ["--max-train-sentences", "0"],
         needle="--max-train-sentences")
    case("train --seed 2^64", "error", train + ["--seed", "18446744073709551616"],
         needle="--seed")
    case("train gates --target-heads 0", "any",
         ["train", "gates", "m", "--target-heads", "0", "--train", "d.txt", "--dev", "d.txt",
          "--out", "run", "--max-steps", "2", "--batch-size", "2", "--reinit-classifier"])
    case("train gates --target-heads 99", "error",
         ["train", "gates", "m", "--target-heads", "99", "--train", "d.txt", "--dev", "d.txt",
          "--out", "run", "--max-steps", "2", "--batch-size", "2", "--reinit-classifier"],
         needle="--target-heads")
    case("train distill --layer-map 0:9", "error",
         ["train", "distill", "m", "--teacher", "m", "--train", "d.txt", "--dev", "d.txt",
          "--out", "run", "--max-steps", "1", "--hidden-weight", "1", "--layer-map", "0:9"],
         needle="9")
    case("eval --max-len beyond the model", "error",
         ["eval", "m", "--data", "d.txt", "--max-len", "4096"], needle="--max-len")
    case("report on a folder that is not a run", "error", ["report", "m", "--out", "rep"],
         needle="m")
    case("report with no runs", "error", ["report", "--out", "rep"], needle="")
    case("prune-vocab with an empty corpus", "error",
         ["prune-vocab", "m", "out", "--corpus", "e.txt"], write("e.txt", ""), needle="e.txt")


def predictions_cover_words(data, words):
    """eval --write-predictions writes one line per word of `data`."""
    def check(d, r, binary):
        out = d / "pred.txt"
        rr = subprocess.run([binary, "eval", "m", "--data", data, "--write-predictions", str(out)],
                            cwd=d, capture_output=True, text=True, timeout=60)
        if rr.returncode != 0:
            return "eval --write-predictions failed: " + rr.stderr.strip()[-200:]
        n = sum(1 for l in out.read_text().splitlines() if l.strip())
        return None if n == words else f"{n} predicted words, the data has {words}"
    return check


def forward_rows(n):
    """`forward --out f.safetensors` holds `n` sentences."""
    def check(d, r, binary):
        header, _ = st_split(d / "f.safetensors")
        rows = header["input_ids"]["shape"][0]
        return None if rows == n else f"{rows} sentences, expected {n}"
    return check


def run_then(first, corrupt):
    """Runs `first` (a training run stopped early), then applies `corrupt` to the folder."""
    def setup(d):
        r = subprocess.run([BINARY] + first, cwd=d, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        corrupt(d)
    return setup


TRAIN = ["train", "finetune", "m", "--train", "d.txt", "--dev", "d.txt", "--out", "run",
         "--batch-size", "2", "--reinit-classifier", "--max-steps", "4", "--eval-every", "2"]


def trained_run(d):
    r = subprocess.run([BINARY] + [a if a != "run" else "runs/t" for a in TRAIN], cwd=d,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def more_cases():
    # -- words the tokenizer turns into nothing, and tokenizer settings that drop words
    odd = [("empty-string token", ["John", "", "Paris"]),
           ("whitespace-only token", ["John", " \u200b", "Paris"]),
           ("token with spaces inside", ["John Smith", "Paris"]),
           ("control-character token", ["John", "\u0007", "Paris"])]
    for name, words in odd:
        line = json.dumps({"tokens": words, "ner_tags": ["O"] * len(words)}) + "\n"
        case(f"JSONL {name}: eval predicts every word", "ok", ["eval", "m", "--data", "c.jsonl"],
             write("c.jsonl", line), check=predictions_cover_words("c.jsonl", len(words)))
        case(f"JSONL {name}: train", "any",
             ["train", "finetune", "m", "--train", "c.jsonl", "--dev", "c.jsonl", "--out", "run",
              "--max-steps", "2", "--reinit-classifier"], write("c.jsonl", line * 4))
    case("JSONL only words without pieces: train", "any",
         ["train", "finetune", "m", "--train", "c.jsonl", "--dev", "c.jsonl", "--out", "run",
          "--max-steps", "2", "--reinit-classifier"],
         write("c.jsonl", json.dumps({"tokens": ["\u200b", ""], "ner_tags": ["B-PER", "O"]}) + "\n"))

    def tok_edit(key, value):
        def setup(d):
            p = d / "m/tokenizer.json"
            v = json.loads(p.read_text())
            v[key] = value
            p.write_text(json.dumps(v))
        return setup
    long = "John B-PER\n" + "lives O\n" * 40 + "Paris B-LOC\n"
    case("tokenizer.json with truncation at 6 tokens", "ok", ["eval", "m", "--data", "c.txt"],
         chain(write("c.txt", long), tok_edit("truncation", {"max_length": 6, "strategy": "LongestFirst",
                                                             "stride": 0, "direction": "Right"})),
         check=predictions_cover_words("c.txt", 42))
    case("tokenizer.json with fixed padding to 64", "ok", ["eval", "m", "--data", "d.txt"],
         tok_edit("padding", {"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": None,
                              "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"}),
         check=predictions_cover_words("d.txt", 9))
    case("tokenizer.json without a post-processor", "any", ["eval", "m", "--data", "d.txt"],
         tok_edit("post_processor", None))
    case("predict with a tokenizer that truncates", "ok", ["predict", "m"],
         tok_edit("truncation", {"max_length": 4, "strategy": "LongestFirst", "stride": 0,
                                 "direction": "Right"}),
         stdin=b"John lives in Paris with Anna Smith near Berlin\n", check=stdout_lines(1))
    case("eval --max-len 3 on long words", "ok", ["eval", "m", "--data", "c.txt", "--max-len", "3"],
         write("c.txt", "Supercalifragilistic B-PER\nParis B-LOC\n"),
         check=lambda d, r, b: None)

    # -- resuming from damaged run folders
    stop = TRAIN + ["--stop-after", "2"]
    resume = TRAIN + ["--resume"]
    for what, corrupt in [
            ("progress.json garbage", lambda d: (d / "run/last/state/progress.json").write_text("{")),
            ("progress.json step beyond the run", lambda d: (d / "run/last/state/progress.json").write_text(
                (d / "run/last/state/progress.json").read_text().replace('"step": 2', '"step": 99999'))),
            ("last/model truncated", lambda d: (d / "run/last/model/model.safetensors").write_bytes(
                (d / "run/last/model/model.safetensors").read_bytes()[:1000])),
            ("optimizer state missing", lambda d: [f.unlink() for f in (d / "run/last/state").glob("*.safetensors")]),
            ("run.json garbage", lambda d: (d / "run/run.json").write_text("[]")),
            ("metrics.jsonl is a folder", lambda d: ((d / "run/metrics.jsonl").unlink(),
                                                    (d / "run/metrics.jsonl").mkdir()))]:
        case(f"resume with {what}", "error", resume, run_then(stop, corrupt), needle="run",
             timeout=120)
    case("--tensorboard where tensorboard is a file", "error",
         TRAIN + ["--tensorboard", "--resume"],
         run_then(stop, lambda d: (d / "run/tensorboard").write_text("x")), needle="tensorboard")

    # -- gates files
    for what, text in [("not JSON", "{"), ("for 12 layers", json.dumps({"gates": [[0.5] * 4] * 12})),
                       ("with strings", json.dumps({"gates": [["a"] * 4] * 2})),
                       ("empty object", "{}")]:
        case(f"remove-heads --gates {what}", "error",
             ["remove-heads", "m", "out", "--gates", "g.json"], write("g.json", text), needle="g.json")

    # -- recipes: reserved options and escaping references
    step = '[[step]]\nname = "{n}"\nkind = "drop-layers"\ninput = "{i}"\nkeep = "0"\n'
    case("recipe step sets `out`", "error", ["run", "r.toml", "--runs", "runs"],
         recipe(step.format(n="a", i="MODEL") + 'out = "elsewhere"\n'), needle="out")
    case("recipe step sets `force`", "any", ["run", "r.toml", "--runs", "runs"],
         recipe(step.format(n="a", i="MODEL") + 'force = true\n'), needle="force")
    case("recipe train step sets `out`", "error", ["run", "r.toml", "--runs", "runs"],
         recipe('[[step]]\nname = "t"\nkind = "train finetune"\ninput = "MODEL"\ntrain = "d.txt"\n'
                'dev = "d.txt"\nout = "elsewhere"\n'), needle="out")
    case("recipe reference leaving its step folder (a read)", "any", ["run", "r.toml", "--runs", "runs"],
         recipe(step.format(n="a", i="MODEL") + step.format(n="b", i="@a/../../../m")),
         needle="@a")
    case("recipe step name is a number", "error", ["run", "r.toml", "--runs", "runs"],
         recipe('[[step]]\nname = 5\nkind = "drop-layers"\ninput = "MODEL"\nkeep = "0"\n'),
         needle="name")
    case("forward on CR-only line endings", "ok",
         ["forward", "m", "--input", "e.txt", "--out", "f.safetensors"],
         write("e.txt", "John lives\rAnna visited Berlin\r"), check=forward_rows(2))
    case("train distill --layer-map 0:0,0:1", "any",
         ["train", "distill", "m", "--teacher", "m", "--train", "d.txt", "--dev", "d.txt", "--out",
          "run", "--max-steps", "1", "--hidden-weight", "1", "--layer-map", "0:0,0:1"])
    case("recipe kind `run`", "error", ["run", "r.toml", "--runs", "runs"],
         recipe('[[step]]\nkind = "run"\ninput = "r.toml"\n'), needle="kind")
    case("run --set data= (empty value)", "error",
         ["run", "r.toml", "--runs", "runs", "--set", "data="],
         recipe('[vars]\ndata = "d.txt"\n[[step]]\nname = "e"\nkind = "eval"\ninput = "MODEL"\n'
                'data = "${data}"\n'), needle="")

    # -- more outputs
    case("eval --save-json onto a folder", "error",
         ["eval", "m", "--data", "d.txt", "--save-json", "dir", "--force"],
         lambda d: (d / "dir").mkdir(), needle="dir")
    case("eval --write-predictions in a missing folder", "any",
         ["eval", "m", "--data", "d.txt", "--write-predictions", "no/such/p.txt"])
    case("forward --out onto a folder", "error",
         ["forward", "m", "--input", "s.txt", "--out", "dir", "--force"],
         lambda d: (d / "dir").mkdir(), needle="dir")
    case("report --out onto a regular file", "error",
         ["report", "runs/t", "--out", "d2.txt"],
         chain(write("d2.txt", "x"), trained_run),
         needle="d2.txt", inputs=("m", "d.txt", "s.txt", "d2.txt"))
    case("report --results onto a data file without markers", "error",
         ["report", "runs/t", "--out", "rep", "--results", "d.txt"],
         trained_run,
         needle="d.txt")

    # -- more option values
    for argv, needle in [(["export", "m", "out", "--opset", "16"], "opset"),
                         (["export", "m", "out", "--opset", "22"], "opset"),
                         (["inspect", "m", "--seq-len", "0"], "--seq-len"),
                         (["inspect", "m", "--budget", "abc"], "--budget"),
                         (["plan", "m", "--budget", "abc"], "--budget"),
                         (["plan", "m", "--budget", "1"], "fits 1 parameters"),
                         (["eval", "m", "--data", "d.txt", "--device", "cuda:99999999999999999999"], "--device"),
                         (["init-student", "out", "--like", "m", "--layers", "1", "--hidden", "16",
                           "--heads", "4", "--intermediate", "8", "--embedding-rank", "0"], "rank"),
                         (["init-student", "out", "--like", "m", "--layers", "1", "--hidden", "16",
                           "--heads", "4", "--intermediate", "8", "--embedding-rank", "999"], "rank"),
                         (["init-student", "out", "--like", "m", "--layers", "2000", "--hidden", "16",
                           "--heads", "4", "--intermediate", "8"], "layers"),
                         (TRAIN[:-4] + ["--max-steps", "1", "--augment", "bogus"], "--augment"),
                         (["prune-vocab", "m", "out", "--corpus", "d.txt", "--coverage", "nope.txt"],
                          "nope.txt")]:
        case("option " + " ".join(argv[-2:]) + f" ({argv[0]})", "error", argv, needle=needle)
    # -- shard indexes and side files
    def index(weight_map):
        def setup(d):
            (d / "m/model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        return setup
    names = lambda d: [k for k in st_split(d / "m/model.safetensors")[0] if k != "__metadata__"]
    case("index.json naming a missing shard beside model.safetensors", "any", ["inspect", "m"],
         lambda d: index({k: "model-00001.safetensors" for k in names(d)})(d))
    case("index.json naming a missing shard", "error", ["inspect", "m"],
         lambda d: (index({k: "model-00001.safetensors" for k in names(d)})(d),
                    (d / "m/model.safetensors").unlink()), needle="model-00001")
    case("index.json with an empty weight_map", "error", ["inspect", "m"],
         lambda d: ((d / "m/model.safetensors").unlink(), index({})(d)), needle="index")
    case("index.json that is not JSON", "error", ["inspect", "m"],
         lambda d: ((d / "m/model.safetensors").unlink(),
                    (d / "m/model.safetensors.index.json").write_text("{")), needle="index")
    case("tokenizer_config.json garbage", "any", ["eval", "m", "--data", "d.txt"],
         write("m/tokenizer_config.json", "\x00garbage"))
    case("recipe file is a folder", "error", ["run", "m", "--runs", "runs"], needle="m")
    case("recipe file not UTF-8", "error", ["run", "r.toml", "--runs", "runs"],
         write("r.toml", b"[recipe]\nname = \"\xff\"\n"), needle="r.toml")
    case("report --teacher unknown", "error", ["report", "runs/t", "--out", "rep", "--teacher", "nope"],
         trained_run, needle="nope")
    case("quickstart --out a regular file", "error", ["quickstart", "--out", "d.txt"], needle="d.txt")
    case("eval --tag-names on a CoNLL file", "any",
         ["eval", "m", "--data", "d.txt", "--tag-names", "O,B-PER"])
    case("score with a non-tag middle column", "any", ["score", "c.txt"],
         write("c.txt", "John NNP B-PER B-PER\nParis NNP B-LOC O\n"))
    case("plan on a small-vocabulary teacher", "ok", ["plan", "m", "--budget", "2M"],
         check=lambda d, r, b: None if "fit" in r.stdout else "no shapes listed")
    case("tie-layers --share-all on a 1-layer model", "any",
         ["tie-layers", "m", "out", "--share-all"], drop_layers_from_files(1))
    case("train --max-len 3", "ok", TRAIN + ["--max-len", "3"], check=lambda d, r, b: None)
    case("train with a data file of one sentence of one word", "ok",
         ["train", "finetune", "m", "--train", "c.txt", "--dev", "c.txt", "--out", "run",
          "--max-steps", "2", "--reinit-classifier"], write("c.txt", "John B-PER\n"),
         check=lambda d, r, b: None)


def stdout_has(*words):
    def check(d, r, binary):
        missing = [w for w in words if w not in r.stdout]
        return f"stdout lacks {missing}" if missing else None
    return check


def then(*actions):
    """A setup that runs each action: an argv list (the binary, in the case folder) or a
    function of the folder."""
    def setup(d):
        for a in actions:
            if callable(a):
                a(d)
            else:
                r = subprocess.run([BINARY] + a, cwd=d, capture_output=True, text=True,
                                   timeout=120)
                assert r.returncode == 0, r.stderr
    return setup


def edit_bytes(path, edit):
    def action(d):
        p = d / path
        p.write_bytes(edit(p.read_bytes()))
    return action


def resume_and_value_cases():
    run = ["run", "r.toml", "--runs", "runs"]
    # -- a resumed recipe checks the files its steps read and wrote
    calib = recipe('[[step]]\nname = "cut"\nkind = "prune-neurons"\ninput = "MODEL"\n'
                   'by = "fisher"\ncalib = "d.txt"\nkeep-ratio = 0.5\n')
    fixed = edit_bytes("d.txt", lambda b: b.replace(b"Berlin B-LOC", b"Berlin B-PER"))
    case("resume: calibration file corrected in place", "ok", run,
         then(calib, run, fixed), check=stdout_has("d.txt", "running it again"),
         inputs=("m", "s.txt"))
    tune = recipe('[[step]]\nname = "tune"\nkind = "train finetune"\ninput = "MODEL"\n'
                  'train = "d.txt"\ndev = "d.txt"\nmax-steps = 1\nbatch-size = 2\n'
                  'reinit-classifier = true\n')
    case("resume: training file corrected in place", "ok", run, then(tune, run, fixed),
         check=stdout_has("d.txt", "running it again"), inputs=("m", "s.txt"), timeout=120)
    cut_eval = recipe('[[step]]\nname = "cut"\nkind = "drop-layers"\ninput = "MODEL"\n'
                      'keep = "0,1"\n[[step]]\nname = "ev"\nkind = "eval"\ndata = "d.txt"\n')
    weights = "runs/r/01-cut/model.safetensors"
    case("resume: a step's model.safetensors truncated", "ok", run,
         then(cut_eval, run, edit_bytes(weights, lambda b: b[:len(b) // 2])),
         check=stdout_has("changed size", "running it again"))
    case("resume: a step's weights edited by hand (same size)", "ok", run,
         then(cut_eval, run, edit_bytes(weights, lambda b: b[:-64] + bytes(x ^ 0x55 for x in b[-64:]))),
         check=stdout_has("changed content", "running it again"))
    case("resume: a step's config.json labels edited by hand", "ok", run,
         then(cut_eval, run, edit_bytes("runs/r/01-cut/config.json",
                                        lambda b: b.replace(b'"B-PER"', b'"B-XYZ"'))),
         check=stdout_has("config.json", "running it again"))
    ev = recipe('[[step]]\nname = "ev"\nkind = "eval"\ninput = "MODEL"\ndata = "d.txt"\n')
    case("resume: an evaluated input model edited by hand", "ok", run,
         then(ev, run, edit_bytes("m/model.safetensors",
                                  lambda b: b[:-64] + bytes(x ^ 0x55 for x in b[-64:]))),
         check=stdout_has("model.safetensors", "running it again"), inputs=("d.txt", "s.txt"))

    # -- output pipes closed early
    one = recipe('[[step]]\nname = "a"\nkind = "drop-layers"\ninput = "MODEL"\nkeep = "0"\n')
    for argv in [["inspect", "m"], ["inspect", "m", "--json"], ["eval", "m", "--data", "d.txt"],
                 ["score", "c.txt"], ["predict", "m", "--input", "s.txt"],
                 ["check-device", "--steps", "1"], ["run", "r.toml", "--runs", "runs", "--dry-run"],
                 ["drop-layers", "m", "out", "--keep", "0", "--json"],
                 ["export", "m", "out", "--json"]]:
        case("closed output pipe: " + " ".join(argv), "closed-pipe", argv,
             chain(write("c.txt", "John B-PER B-PER\nParis B-LOC O\n"), one), timeout=120)

    # -- int8 export of a model with an FFN layer left without neurons
    case("export --quantize int8 after prune-neurons --keep 0", "ok",
         ["export", "cut", "out", "--quantize", "int8"],
         then(["prune-neurons", "m", "cut", "--keep", "0", "--by", "magnitude"]),
         check=exists("out/model.onnx"))

    # -- absurd thread counts
    for value in ["100000", "many", "0"]:
        case(f"RAYON_NUM_THREADS={value}", "error", ["eval", "m", "--data", "d.txt"],
             env={"RAYON_NUM_THREADS": value}, needle="RAYON_NUM_THREADS", timeout=20)

    # -- numbers read exactly, or refused naming the option
    structured = ["prune-structured", "m", "out", "--flops", "0.5", "--calib", "d.txt"]
    for argv, needle in [
            (["prune-structured", "m", "out", "--params", "0,1M", "--calib", "d.txt"], "three digits"),
            (["assert-budget", "m", "--max", "0,1M"], "three digits"),
            (["inspect", "m", "--budget", "122,5k"], "three digits"),
            (structured + ["--damp", "NaN"], "--damp"),
            (structured + ["--damp", "-1"], "--damp"),
            (structured + ["--damp", "inf"], "--damp"),
            (structured + ["--calib-sentences", "0"], "--calib-sentences"),
            (structured + ["--heldout-sentences", "0"], "--heldout-sentences"),
            (structured + ["--seq-len", str(2**62)], "--seq-len"),
            (["inspect", "m", "--seq-len", str(2**62)], "--seq-len"),
            (["check-device", "--steps", "0"], "--steps"),
            (["prune-neurons", "m", "out", "--keep-ratio", "-0.5", "--by", "magnitude"], "--keep-ratio"),
            (["prune-neurons", "m", "out", "--keep-ratio", "0.5", "--by", "fisher", "--calib",
              "d.txt", "--calib-sentences", "0"], "--calib-sentences"),
            (["train", "focal", "m", "--train", "d.txt", "--dev", "d.txt", "--out", "run",
              "--gamma", "1e308"], "--gamma")]:
        case("option " + " ".join(argv[-2:]) + f" ({argv[0]})", "error", argv, needle=needle)
    case("assert-budget --max 1,000,000 (groups of three)", "ok",
         ["assert-budget", "m", "--max", "1,000,000"])

    def intermediate_sum(n):
        def check(d, r, binary):
            rr = subprocess.run([binary, "inspect", "out", "--json"], cwd=d, capture_output=True,
                                text=True, timeout=60)
            kept = sum(l["intermediate"] for l in json.loads(rr.stdout)["budget"]["layers"])
            return None if kept == n else f"kept {kept} neurons, asked {n}"
        return check
    for keep in [1, 3, 5]:
        case(f"prune-neurons --keep {keep} --uniform", "ok",
             ["prune-neurons", "m", "out", "--keep", str(keep), "--uniform", "--by", "magnitude"],
             check=intermediate_sum(keep))

    # -- recipe values: negative numbers, switches, missing options
    def step(kind, options):
        return recipe(f'[[step]]\nname = "s"\nkind = "{kind}"\ninput = "MODEL"\n{options}\n')
    dry = run + ["--dry-run"]
    data = 'train = "d.txt"\ndev = "d.txt"\n'
    for kind, options, needle in [
            ("train finetune", data + "lr = -1e-5", "--lr"),
            ("train focal", data + "gamma = -1", "--gamma"),
            ("prune-neurons", 'by = "magnitude"\nkeep = -1', "--keep"),
            ("prune-structured", 'flops = 0.5\ncalib = "d.txt"\ndamp = -1', "--damp"),
            ("prune-structured", 'flops = 0.5\ncalib = "d.txt"\nseq-len = -1', "--seq-len"),
            ("prune-neurons", "keep = 3", "`by`"),
            ("prune-neurons", 'by = "magnitude"\nkeep = true', "option `keep` takes a value"),
            ("prune-neurons", 'by = "magnitude"\nkeep = 3\nuniform = "yes"',
             "option `uniform` is a switch")]:
        case(f"recipe {kind}: {options.splitlines()[-1]}", "error", dry, step(kind, options),
             needle=needle)
    case("recipe step name in non-ASCII letters", "ok", run,
         recipe('[[step]]\nname = "größe"\nkind = "drop-layers"\ninput = "MODEL"\nkeep = "0"\n'),
         check=exists("runs/r/01-größe/model.safetensors"))

    # -- calibration tags the model does not know
    bad = write("c.txt", "John B-PER\nlives O\n\nParis B-FOO\n")
    for argv in [["prune-neurons", "m", "out", "--keep-ratio", "0.5", "--by", "fisher",
                  "--calib", "c.txt"],
                 ["prune-structured", "m", "out", "--flops", "0.5", "--calib", "c.txt"]]:
        case(f"{argv[0]} on calibration tags unknown to the model", "error", argv, bad,
             needle="B-FOO")

    # -- a classifier with the data's labels in another order
    reordered = set_cfg(id2label={"0": "O", "1": "I-PER", "2": "B-PER", "3": "I-LOC", "4": "B-LOC"},
                        label2id={"O": 0, "I-PER": 1, "B-PER": 2, "I-LOC": 3, "B-LOC": 4})
    case("train on data whose labels the classifier has in another order", "ok",
         ["train", "finetune", "m", "--train", "d.txt", "--dev", "d.txt", "--out", "run",
          "--max-steps", "1", "--batch-size", "2"], reordered, check=exists("run/best/config.json"),
         timeout=120)

    # -- family configs
    for key, value in [("pad_token_id", 320), ("max_position_embeddings", 3),
                       ("max_position_embeddings", 4), ("model_type", 5), ("hidden_act", 5)]:
        case(f"RoBERTa config {key}={value}", "error", ["inspect", "m"],
             chain(family("roberta"), lambda d, k=key, v=value: cfg(d, lambda c: c.update({k: v}))),
             needle=key)

    # -- text input with CR-only line ends
    case("predict on CR-only line endings", "ok", ["predict", "m", "--input", "e.txt"],
         write("e.txt", "John lives\rAnna visited Berlin\rPeter\r"), check=stdout_lines(3))


# ---------------------------------------------------------------- running

def snapshot(paths):
    out = {}
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            for f in sorted(p.rglob("*")):
                if f.is_file():
                    out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
            out[str(p) + "/"] = ",".join(sorted(x.name for x in p.iterdir()))
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_case(binary, c):
    with tempfile.TemporaryDirectory() as tmp:
        d = pathlib.Path(tmp)
        shutil.copytree(TINY, d / "m")
        (d / "d.txt").write_text(CONLL)
        (d / "s.txt").write_text(SENTENCES)
        if c["setup"]:
            c["setup"](d)
        watched = [d / p for p in c["inputs"]] + [d / "r.toml"]
        before = snapshot(watched)
        env = dict(os.environ, **(c["env"] or {}))
        try:
            if c["expect"] == "closed-pipe":
                reader, writer = os.pipe()
                os.close(reader)
                try:
                    r = subprocess.run([binary] + c["argv"], cwd=d, input=c["stdin"] or b"",
                                       stdout=writer, stderr=subprocess.PIPE,
                                       timeout=c["timeout"], env=env)
                finally:
                    os.close(writer)
                r.stdout = b""
            else:
                r = subprocess.run([binary] + c["argv"], cwd=d, input=c["stdin"] or b"",
                                   capture_output=True, timeout=c["timeout"], env=env)
            code, stdout, stderr = r.returncode, r.stdout.decode(errors="replace"), \
                r.stderr.decode(errors="replace")
        except subprocess.TimeoutExpired:
            return dict(outcome="hang", code=None, stderr="")
        finally:
            ro = d / "ro"
            if ro.exists():
                os.chmod(ro, 0o755)
        modified = snapshot(watched) != before
        r = argparse.Namespace(code=code, stdout=stdout, stderr=stderr)
        first = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        if modified:
            outcome = "input-modified"
        elif c["expect"] == "closed-pipe" and "panicked" not in stderr and \
                code in (0, -signal.SIGPIPE):
            outcome = "handled"
        elif code < 0:
            outcome = "abort"
        elif code == 101 or "panicked" in stderr:
            outcome = "panic"
        elif code == 2:
            needle = c["needle"] or ""
            if c["expect"] == "ok":
                outcome = "refused-valid"
            elif needle.lower() in stderr.lower() and stderr.strip():
                outcome = "clear-error"
            else:
                outcome = "unclear-error"
        elif code == 0:
            if c["expect"] == "error":
                outcome = "silent-wrong"
            else:
                problem = c["check"](d, r, binary) if c["check"] else None
                outcome = "silent-wrong" if problem else "handled"
                if problem:
                    first = problem
        elif code == 3 and c["expect"] == "budget":
            outcome = "handled"
        elif code == 1:
            outcome = "exit-1"
        else:
            outcome = f"exit-{code}"
        return dict(outcome=outcome, code=code, stderr=first[:300])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(REPO / "target/release/surgery"))
    ap.add_argument("--json")
    ap.add_argument("--only")
    args = ap.parse_args()
    binary = str(pathlib.Path(args.binary).resolve())
    global BINARY
    BINARY = binary
    build_cases()
    more_cases()
    resume_and_value_cases()
    results, counts = [], {}
    for c in CASES:
        if args.only and args.only not in c["name"]:
            continue
        res = run_case(binary, c)
        res.update(name=c["name"], expect=c["expect"], argv=c["argv"])
        results.append(res)
        counts[res["outcome"]] = counts.get(res["outcome"], 0) + 1
        print(f"{res['outcome']:15} {res['code']!s:5} {c['name']}  | {res['stderr'][:160]}",
              flush=True)
    print(json.dumps({"cases": len(results), "outcomes": counts}))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            {"cases": len(results), "outcomes": counts, "results": results}, indent=1))


if __name__ == "__main__":
    main()
