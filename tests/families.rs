//! RoBERTa, XLM-RoBERTa, CamemBERT, DistilBERT and ELECTRA checkpoints (tiny random models saved
//! by transformers, each with a tokenizer of its own kind: byte-level BPE, Unigram, WordPiece;
//! written by tools/fixtures/make_family_fixtures.py): token ids and word ids equal transformers', logits
//! within 1e-4, parameter counts equal `num_parameters()`, and outputs keep the family's layout.

use std::path::{Path, PathBuf};

use candle_core::Device;
use surgery::budget::Budget;
use surgery::data::tokenize::WordTokenizer;
use surgery::io::{Checkpoint, TensorStore};

use crate::util::{edit_config, max_abs_diff, refused_cleanly, repo, s, surgery, tempdir};

/// Every family fixture.
const FAMILIES: [&str; 5] = [
    "roberta",
    "xlm-roberta",
    "camembert",
    "distilbert",
    "electra",
];

fn fixture(name: &str) -> PathBuf {
    repo().join("fixtures/families").join(name)
}

fn reference(name: &str) -> TensorStore {
    TensorStore::open_files(&[repo()
        .join("fixtures/families")
        .join(format!("{name}.reference.safetensors"))])
    .unwrap()
}

fn i64s(store: &TensorStore, name: &str) -> Vec<i64> {
    store
        .bytes(name)
        .unwrap()
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn sentences() -> Vec<Vec<String>> {
    std::fs::read_to_string(parity_sentences())
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(' ').map(String::from).collect())
        .collect()
}

/// The sentences every family is compared on.
fn parity_sentences() -> PathBuf {
    repo().join("fixtures/parity/sentences.txt")
}

/// `surgery forward` on a file of sentences; returns the output file.
fn forward(ckpt: &Path, input: &Path, out: &Path) -> TensorStore {
    let r = surgery(&[
        "forward",
        ckpt.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}: {}", ckpt.display(), r.stderr);
    TensorStore::open_files(&[out.to_path_buf()]).unwrap()
}

/// The largest logit difference with the reference (every position, padding included).
fn logits_diff(ours: &TensorStore, theirs: &TensorStore) -> f32 {
    let cpu = Device::Cpu;
    max_abs_diff(
        &ours.load_f32("logits", &cpu).unwrap(),
        &theirs.load_f32("logits", &cpu).unwrap(),
    )
}

#[test]
fn every_family_matches_transformers_ids_logits_and_counts() {
    let dir = tempdir();
    let counts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("fixtures/families/counts.json")).unwrap(),
    )
    .unwrap();
    for name in FAMILIES {
        let theirs = reference(name);
        let ours = forward(
            &fixture(name),
            &parity_sentences(),
            &dir.path().join(format!("{name}.safetensors")),
        );
        for tensor in ["input_ids", "attention_mask"] {
            assert_eq!(ours.bytes(tensor), theirs.bytes(tensor), "{name}: {tensor}");
        }
        let diff = logits_diff(&ours, &theirs);
        eprintln!("{name}: max |logits - transformers| = {diff:e}");
        assert!(diff <= 1e-4, "{name}: {diff}");
        let ckpt = Checkpoint::open(&fixture(name)).unwrap();
        let budget = Budget::of_checkpoint(&ckpt).unwrap();
        assert_eq!(budget.total, counts[name].as_u64().unwrap(), "{name}");
    }
}

#[test]
fn word_ids_are_those_of_transformers_for_every_tokenizer_kind() {
    for name in FAMILIES {
        let ckpt = Checkpoint::open(&fixture(name)).unwrap();
        let tokenizer = WordTokenizer::from_checkpoint(&ckpt).unwrap();
        let theirs = reference(name);
        let ids = i64s(&theirs, "input_ids");
        let word_ids = i64s(&theirs, "word_ids");
        let sentences = sentences();
        let width = ids.len() / sentences.len();
        for (i, sentence) in sentences.iter().enumerate() {
            let words: Vec<&str> = sentence.iter().map(|s| s.as_str()).collect();
            let encoded = tokenizer.encode_words(&words).unwrap();
            let n = encoded.ids.len();
            let row = i * width..i * width + n;
            let expected_ids: Vec<u32> = ids[row.clone()].iter().map(|&v| v as u32).collect();
            assert_eq!(encoded.ids, expected_ids, "{name}: sentence {i}");
            let expected_words: Vec<Option<usize>> = word_ids[row]
                .iter()
                .map(|&w| (w >= 0).then_some(w as usize))
                .collect();
            assert_eq!(encoded.word_ids, expected_words, "{name}: sentence {i}");
            assert!(
                ids[i * width + n..(i + 1) * width]
                    .iter()
                    .all(|&v| v == tokenizer.pad_id() as i64),
                "{name}: the rest of the row is padding with our pad id"
            );
        }
    }
}

#[test]
fn an_unsupported_model_type_is_refused_naming_it_and_the_supported_ones() {
    let dir = tempdir();
    let copy = dir.path().join("deberta");
    std::fs::create_dir(&copy).unwrap();
    for file in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("roberta").join(file), copy.join(file)).unwrap();
    }
    let config = std::fs::read_to_string(fixture("roberta").join("config.json")).unwrap();
    let config = config.replace(
        "\"model_type\": \"roberta\"",
        "\"model_type\": \"deberta-v2\"",
    );
    std::fs::write(copy.join("config.json"), config).unwrap();
    let r = surgery(&["inspect", copy.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    for wanted in [
        "deberta-v2",
        "config.json",
        "roberta",
        "xlm-roberta",
        "distilbert",
    ] {
        assert!(r.stderr.contains(wanted), "{wanted}: {}", r.stderr);
    }
}

/// The names of an exported graph's inputs.
fn graph_inputs(export: &Path) -> Vec<String> {
    use prost::Message;
    let bytes = std::fs::read(export.join("model.onnx")).unwrap();
    let model = surgery::export::onnx_proto::ModelProto::decode(bytes.as_slice()).unwrap();
    let graph = model.graph.unwrap();
    graph
        .input
        .iter()
        .map(|i| i.name.clone().unwrap())
        .collect()
}

/// The stored tensor names and config keys of an output folder.
fn names_and_config(dir: &Path) -> (Vec<String>, serde_json::Value) {
    let store = TensorStore::open_files(&[dir.join("model.safetensors")]).unwrap();
    let names = store.names().map(String::from).collect();
    let config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    (names, config)
}

/// The layout checks of one family's output: its prefix on every encoder tensor, its
/// `model_type`, and DistilBERT's own config keys.
fn assert_family_layout(name: &str, dir: &Path) {
    let (names, config) = names_and_config(dir);
    let prefix = match name {
        "distilbert" => "distilbert.",
        "electra" => "electra.",
        _ => "roberta.",
    };
    assert!(
        names
            .iter()
            .all(|n| n.starts_with(prefix) || n.starts_with("classifier.")),
        "{name}: {names:?}"
    );
    assert_eq!(config["model_type"], name, "{name}");
    if name == "distilbert" {
        assert!(config.get("dim").is_some() && config.get("hidden_size").is_none());
        assert!(names
            .iter()
            .any(|n| n.contains("transformer.layer.0.ffn.lin1")));
    }
    if name == "electra" {
        assert!(names
            .iter()
            .any(|n| n == "electra.embeddings_project.weight"));
    }
}

#[test]
fn a_chain_of_surgeries_then_export_runs_on_every_family_with_onnx_runtime_parity() {
    let dir = tempdir();
    let ort = crate::export::onnxruntime_available();
    for name in FAMILIES {
        let step = |n: &str| dir.path().join(format!("{name}-{n}"));
        let mut input = fixture(name);
        for (op, args) in [
            ("factorize-embeddings", vec!["--rank", "8"]),
            ("remove-heads", vec!["--heads", "0:1;1:0,2"]),
            ("lowrank-layers", vec!["--rank", "4"]),
        ] {
            let out = step(op);
            let mut argv = vec![op, input.to_str().unwrap(), out.to_str().unwrap()];
            argv.extend(args);
            let r = surgery(&argv);
            assert_eq!(r.code, 0, "{name} {op}: {}", r.stderr);
            assert_family_layout(name, &out);
            input = out;
        }
        let forward_out = step("forward.safetensors");
        forward(&input, &parity_sentences(), &forward_out);
        let export = step("onnx");
        let r = surgery(&["export", input.to_str().unwrap(), export.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{name} export: {}", r.stderr);
        let inputs = graph_inputs(&export);
        let expected: &[&str] = if name == "electra" {
            &["input_ids", "attention_mask", "token_type_ids"]
        } else {
            &["input_ids", "attention_mask"]
        };
        assert_eq!(inputs, expected, "{name}");
        if ort {
            let result = crate::export::ort_logits(&export, &forward_out, 1e-4);
            eprintln!("{name}: ONNX Runtime vs surgery forward: {result}");
            assert_eq!(result["checker"], "ok", "{name}: {result}");
            assert_eq!(result["argmax_agreement"], 1.0, "{name}: {result}");
        }
    }
}

/// Synthetic sentences with the fixtures' labels (PER and LOC; other types become O), written to
/// `dir/name.txt`.
fn per_and_loc(dir: &Path, name: &str, n: usize, seed: u64) -> PathBuf {
    let path = dir.join(format!("{name}.txt"));
    surgery::data::synthetic::write_conll(
        &path,
        &surgery::data::synthetic::sentences(n, seed, name != "train"),
    )
    .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let relabelled: String = text
        .lines()
        .map(|line| match line.rsplit_once(' ') {
            Some((word, tag)) if tag.ends_with("ORG") || tag.ends_with("MISC") => {
                format!("{word} O\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    std::fs::write(&path, relabelled).unwrap();
    path
}

#[test]
fn a_roberta_teacher_fine_tunes_and_distils_into_a_distilbert_student() {
    let dir = tempdir();
    let data = |name: &str, n, seed| per_and_loc(dir.path(), name, n, seed);
    let (train, dev) = (data("train", 96, 1), data("dev", 24, 2));
    let run = |args: Vec<String>, fixture_or_model: &Path, out: &Path| -> PathBuf {
        let mut argv = args;
        argv.push(fixture_or_model.to_str().unwrap().into());
        argv.extend(
            [
                "--train",
                train.to_str().unwrap(),
                "--dev",
                dev.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--lr",
                "1e-3",
            ]
            .map(String::from),
        );
        let r = surgery(&argv.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        assert_eq!(r.code, 0, "{argv:?}: {}", r.stderr);
        out.join("best")
    };
    let finetune = || {
        vec![
            "train".to_string(),
            "finetune".into(),
            "--reinit-classifier".into(),
        ]
    };
    // Both get the data's labels (in its order) by a fine-tune; then the DistilBERT student (own
    // WordPiece tokenizer) learns from the RoBERTa teacher (byte-level BPE), word by word.
    let teacher = run(finetune(), &fixture("roberta"), &dir.path().join("teacher"));
    assert_family_layout("roberta", &teacher);
    let student_start = run(
        finetune(),
        &fixture("distilbert"),
        &dir.path().join("start"),
    );
    let distill = vec![
        "train".to_string(),
        "distill".into(),
        "--teacher".into(),
        teacher.to_str().unwrap().into(),
    ];
    let student_run = dir.path().join("student");
    run(distill, &student_start, &student_run);
    let student = student_run.join("best");
    assert_family_layout("distilbert", &student);
    // The student was trained: steps ran and every logged loss is finite.
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(student_run.join("run.json")).unwrap())
            .unwrap();
    assert!(record["steps"].as_u64().unwrap() > 0, "{record}");
    let metrics = std::fs::read_to_string(student_run.join("metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|m| m.get("loss").and_then(|v| v.as_f64()))
        .collect();
    assert!(
        !losses.is_empty() && losses.iter().all(|l| l.is_finite()),
        "{metrics}"
    );
    // Every command reads the result.
    let r = surgery(&[
        "eval",
        student.to_str().unwrap(),
        "--data",
        dev.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn prune_vocab_keeps_the_pieces_and_logits_of_the_kept_corpus_for_bpe_unigram_and_wordpiece() {
    let dir = tempdir();
    let kept: Vec<Vec<String>> = sentences().into_iter().take(7).collect();
    let corpus = dir.path().join("corpus.txt");
    let conll: String = kept
        .iter()
        .map(|s| s.iter().map(|w| format!("{w} O\n")).collect::<String>() + "\n")
        .collect();
    std::fs::write(&corpus, conll).unwrap();
    let plain = dir.path().join("kept.txt");
    std::fs::write(
        &plain,
        kept.iter().map(|s| s.join(" ") + "\n").collect::<String>(),
    )
    .unwrap();
    for name in ["roberta", "xlm-roberta", "distilbert"] {
        let pruned = dir.path().join(format!("{name}-pruned"));
        let r = surgery(&[
            "prune-vocab",
            fixture(name).to_str().unwrap(),
            pruned.to_str().unwrap(),
            "--corpus",
            corpus.to_str().unwrap(),
        ]);
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        assert_family_layout(name, &pruned);
        let before = Checkpoint::open(&fixture(name)).unwrap();
        let after = Checkpoint::open(&pruned).unwrap();
        assert!(
            after.arch.vocab < before.arch.vocab,
            "{name}: {} → {}",
            before.arch.vocab,
            after.arch.vocab
        );
        eprintln!(
            "{name}: {} → {} pieces",
            before.arch.vocab, after.arch.vocab
        );
        // The same pieces on every kept sentence.
        let load =
            |dir: &Path| tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let (old, new) = (load(&fixture(name)), load(&pruned));
        for sentence in &kept {
            let words: Vec<&str> = sentence.iter().map(|s| s.as_str()).collect();
            let a = old.encode(words.clone(), true).unwrap();
            let b = new.encode(words, true).unwrap();
            assert_eq!(a.get_tokens(), b.get_tokens(), "{name}: {sentence:?}");
        }
        // The same logits.
        let a = forward(
            &fixture(name),
            &plain,
            &dir.path().join(format!("{name}-a.safetensors")),
        );
        let b = forward(
            &pruned,
            &plain,
            &dir.path().join(format!("{name}-b.safetensors")),
        );
        let diff = logits_diff(&a, &b);
        assert!(diff <= 1e-6, "{name}: {diff}");
    }
}

/// The fraction of exact zeros in the encoder linears' weights of an output folder.
fn encoder_zeros(dir: &Path) -> f64 {
    let store = TensorStore::open_files(&[dir.join("model.safetensors")]).unwrap();
    let (mut zeros, mut total) = (0usize, 0usize);
    for name in store.names() {
        let linear = name.contains(".layer.")
            && name.ends_with(".weight")
            && !name.contains("LayerNorm")
            && !name.contains("layer_norm");
        if linear {
            let values = store.load_f32(name, &Device::Cpu).unwrap();
            let values = values.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            zeros += values.iter().filter(|v| **v == 0.0).count();
            total += values.len();
        }
    }
    zeros as f64 / total as f64
}

/// The per-family commands the surgery chain does not take: head gates trained for a few steps
/// (their file read back by remove-heads), raw-text prediction, SparseGPT, layer sharing and
/// dropping. Each output keeps its family's layout and runs.
#[test]
fn every_family_trains_gates_predicts_and_takes_sparsegpt_tie_and_drop_layers() {
    let dir = tempdir();
    let train = per_and_loc(dir.path(), "train", 32, 1);
    let dev = per_and_loc(dir.path(), "dev", 8, 2);
    let text = dir.path().join("text.txt");
    let passages = [
        "John Smith lives in Paris.",
        "Anna visited Berlin and London with Mary Jones.",
        "nothing to see here",
    ];
    std::fs::write(&text, passages.join("\n") + "\n").unwrap();
    let p = |p: &Path| p.to_str().unwrap().to_string();
    for name in FAMILIES {
        let step = |n: &str| dir.path().join(format!("{name}-{n}"));
        let run = |args: Vec<String>| {
            let r = surgery(&args.iter().map(String::as_str).collect::<Vec<_>>());
            assert_eq!(r.code, 0, "{name}: {args:?}: {}", r.stderr);
            r
        };
        let fixture = p(&fixture(name));

        // Head gates: a few steps, then the gates file drives remove-heads.
        let gates = step("gates");
        run([
            "train",
            "gates",
            &fixture,
            "--l0",
            "0.5",
            "--train",
            &p(&train),
            "--dev",
            &p(&dev),
            "--out",
            &p(&gates),
            "--reinit-classifier",
            "--max-steps",
            "3",
            "--batch-size",
            "8",
            "--eval-every",
            "3",
            "--lr",
            "1e-3",
        ]
        .map(String::from)
        .to_vec());
        assert_family_layout(name, &gates.join("best"));
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(gates.join("gates.json")).unwrap())
                .unwrap();
        assert_eq!(file["gates"].as_array().unwrap().len(), 2, "{name}: {file}");
        let pruned = step("gated");
        run([
            "remove-heads",
            &p(&gates.join("best")),
            &p(&pruned),
            "--gates",
            &p(&gates.join("gates.json")),
            "--keep",
            "6",
            "--by",
            "gates",
        ]
        .map(String::from)
        .to_vec());
        assert_family_layout(name, &pruned);

        // Prediction on raw text: one answer per passage, spans that quote the passage.
        let r = run(["predict", &fixture, "--input", &p(&text)]
            .map(String::from)
            .to_vec());
        let answers: Vec<serde_json::Value> = r
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(answers.len(), passages.len(), "{name}: {}", r.stdout);
        for (answer, passage) in answers.iter().zip(passages) {
            assert_eq!(answer["text"], passage, "{name}");
            let chars: Vec<char> = passage.chars().collect();
            for e in answer["entities"].as_array().unwrap() {
                let (start, end) = (e["start"].as_u64().unwrap(), e["end"].as_u64().unwrap());
                let quoted: String = chars[start as usize..end as usize].iter().collect();
                assert_eq!(e["text"], quoted.as_str(), "{name}: {e}");
                assert!(
                    ["PER", "LOC"].contains(&e["type"].as_str().unwrap()),
                    "{name}: {e}"
                );
            }
        }

        // SparseGPT at 50%: half of every encoder linear is zero, and the model still runs.
        let sparse = step("sparsegpt");
        run([
            "sparsegpt",
            &fixture,
            &p(&sparse),
            "--sparsity",
            "0.5",
            "--calib",
            &p(&train),
            "--calib-sentences",
            "16",
        ]
        .map(String::from)
        .to_vec());
        assert_family_layout(name, &sparse);
        let zeros = encoder_zeros(&sparse);
        assert!((0.45..0.55).contains(&zeros), "{name}: {zeros}");

        // Shared and dropped layers.
        for (op, extra, layers) in [
            ("tie-layers", vec!["--share-all"], 2),
            ("drop-layers", vec!["--keep", "1"], 1),
        ] {
            let out = step(op);
            let mut args = vec![op.to_string(), fixture.clone(), p(&out)];
            args.extend(extra.iter().map(|s| s.to_string()));
            run(args);
            assert_family_layout(name, &out);
            let ckpt = Checkpoint::open(&out).unwrap();
            assert_eq!(ckpt.arch.num_layers(), layers, "{name} {op}");
            assert_eq!(ckpt.arch.layers.len(), 1, "{name} {op}: one stored layer");
            forward(
                &out,
                &parity_sentences(),
                &step(&format!("{op}.safetensors")),
            );
        }
    }
}

/// `export --quantize int8` of every family in ONNX Runtime: the linears really are int8
/// (`MatMulInteger`), and the logits stay within 2% of the largest f32 logit, with the same
/// predicted label almost everywhere.
#[test]
fn every_family_exports_to_int8_with_onnx_runtime_parity() {
    use prost::Message;
    let dir = tempdir();
    let ort = crate::export::onnxruntime_available();
    for name in FAMILIES {
        let export = dir.path().join(format!("{name}-int8"));
        let r = surgery(&[
            "export",
            fixture(name).to_str().unwrap(),
            export.to_str().unwrap(),
            "--quantize",
            "int8",
        ]);
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        assert_eq!(graph_inputs(&export)[0], "input_ids", "{name}");
        let bytes = std::fs::read(export.join("model.onnx")).unwrap();
        let model = surgery::export::onnx_proto::ModelProto::decode(bytes.as_slice()).unwrap();
        let ops: Vec<String> = model
            .graph
            .unwrap()
            .node
            .iter()
            .map(|n| n.op_type.clone().unwrap())
            .collect();
        assert!(ops.iter().any(|o| o == "MatMulInteger"), "{name}: {ops:?}");
        if !ort {
            continue;
        }
        let reference = dir.path().join(format!("{name}.safetensors"));
        let ours = forward(&fixture(name), &parity_sentences(), &reference);
        let largest = crate::util::max_abs(&ours.load_f32("logits", &Device::Cpu).unwrap()) as f64;
        let result = crate::export::ort_logits(&export, &reference, 0.02 * largest);
        eprintln!("{name}: int8 ONNX Runtime vs f32 surgery forward: {result}");
        assert_eq!(result["checker"], "ok", "{name}: {result}");
        let diff = result["max_abs_diff"].as_f64().unwrap();
        assert!(diff > 0.0, "{name}: int8 changed nothing: {result}");
        assert!(
            result["argmax_agreement"].as_f64().unwrap() >= 0.98,
            "{name}: {result}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Family configs and text input.
/// A copy of the committed tiny RoBERTa with `edit` applied to its config.json.
fn roberta_with(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let m = dir.join("roberta");
    std::fs::create_dir_all(&m).unwrap();
    let fixture = crate::util::repo().join("fixtures/families/roberta");
    for file in std::fs::read_dir(&fixture).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), m.join(file.file_name())).unwrap();
    }
    edit_config(&m, edit);
    m
}

#[test]
fn family_configs_with_impossible_values_are_refused_at_load_naming_the_key() {
    let dir = tempdir();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("pad_token_id", serde_json::json!(320), "pad_token_id"),
        ("pad_token_id", serde_json::json!(1_000_000), "pad_token_id"),
        (
            "max_position_embeddings",
            serde_json::json!(3),
            "max_position_embeddings",
        ),
        (
            "max_position_embeddings",
            serde_json::json!(4),
            "max_position_embeddings",
        ),
        ("model_type", serde_json::json!(5), "model_type"),
        ("hidden_act", serde_json::json!(5), "hidden_act"),
    ];
    for (i, (key, value, needle)) in cases.into_iter().enumerate() {
        let sub = dir.path().join(i.to_string());
        let m = roberta_with(&sub, |c| c[key] = value.clone());
        let r = surgery(&["inspect", s(&m)]);
        refused_cleanly(&r, needle);
        assert!(r.stderr.contains("config.json"), "{key}: {}", r.stderr);
    }
}
