//! Hostile inputs, one regression test per case: option values that used to panic or act
//! silently, damaged checkpoints (non-finite weights, a tokenizer or labels that do not fit,
//! invalid safetensors layouts, shard paths leaving the folder), endless or binary data, outputs
//! of one kind written over another kind, and recipes or resumed runs whose inputs changed.
//! Each must end in a clear exit-2 error (or the right behaviour), never a panic or a hang.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use surgery::arch::{Key, Layout, NormPart};

use crate::distill::kd;
use crate::reliability::{assert_refused, model, s};
use crate::train::{overflowing_model, quick_spec, setup, Setup};
use crate::util::{save, surgery, tempdir, tiny_checkpoint, tiny_config, Output};

/// `train finetune` of the setup's model on `train` into `out`, batch 16, then `extra`.
fn finetune_args(s_: &Setup, train: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let base = [
        "train",
        "finetune",
        s(&s_.model),
        "--train",
        s(train),
        "--dev",
        s(&s_.data.dev),
        "--out",
        s(out),
        "--batch-size",
        "16",
    ];
    base.iter().chain(extra).map(|a| a.to_string()).collect()
}

/// `command` (`train KIND MODEL …`) on `data` as training and dev set, into `out`, for
/// `max_steps` steps with a fresh classifier.
fn short_training(command: &[&str], data: &str, out: &str, max_steps: &str) -> Vec<String> {
    let data_and_out = [
        "--train",
        data,
        "--dev",
        data,
        "--out",
        out,
        "--reinit-classifier",
    ];
    (command
        .iter()
        .chain(&data_and_out)
        .chain(&["--max-steps", max_steps]))
    .map(|a| a.to_string())
    .collect()
}

/// Refused with exit 2 naming `needle`, and without a panic message.
fn refused_cleanly(r: &Output, needle: &str) {
    assert_refused(r, needle);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

/// A labelled CoNLL file the tiny tokenizer can encode.
fn conll(dir: &Path) -> PathBuf {
    let path = dir.join("data.txt");
    std::fs::write(
        &path,
        "John B-PER\nlives O\nin O\nParis B-LOC\n\nAnna B-PER\n",
    )
    .unwrap();
    path
}

/// Writes `dir/r.toml`: `head` (with `MODEL` replaced by the tiny model's folder) and one
/// `drop-layers` step named `ev` (two edits from `99`) reading `input`.
fn recipe(dir: &Path, m: &Path, head: &str, input: &str) -> PathBuf {
    let path = dir.join("r.toml");
    let head = head.replace("MODEL", &m.display().to_string());
    let input = input.replace("MODEL", &m.display().to_string());
    let text = format!("{head}[[step]]\nname = \"ev\"\nkind = \"drop-layers\"\ninput = \"{input}\"\nkeep = \"0\"\n");
    std::fs::write(&path, text).unwrap();
    path
}

/// Rewrites `config.json` of a checkpoint folder through `edit`.
fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// The header and data section of a safetensors file.
fn split_safetensors(path: &Path) -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

fn join_safetensors(path: &Path, header: &serde_json::Map<String, serde_json::Value>, data: &[u8]) {
    let text = serde_json::to_vec(header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(data);
    std::fs::write(path, out).unwrap();
}

/// Runs the binary with a wall-clock limit; a command still running after it is a hang.
fn surgery_within(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_surgery"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("`surgery {}` still running after {limit:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn batch_size_zero_is_refused_by_forward_eval_and_predict() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let sentences = dir.path().join("s.txt");
    std::fs::write(&sentences, "John lives in Paris\n").unwrap();
    let out = dir.path().join("o.safetensors");
    for args in [
        vec!["forward", s(&m), "--input", s(&sentences), "--out", s(&out)],
        vec!["eval", s(&m), "--data", s(&data)],
        vec!["predict", s(&m), "--input", s(&sentences)],
    ] {
        let mut args = args.clone();
        args.extend(["--batch-size", "0"]);
        let r = surgery(&args);
        refused_cleanly(&r, "--batch-size");
    }
    assert!(!out.exists());
}

#[test]
fn a_recipe_variable_holding_nul_is_reported_not_a_panic() {
    let dir = tempdir();
    let m = model(dir.path());
    let recipe = recipe(
        dir.path(),
        &m,
        "[vars]\nmodel = \"MODEL\"\nx = \"\\u0000\"\n",
        "${model}${x}",
    );
    let runs = dir.path().join("runs");
    for extra in [&["--dry-run"][..], &[][..]] {
        let mut args = vec!["run", s(&recipe), "--runs", s(&runs)];
        args.extend(extra);
        let r = surgery(&args);
        refused_cleanly(&r, "NUL character");
    }
}

#[test]
fn eval_on_dev_zero_and_dev_urandom_fails_fast() {
    let dir = tempdir();
    let m = model(dir.path());
    for device in ["/dev/zero", "/dev/urandom"] {
        // The limit only tells a hang (reading an endless file) from a refusal.
        let r = surgery_within(&["eval", s(&m), "--data", device], Duration::from_secs(120));
        assert_refused(&r, device);
        assert!(
            r.stderr.contains("binary file") || r.stderr.contains("longer than"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn a_line_longer_than_the_limit_is_refused_and_errors_quote_only_part_of_it() {
    let dir = tempdir();
    let m = model(dir.path());
    // One 60 kB word without a tag: the message quotes at most ~200 characters of it.
    let data = dir.path().join("long.txt");
    std::fs::write(&data, format!("{}\n", "x".repeat(60_000))).unwrap();
    let r = surgery(&["eval", s(&m), "--data", s(&data)]);
    assert_refused(&r, "60000 characters");
    assert!(r.stderr.len() < 1_500, "{} bytes of stderr", r.stderr.len());
    // A line over the 1 MiB limit.
    std::fs::write(&data, format!("{} B-PER\n", "x".repeat(2 << 20))).unwrap();
    let r = surgery(&["eval", s(&m), "--data", s(&data)]);
    assert_refused(&r, "longer than 1 MiB");
    assert!(r.stderr.len() < 1_500);
}

#[test]
fn predict_streams_answers_line_by_line() {
    let dir = tempdir();
    let m = model(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_surgery"))
        .args(["predict", s(&m)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // The answer to the first line comes while standard input is still open.
    writeln!(stdin, "John lives in Paris").unwrap();
    stdin.flush().unwrap();
    // The limit only tells an answer per line from one at the end of the input.
    let first = rx.recv_timeout(Duration::from_secs(120));
    writeln!(stdin, "Anna").unwrap();
    drop(stdin);
    let first = first.expect("no answer before the end of the input");
    assert!(first.contains("John lives in Paris"), "{first}");
    let second = rx.recv_timeout(Duration::from_secs(120)).unwrap();
    assert!(second.contains("Anna"), "{second}");
    assert!(child.wait().unwrap().success());
}

#[test]
fn predict_drops_control_and_format_characters() {
    let dir = tempdir();
    let m = model(dir.path());
    let input = dir.path().join("in.txt");
    // BEL, NUL, zero-width space, BOM, bidi marks, a zero-width joiner: no words at all.
    std::fs::write(
        &input,
        "\u{7}\u{0} \u{200b}\u{feff} \u{200e}\u{202e} \u{200d}\u{2066}\nJohn\n",
    )
    .unwrap();
    let r = surgery(&["predict", s(&m), "--input", s(&input)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["entities"], serde_json::json!([]));
}

#[test]
fn non_finite_weights_are_refused_by_every_command_naming_tensor_and_file() {
    let dir = tempdir();
    let mut ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 3);
    let key = Key::EmbeddingNorm(NormPart::Weight);
    let mut values = ckpt
        .tensor(key, &Device::Cpu)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    values[5] = f32::NAN;
    ckpt.set_tensor(key, Tensor::new(values, &Device::Cpu).unwrap());
    let m = save(&ckpt, dir.path(), "nan");
    let data = conll(dir.path());
    let out = dir.path().join("out");
    for args in [
        vec!["eval", s(&m), "--data", s(&data)],
        vec!["export", s(&m), s(&out)],
        vec!["drop-layers", s(&m), s(&out), "--keep", "0"],
        vec!["inspect", s(&m)],
    ] {
        let r = surgery(&args);
        assert_refused(
            &r,
            "embeddings.LayerNorm.weight` holds a NaN or infinite value",
        );
        assert!(r.stderr.contains("model.safetensors"), "{}", r.stderr);
    }
    assert!(!out.exists());
}

#[test]
fn a_tokenizer_larger_than_the_embeddings_is_refused_at_load() {
    let dir = tempdir();
    let mut config = tiny_config();
    config.vocab_size = 100; // the tiny tokenizer has 177 pieces
    let m = save(&tiny_checkpoint(config, Layout::Bare, 3), dir.path(), "m");
    let data = conll(dir.path());
    let student = dir.path().join("student");
    for args in [
        vec!["eval", s(&m), "--data", s(&data)],
        vec!["export", s(&m), s(&dir.path().join("onnx"))],
        vec![
            "init-student",
            s(&student),
            "--like",
            s(&m),
            "--layers",
            "1",
            "--hidden",
            "16",
            "--heads",
            "4",
            "--intermediate",
            "24",
        ],
    ] {
        let r = surgery(&args);
        refused_cleanly(&r, "embeddings have 100 rows");
    }
}

#[test]
fn export_without_a_tokenizer_is_refused() {
    let dir = tempdir();
    let m = model(dir.path());
    std::fs::remove_file(m.join("tokenizer.json")).unwrap();
    let out = dir.path().join("onnx");
    let r = surgery(&["export", s(&m), s(&out)]);
    assert_refused(&r, "no tokenizer.json");
    assert!(!out.exists());
}

#[test]
fn labels_outside_the_tag_grammar_are_refused_at_load() {
    let dir = tempdir();
    let data = conll(dir.path());
    let cases: [(&str, fn(&mut serde_json::Value)); 4] = [
        ("MISC", |v| v["id2label"]["1"] = "MISC".into()),
        ("no `O` label", |v| {
            v["id2label"]["0"] = "B-ORG".into();
            v["label2id"] = serde_json::Value::Null;
        }),
        ("contradicts", |v| v["label2id"]["B-PER"] = 3.into()),
        ("appears twice", |v| {
            v["id2label"]["2"] = "B-PER".into();
            v["label2id"] = serde_json::Value::Null;
        }),
    ];
    for (i, (needle, edit)) in cases.into_iter().enumerate() {
        let m = save(
            &tiny_checkpoint(tiny_config(), Layout::Bare, 3),
            dir.path(),
            &format!("m{i}"),
        );
        edit_config(&m, edit);
        let r = surgery(&["eval", s(&m), "--data", s(&data)]);
        assert_refused(&r, needle);
        assert!(r.stderr.contains("config.json"), "{}", r.stderr);
    }
}

#[test]
fn config_dropout_outside_zero_to_one_is_refused() {
    let dir = tempdir();
    let m = model(dir.path());
    for (key, value) in [
        ("hidden_dropout_prob", 2.0),
        ("attention_probs_dropout_prob", -0.5),
        ("classifier_dropout", 1.0),
    ] {
        edit_config(&m, |v| v[key] = value.into());
        let r = surgery(&["inspect", s(&m)]);
        assert_refused(&r, key);
        edit_config(&m, |v| v[key] = 0.1.into());
    }
    assert_eq!(surgery(&["inspect", s(&m)]).code, 0);
}

#[test]
fn safetensors_with_overlapping_offsets_trailing_bytes_or_huge_shapes_are_refused() {
    let dir = tempdir();
    let m = model(dir.path());
    let file = m.join("model.safetensors");
    let (header, data) = split_safetensors(&file);
    // Two LayerNorm tensors of the same size: the second made to read the first one's bytes.
    let a = "embeddings.LayerNorm.weight";
    let b = "embeddings.LayerNorm.bias";
    let mut overlapping = header.clone();
    overlapping[b]["data_offsets"] = header[a]["data_offsets"].clone();
    join_safetensors(&file, &overlapping, &data);
    let r = surgery(&["inspect", s(&m)]);
    assert_refused(&r, "invalid safetensors file");
    // Trailing bytes after the last tensor.
    let mut trailing = data.clone();
    trailing.extend([0u8; 16]);
    join_safetensors(&file, &header, &trailing);
    assert_refused(&surgery(&["inspect", s(&m)]), "16 trailing bytes");
    // A shape whose byte count overflows is reported as such, not as "needs 0".
    let mut huge = header.clone();
    huge[a]["shape"] = serde_json::json!([1u64 << 62, 1u64 << 62]);
    join_safetensors(&file, &huge, &data);
    let r = surgery(&["inspect", s(&m)]);
    assert_refused(&r, "more bytes than a file can hold");
    assert!(!r.stderr.contains("needs 0"), "{}", r.stderr);
    // The original layout still loads.
    join_safetensors(&file, &header, &data);
    assert_eq!(surgery(&["inspect", s(&m)]).code, 0);
}

#[test]
fn a_shard_index_naming_a_file_outside_the_folder_is_refused() {
    let dir = tempdir();
    let m = model(dir.path());
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::rename(m.join("model.safetensors"), other.join("model.safetensors")).unwrap();
    let (header, _) = split_safetensors(&other.join("model.safetensors"));
    let map: BTreeMap<&String, &str> = header
        .keys()
        .filter(|k| *k != "__metadata__")
        .map(|k| (k, "../other/model.safetensors"))
        .collect();
    std::fs::write(
        m.join("model.safetensors.index.json"),
        serde_json::json!({ "weight_map": map }).to_string(),
    )
    .unwrap();
    let r = surgery(&["inspect", s(&m)]);
    assert_refused(&r, "not a file name in this folder");
    let map: BTreeMap<&String, &str> = map.keys().map(|k| (*k, "/etc/passwd")).collect();
    std::fs::write(
        m.join("model.safetensors.index.json"),
        serde_json::json!({ "weight_map": map }).to_string(),
    )
    .unwrap();
    assert_refused(
        &surgery(&["inspect", s(&m)]),
        "not a file name in this folder",
    );
}

#[test]
fn force_replaces_only_an_output_of_the_same_kind() {
    let dir = tempdir();
    let m = model(dir.path());
    let other = model(&dir.path().join("o"));
    let data = conll(dir.path());
    let sentences = dir.path().join("s.txt");
    std::fs::write(&sentences, "John lives in Paris\n").unwrap();
    let export = dir.path().join("onnx");
    assert_eq!(surgery(&["export", s(&m), s(&export)]).code, 0);
    let weights = other.join("model.safetensors");
    let labels = export.join("labels.json");
    let before = [
        std::fs::read(&weights).unwrap(),
        std::fs::read(&labels).unwrap(),
    ];
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", s(&m), "--data", s(&data), "--force"];
        args.extend(extra);
        surgery(&args)
    };
    let forward = |out: &Path| {
        surgery(&[
            "forward",
            s(&m),
            "--input",
            s(&sentences),
            "--out",
            s(out),
            "--force",
        ])
    };
    assert_refused(
        &eval(&["--write-predictions", s(&weights)]),
        "is not a predictions file",
    );
    assert_refused(&forward(&weights), "is not an output of `surgery forward`");
    assert_refused(
        &eval(&["--save-json", s(&labels)]),
        "is not an evaluation record",
    );
    assert_refused(
        &eval(&["--save-json", s(&weights)]),
        "is not an evaluation record",
    );
    assert_eq!(std::fs::read(&weights).unwrap(), before[0]);
    assert_eq!(std::fs::read(&labels).unwrap(), before[1]);
    // Each kind may replace itself.
    let (p, j, f) = (
        dir.path().join("p.txt"),
        dir.path().join("e.json"),
        dir.path().join("f.safetensors"),
    );
    for _ in 0..2 {
        let r = eval(&["--write-predictions", s(&p), "--save-json", s(&j)]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(forward(&f).code, 0);
    }
    // ...but not one another.
    assert_refused(
        &eval(&["--save-json", s(&p)]),
        "is not an evaluation record",
    );
    assert_refused(&forward(&j), "is not an output of `surgery forward`");
}

#[test]
fn cache_teacher_inside_an_input_folder_is_refused() {
    let s_ = setup(32);
    let teacher = s_.model.clone();
    let before = std::fs::read_dir(&teacher).unwrap().count();
    for cache in [teacher.clone(), teacher.join("cache")] {
        let r = surgery(&[
            "train",
            "distill",
            s(&s_.model),
            "--teacher",
            s(&teacher),
            "--cache-teacher",
            s(&cache),
            "--train",
            s(&s_.data.train),
            "--dev",
            s(&s_.data.dev),
            "--out",
            s(&s_.dir.path().join("run")),
        ]);
        assert_refused(&r, "lies inside the input");
    }
    assert_eq!(std::fs::read_dir(&teacher).unwrap().count(), before);
}

/// Every numeric option refuses the values outside its domain at parse time, naming itself.
#[test]
fn numeric_options_refuse_zero_negative_nan_inf_and_huge_values() {
    let dir = tempdir();
    let m = dir.path().join("missing");
    let out = dir.path().join("out");
    let (ms, os) = (s(&m), s(&out));
    let t = ["--train", "t", "--dev", "d", "--out", os];
    let finetune: Vec<&str> = [&["train", "finetune", ms][..], &t].concat();
    let distill: Vec<&str> = [&["train", "distill", ms, "--teacher", ms][..], &t].concat();
    let gates: Vec<&str> = [&["train", "gates", ms, "--l0", "1"][..], &t].concat();
    let sparsegpt = ["sparsegpt", ms, os, "--calib", "c", "--sparsity", "0.5"];
    let bad_everywhere = ["0", "-1", "NaN", "inf", "1e400"];
    let cases: Vec<(Vec<&str>, &str, &[&str])> = vec![
        (
            vec!["forward", ms, "--input", "i", "--out", os],
            "--batch-size",
            &["0", "-1", "NaN", "1e30"],
        ),
        (
            vec!["eval", ms, "--data", "d"],
            "--batch-size",
            &["0", "-1", "NaN", "1e30"],
        ),
        (
            vec!["eval", ms, "--data", "d"],
            "--max-len",
            &["0", "2", "-1", "NaN", "100000000"],
        ),
        (vec!["predict", ms], "--batch-size", &["0", "-1", "inf"]),
        (
            vec![
                "remove-heads",
                ms,
                os,
                "--keep",
                "1",
                "--by",
                "importance",
                "--data",
                "d",
            ],
            "--data-sentences",
            &["0", "-1", "NaN"],
        ),
        (sparsegpt.to_vec(), "--block", &["0", "-1", "NaN"]),
        (sparsegpt.to_vec(), "--damp", &bad_everywhere),
        (sparsegpt.to_vec(), "--calib-sentences", &["0", "-1"]),
        (
            vec!["sparsegpt", ms, os, "--calib", "c"],
            "--sparsity",
            &["0", "1", "-1", "NaN", "inf"],
        ),
        (
            vec!["magnitude", ms, os],
            "--sparsity",
            &["0", "1", "-1", "NaN", "inf"],
        ),
        (
            vec!["lowrank-layers", ms, os, "--rank", "2"],
            "--damp",
            &bad_everywhere,
        ),
        (
            vec!["lowrank-layers", ms, os],
            "--energy",
            &["0", "-1", "1.5", "NaN", "inf"],
        ),
        (
            vec!["lowrank-layers", ms, os],
            "--rank",
            &["0", "-1", "NaN"],
        ),
        (
            vec!["factorize-embeddings", ms, os],
            "--rank",
            &["0", "-1", "NaN"],
        ),
        (
            vec!["remove-heads", ms, os, "--gates", "g"],
            "--threshold",
            &["-1", "2", "NaN", "inf"],
        ),
        (finetune.clone(), "--weight-decay", &["-1", "NaN", "inf"]),
        (finetune.clone(), "--max-grad-norm", &["-1", "NaN", "inf"]),
        (finetune.clone(), "--lr", &bad_everywhere),
        (
            finetune.clone(),
            "--warmup-ratio",
            &["-1", "1", "NaN", "inf"],
        ),
        (
            finetune.clone(),
            "--label-smoothing",
            &["-1", "1", "NaN", "inf"],
        ),
        (finetune.clone(), "--epochs", &["0", "-1", "NaN"]),
        (finetune.clone(), "--batch-size", &["0", "-1", "NaN"]),
        (finetune.clone(), "--eval-batch-size", &["0", "-1"]),
        (finetune.clone(), "--grad-accum", &["0", "-1"]),
        (finetune.clone(), "--max-len", &["0", "-1", "100000000"]),
        (distill.clone(), "--hidden-weight", &["-1", "NaN", "inf"]),
        (distill.clone(), "--attention-weight", &["-1", "NaN", "inf"]),
        (distill.clone(), "--temperature", &bad_everywhere),
        (distill.clone(), "--alpha", &["-1", "2", "NaN", "inf"]),
        (distill.clone(), "--augment-ratio", &bad_everywhere),
        (gates.clone(), "--gate-lr", &bad_everywhere),
        (gates.clone(), "--lambda-lr", &bad_everywhere),
        (gates.clone(), "--gate-init", &["NaN", "inf", "-inf"]),
        (
            vec![
                "train", "gates", ms, "--train", "t", "--dev", "d", "--out", os,
            ],
            "--l0",
            &["-1", "NaN", "inf"],
        ),
        (
            vec!["assert-budget", ms],
            "--max",
            &["-1", "NaN", "inf", "1e30", "122.1205k"],
        ),
    ];
    for (base, option, values) in cases {
        for value in values {
            // `--opt=-1`: a negative number given as the option's value, not as another flag.
            let given = format!("{option}={value}");
            let mut args = base.clone();
            args.push(&given);
            let r = surgery(&args);
            assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
            assert!(
                r.stderr.contains(option) && !r.stderr.contains("missing"),
                "{args:?} not refused for its value: {}",
                r.stderr
            );
        }
    }
}

#[test]
fn eval_max_len_beyond_the_model_is_an_error_not_a_clamp() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    // The tiny model has 32 positions.
    let r = surgery(&["eval", s(&m), "--data", s(&data), "--max-len", "64"]);
    assert_refused(&r, "the model has 32 positions");
    let r = surgery(&["eval", s(&m), "--data", s(&data), "--max-len", "32"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn eval_tag_names_must_be_distinct_tags() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = dir.path().join("d.jsonl");
    std::fs::write(&data, "{\"tokens\": [\"John\"], \"ner_tags\": [1]}\n").unwrap();
    let r = surgery(&["eval", s(&m), "--data", s(&data), "--tag-names", "O,O,O"]);
    assert_refused(&r, "--tag-names: `O` is given twice");
    let r = surgery(&["eval", s(&m), "--data", s(&data), "--tag-names", "O,PER"]);
    assert_refused(&r, "--tag-names: tag `PER`");
}

#[test]
fn assert_budget_compares_the_exact_count() {
    let dir = tempdir();
    let m = model(dir.path());
    let r = surgery(&["inspect", s(&m), "--json"]);
    let json: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let unique = json["budget"]["unique"].as_u64().expect("unique count");
    // One parameter under the count, written with a k suffix: over budget (exit 3).
    let under = format!("{}k", (unique - 1) as f64 / 1000.0);
    assert_eq!(surgery(&["assert-budget", s(&m), "--max", &under]).code, 3);
    let exact = format!("{}k", unique as f64 / 1000.0);
    assert_eq!(surgery(&["assert-budget", s(&m), "--max", &exact]).code, 0);
    // Half a parameter below the count is not a count: refused, not rounded up.
    let half = format!("{}.5", unique - 1);
    assert_refused(
        &surgery(&["assert-budget", s(&m), "--max", &half]),
        "not a whole number",
    );
}

#[test]
fn sparsity_patterns_with_partial_or_oversized_groups_are_refused() {
    let dir = tempdir();
    let m = model(dir.path());
    let out = dir.path().join("out");
    // Hidden 16, intermediate 24: groups of 16 leave a partial group in the output linear.
    let r = surgery(&["magnitude", s(&m), s(&out), "--pattern", "2:16"]);
    assert_refused(&r, "partial");
    let r = surgery(&["magnitude", s(&m), s(&out), "--pattern", "2:1000"]);
    assert_refused(&r, "groups of at most 64");
    assert!(!out.exists());
    assert_eq!(
        surgery(&["magnitude", s(&m), s(&out), "--pattern", "2:8"]).code,
        0
    );
}

#[test]
fn lowrank_params_target_above_the_model_size_is_refused() {
    let dir = tempdir();
    let m = model(dir.path());
    let out = dir.path().join("out");
    let r = surgery(&["lowrank-layers", s(&m), s(&out), "--params-target", "1G"]);
    assert_refused(&r, "already has");
    assert!(!out.exists());
}

#[test]
fn resume_with_other_data_is_refused_and_metrics_are_not_repeated() {
    let s_ = setup(48);
    let run_dir = s_.dir.path().join("run");
    let args = |train: &Path, extra: &[&str]| {
        let steps = ["--max-steps", "6", "--eval-every", "2", "--log-every", "1"];
        finetune_args(&s_, train, &run_dir, &[&steps[..], extra].concat())
    };
    let run = |a: Vec<String>| surgery(&a.iter().map(|x| x.as_str()).collect::<Vec<_>>());
    let r = run(args(&s_.data.train, &["--stop-after", "2"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A kill after step 3 was logged but before last/ was saved again.
    let metrics = run_dir.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text.push_str("{\"step\":3,\"epoch\":0,\"loss\":1.0,\"lr\":0.001,\"grad_norm\":1.0,\"tokens_per_s\":1.0}\n{\"step\":4,");
    std::fs::write(&metrics, text).unwrap();
    // Other training data: refused.
    let other = s_.dir.path().join("other.txt");
    let mut changed = std::fs::read_to_string(&s_.data.train).unwrap();
    changed.push_str("\nExtra O\n");
    std::fs::write(&other, changed).unwrap();
    let r = run(args(&other, &["--resume"]));
    assert_refused(&r, "differs");
    // The same data: resumes, and every training step is logged once.
    let r = run(args(&s_.data.train, &["--resume"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps: Vec<u64> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=6).collect::<Vec<_>>());
}

#[test]
fn a_recipe_step_whose_output_was_deleted_runs_again() {
    let dir = tempdir();
    let m = model(dir.path());
    let recipe = recipe(dir.path(), &m, "[recipe]\nname = \"r\"\n", "MODEL");
    let runs = dir.path().join("runs");
    let go = || surgery(&["run", s(&recipe), "--runs", s(&runs)]);
    assert_eq!(go().code, 0);
    let weights = runs.join("r/01-ev/model.safetensors");
    std::fs::remove_file(&weights).unwrap();
    let plan = surgery(&["run", s(&recipe), "--runs", s(&runs), "--dry-run"]);
    assert!(!plan.stdout.contains("skipped"), "{}", plan.stdout);
    let r = go();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(weights.is_file());
}

#[test]
fn run_set_of_an_unknown_variable_and_from_beyond_the_last_step_are_errors() {
    let dir = tempdir();
    let m = model(dir.path());
    let recipe = recipe(dir.path(), &m, "[vars]\nmodel = \"MODEL\"\n", "${model}");
    let runs = dir.path().join("runs");
    let r = surgery(&[
        "run",
        s(&recipe),
        "--runs",
        s(&runs),
        "--dry-run",
        "--set",
        "modle=x",
    ]);
    assert_refused(&r, "did you mean `model`?");
    let r = surgery(&[
        "run",
        s(&recipe),
        "--runs",
        s(&runs),
        "--dry-run",
        "--from",
        "99",
    ]);
    assert_refused(&r, "the recipe has 1 step(s)");
    assert!(!r.stderr.contains("did you mean"), "{}", r.stderr);
}

#[test]
fn model_safetensors_gets_the_same_permissions_as_other_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let m = model(dir.path());
    let out = dir.path().join("cut");
    assert_eq!(
        surgery(&["drop-layers", s(&m), s(&out), "--keep", "0"]).code,
        0
    );
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(out.join("model.safetensors")),
        mode(out.join("config.json"))
    );
    assert_ne!(mode(out.join("model.safetensors")), 0o600);
}

#[test]
fn a_teacher_with_non_finite_logits_is_not_blamed_on_its_tokenizer() {
    let s_ = setup(48);
    let teacher = overflowing_model(&s_);
    let teacher_dir = s_.dir.path().join("teacher");
    teacher.save(&teacher_dir, false, vec![]).unwrap();
    let err = crate::util::distill(
        &teacher_dir,
        &teacher_dir,
        &kd(),
        &crate::util::common(
            &s_.data,
            &quick_spec(),
            &s_.dir.path().join("run"),
            Default::default(),
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("logits are not finite"), "{err}");
    assert!(!err.contains("tokenizer"), "{err}");
}

/// Exit 2 (or 0 where the input is fine), never a panic, an abort or exit 1.
fn clean_exit(r: &Output, what: &str) {
    assert!(
        r.code == 0 || r.code == 2,
        "{what}: exit {}: {}",
        r.code,
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{what}: {}", r.stderr);
}

/// Runs `args` (strings) through the binary.
fn run_strings(args: &[String]) -> Output {
    surgery(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn train_max_len_beyond_a_model_is_an_error_naming_the_model_and_its_positions() {
    let dir = tempdir();
    let m = model(dir.path()); // 32 positions
    let mut short = tiny_config();
    short.max_position_embeddings = 16;
    let teacher = save(
        &tiny_checkpoint(short, Layout::Bare, 4),
        dir.path(),
        "teacher",
    );
    let data = conll(dir.path());
    let out = dir.path().join("run");
    let common = |command: &[&str]| short_training(command, s(&data), s(&out), "1");
    for (command, max_len, needle) in [
        (
            vec!["train", "finetune", s(&m)],
            "64",
            "the model has 32 positions",
        ),
        (
            vec!["train", "gates", s(&m), "--l0", "1"],
            "33",
            "the model has 32 positions",
        ),
        (
            vec!["train", "distill", s(&m), "--teacher", s(&teacher)],
            "24",
            "the teacher has 16 positions",
        ),
    ] {
        let mut args = common(&command);
        args.extend(["--max-len".to_string(), max_len.to_string()]);
        let r = run_strings(&args);
        refused_cleanly(&r, &format!("--max-len {max_len}"));
        assert!(r.stderr.contains(needle), "{}", r.stderr);
        assert!(!out.exists(), "a refused run leaves no folder");
    }
    // Within the limits (and the default, 128, lowered to the model's positions) it trains.
    for extra in [&["--max-len", "32"][..], &[][..]] {
        let mut args = common(&["train", "finetune", s(&m), "--force"]);
        args.extend(extra.iter().map(|x| x.to_string()));
        let r = run_strings(&args);
        assert_eq!(r.code, 0, "{extra:?}: {}", r.stderr);
    }
}

#[test]
fn an_svd_that_cannot_be_computed_names_its_tensor() {
    let dir = tempdir();
    let m = model(dir.path());
    let factorized = dir.path().join("f8");
    let r = surgery(&["factorize-embeddings", s(&m), s(&factorized), "--rank", "8"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Finite factors whose product overflows f32: the table cannot be factorized again.
    let file = factorized.join("model.safetensors");
    let (header, mut data) = split_safetensors(&file);
    for name in [
        "embeddings.word_embeddings.weight",
        "embeddings.word_projection.weight",
    ] {
        let name = header
            .keys()
            .find(|k| k.ends_with(name) || k.as_str() == name)
            .unwrap_or_else(|| panic!("{name} in {:?}", header.keys().collect::<Vec<_>>()));
        let [a, b] = [0, 1].map(|i| header[name]["data_offsets"][i].as_u64().unwrap() as usize);
        for chunk in data[a..b].chunks_exact_mut(4) {
            chunk.copy_from_slice(&1e30f32.to_le_bytes());
        }
    }
    join_safetensors(&file, &header, &data);
    let out = dir.path().join("f4");
    let r = surgery(&[
        "factorize-embeddings",
        s(&factorized),
        s(&out),
        "--rank",
        "4",
    ]);
    refused_cleanly(&r, "SVD of `embeddings.word_embeddings.weight`");
    assert!(r.stderr.contains("non-finite"), "{}", r.stderr);
    assert!(!out.exists());
}

#[test]
fn tensorboard_events_are_not_repeated_after_a_kill_and_resume() {
    use prost::Message;
    use surgery::io::tensorboard::{frame, read_events, Event, Summary, SummaryValue};
    let s_ = setup(48);
    let run_dir = s_.dir.path().join("run");
    let args = |extra: &[&str]| {
        let steps = ["--max-steps", "6", "--eval-every", "2", "--log-every", "1"];
        let options = [&steps[..], &["--tensorboard"], extra].concat();
        finetune_args(&s_, &s_.data.train, &run_dir, &options)
    };
    let r = run_strings(&args(&["--stop-after", "2"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let events_dir = run_dir.join("tensorboard");
    let files = || -> Vec<PathBuf> {
        let mut f: Vec<PathBuf> = std::fs::read_dir(&events_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        f.sort();
        f
    };
    // A kill after steps 3 and 4 were logged (the second write cut short) but before last/
    // was saved again.
    let first = files().pop().unwrap();
    let mut bytes = std::fs::read(&first).unwrap();
    for step in [3, 4] {
        let event = Event {
            wall_time: 0.0,
            step,
            file_version: None,
            summary: Some(Summary {
                value: vec![SummaryValue {
                    tag: "train/loss".into(),
                    simple_value: Some(1.0),
                }],
            }),
        };
        let record = frame(&event.encode_to_vec());
        let cut = if step == 4 {
            record.len() / 2
        } else {
            record.len()
        };
        bytes.extend(&record[..cut]);
    }
    std::fs::write(&first, bytes).unwrap();
    let r = run_strings(&args(&["--resume"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Every file reads cleanly, and every (tag, step) is there once.
    let mut seen = std::collections::BTreeSet::new();
    let mut loss_steps = vec![];
    assert!(
        files().len() >= 2,
        "the resumed run writes a file of its own"
    );
    for file in files() {
        for event in read_events(&file).unwrap() {
            for v in event.summary.iter().flat_map(|s| &s.value) {
                assert!(
                    seen.insert((v.tag.clone(), event.step)),
                    "{} at step {} twice",
                    v.tag,
                    event.step
                );
                if v.tag == "train/loss" {
                    loss_steps.push(event.step);
                }
            }
        }
    }
    loss_steps.sort();
    assert_eq!(loss_steps, (1..=6).collect::<Vec<i64>>());
}

/// A model with no encoder layers (embeddings and classifier only): the commands that read or
/// train it work; the ones that cut layers, neurons or heads say there is nothing to cut.
#[test]
fn a_model_without_encoder_layers_is_read_or_refused_never_a_panic() {
    let dir = tempdir();
    let mut config = tiny_config();
    config.num_hidden_layers = 0;
    let m = save(
        &tiny_checkpoint(config, Layout::Bare, 5),
        dir.path(),
        "zero",
    );
    let data = conll(dir.path());
    let sentences = dir.path().join("s.txt");
    std::fs::write(&sentences, "John lives in Paris\n").unwrap();
    let out = dir.path().join("out");
    let (m, d, o) = (s(&m), s(&data), s(&out));
    let train = |kind: &str, extra: &[&'static str]| -> Vec<String> {
        let command: Vec<&str> = ["train", kind, m]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        short_training(&command, d, o, "2")
    };
    let refused = "no encoder layers";
    let cases: Vec<(Vec<String>, Option<&str>)> = vec![
        (vec!["inspect".into(), m.into()], None),
        (["eval", m, "--data", d].map(String::from).to_vec(), None),
        (
            ["predict", m, "--input", s(&sentences)]
                .map(String::from)
                .to_vec(),
            None,
        ),
        (["export", m, o].map(String::from).to_vec(), None),
        (
            ["factorize-embeddings", m, o, "--rank", "4"]
                .map(String::from)
                .to_vec(),
            None,
        ),
        (train("finetune", &[]), None),
        (
            train("gates", &["--l0", "1"]),
            Some("no attention heads to gate"),
        ),
        (
            ["tie-layers", m, o, "--share-all"]
                .map(String::from)
                .to_vec(),
            Some(refused),
        ),
        (
            ["magnitude", m, o, "--sparsity", "0.5"]
                .map(String::from)
                .to_vec(),
            Some(refused),
        ),
        (
            ["sparsegpt", m, o, "--sparsity", "0.5", "--calib", d]
                .map(String::from)
                .to_vec(),
            Some(refused),
        ),
        (
            [
                "prune-neurons",
                m,
                o,
                "--keep-ratio",
                "0.5",
                "--by",
                "magnitude",
            ]
            .map(String::from)
            .to_vec(),
            Some(refused),
        ),
        (
            ["prune-structured", m, o, "--flops", "0.5", "--calib", d]
                .map(String::from)
                .to_vec(),
            Some(refused),
        ),
        (
            ["drop-layers", m, o, "--keep", "0"]
                .map(String::from)
                .to_vec(),
            Some("the model has no encoder layers"),
        ),
        (
            ["lowrank-layers", m, o, "--rank", "2"]
                .map(String::from)
                .to_vec(),
            Some("no linear"),
        ),
    ];
    for (args, expected) in cases {
        let _ = std::fs::remove_dir_all(&out);
        let r = run_strings(&args);
        clean_exit(&r, &args.join(" "));
        match expected {
            None => assert_eq!(r.code, 0, "{args:?}: {}", r.stderr),
            Some(needle) => refused_cleanly(&r, needle),
        }
    }
}

#[test]
fn config_sizes_of_the_wrong_type_or_sign_are_refused_naming_the_key() {
    let dir = tempdir();
    let m = model(dir.path());
    let keys = [
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
        "type_vocab_size",
        "pad_token_id",
    ];
    let values = [
        serde_json::json!(-1),
        serde_json::json!(-5),
        serde_json::json!(3.5),
        serde_json::json!("16"),
        serde_json::json!(true),
        serde_json::json!([16]),
        serde_json::json!(null),
    ];
    for key in keys {
        let original = {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(m.join("config.json")).unwrap()).unwrap();
            v[key].clone()
        };
        for value in &values {
            edit_config(&m, |v| v[key] = value.clone());
            let r = surgery(&["inspect", s(&m)]);
            refused_cleanly(&r, &format!("`{key}` is "));
            assert!(r.stderr.contains("config.json"), "{}", r.stderr);
        }
        edit_config(&m, |v| v[key] = original.clone());
    }
    for (key, value) in [
        ("layer_norm_eps", serde_json::json!("1e-12")),
        ("hidden_dropout_prob", serde_json::json!(null)),
        ("classifier_dropout", serde_json::json!("0.1")),
    ] {
        edit_config(&m, |v| v[key] = value.clone());
        refused_cleanly(&surgery(&["inspect", s(&m)]), &format!("`{key}` is "));
        edit_config(&m, |v| {
            v.as_object_mut().unwrap().remove(key);
        });
    }
    assert_eq!(surgery(&["inspect", s(&m)]).code, 0);
}

#[test]
fn conll_files_read_the_same_whatever_their_line_ends_separators_or_bom() {
    let dir = tempdir();
    let m = model(dir.path());
    let plain = "John B-PER\nSmith I-PER\nlives O\nin O\nParis B-LOC\n\nAnna B-PER\nvisited O\nBerlin B-LOC\n";
    let report = |text: &str, name: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let r = surgery(&["eval", s(&m), "--data", s(&path), "--json"]);
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        v["report"].clone()
    };
    let expected = report(plain, "plain.txt");
    assert_eq!(expected["micro"]["support"], 4);
    let three_columns: String = plain
        .lines()
        .map(|l| match l.split_once(' ') {
            Some((w, t)) => format!("{w} NNP {t}\n"),
            None => "\n".into(),
        })
        .collect();
    for (name, text) in [
        ("crlf", plain.replace('\n', "\r\n")),
        ("cr", plain.replace('\n', "\r")),
        ("tabs", plain.replace(' ', "\t")),
        ("bom", format!("\u{feff}{plain}")),
        ("three-columns", three_columns),
        ("docstart", format!("-DOCSTART- -X- -X- O\n\n{plain}")),
    ] {
        assert_eq!(report(&text, &format!("{name}.txt")), expected, "{name}");
    }
    // Sentences for `forward` with carriage returns alone: one sentence per line as well.
    let sentences = dir.path().join("s.txt");
    std::fs::write(&sentences, "John lives\rAnna visited Berlin\r").unwrap();
    let out = dir.path().join("f.safetensors");
    let r = surgery(&["forward", s(&m), "--input", s(&sentences), "--out", s(&out)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let store = surgery::io::TensorStore::open_files(&[out]).unwrap();
    assert_eq!(store.info("input_ids").unwrap().shape[0], 2);
}

#[test]
fn empty_option_values_are_refused_by_every_command() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let sentences = dir.path().join("s.txt");
    std::fs::write(&sentences, "John lives in Paris\n").unwrap();
    let out = dir.path().join("out");
    let (m, d, o, st) = (s(&m), s(&data), s(&out), s(&sentences));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["drop-layers", m, o, "--keep", ""], "--keep"),
        (vec!["tie-layers", m, o, "--groups", ""], "--groups"),
        (vec!["assert-budget", m, "--max", ""], "--max"),
        (vec!["eval", m, "--data", ""], "--data"),
        (
            vec!["eval", m, "--data", d, "--tag-names", ""],
            "--tag-names",
        ),
        (vec!["eval", m, "--data", d, "--device", ""], "--device"),
        (vec!["forward", m, "--input", st, "--out", ""], "--out"),
        (vec!["predict", m, "--input", ""], "--input"),
        (vec!["magnitude", m, o, "--pattern", ""], "--pattern"),
        (
            vec!["sparsegpt", m, o, "--pattern", "2:4", "--calib", ""],
            "--calib",
        ),
        (vec!["export", m, ""], "OUT"),
        (vec!["drop-layers", "", o, "--keep", "0"], "INPUT"),
        (vec!["prune-vocab", m, o, "--corpus", ""], "--corpus"),
        (
            vec![
                "train", "finetune", m, "--train", d, "--dev", d, "--out", "",
            ],
            "--out",
        ),
        (vec!["report", m, "--out", ""], "--out"),
        (
            vec![
                "train",
                "distill",
                m,
                "--teacher",
                m,
                "--train",
                d,
                "--dev",
                d,
                "--out",
                o,
                "--layer-map",
                "",
            ],
            "--layer-map",
        ),
    ];
    for (args, needle) in cases {
        let r = surgery(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(needle) && !r.stderr.contains("panicked"),
            "{args:?}: {}",
            r.stderr
        );
        assert!(!out.exists(), "{args:?} wrote {o}");
    }
}

#[test]
fn an_output_over_an_input_is_refused_by_every_command_and_the_input_is_unchanged() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let sentences = dir.path().join("s.txt");
    std::fs::write(&sentences, "John lives in Paris\n").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&m, &link).unwrap();
    let data_link = dir.path().join("data-link.txt");
    std::os::unix::fs::symlink(&data, &data_link).unwrap();
    let (ms, d, st, l) = (s(&m), s(&data), s(&sentences), s(&link));
    let inside = m.join("sub");
    let weights = m.join("model.safetensors");
    let config = m.join("config.json");
    let under_link = link.join("out");
    let read_all = || {
        [
            &m.join("model.safetensors"),
            &m.join("config.json"),
            &data,
            &sentences,
        ]
        .map(|p| std::fs::read(p).unwrap())
    };
    let before = read_all();
    let cases: Vec<Vec<&str>> = vec![
        vec!["drop-layers", ms, ms, "--keep", "0", "--force"],
        vec!["drop-layers", ms, l, "--keep", "0", "--force"],
        vec!["drop-layers", ms, s(&under_link), "--keep", "0"],
        vec!["tie-layers", ms, ms, "--share-all", "--force"],
        vec![
            "sparsegpt",
            ms,
            s(&inside),
            "--sparsity",
            "0.5",
            "--calib",
            d,
        ],
        vec!["prune-vocab", ms, ms, "--corpus", d, "--force"],
        vec!["export", ms, ms, "--force"],
        vec!["export", ms, l, "--force"],
        vec!["forward", ms, "--input", st, "--out", st, "--force"],
        vec![
            "forward",
            ms,
            "--input",
            st,
            "--out",
            s(&weights),
            "--force",
        ],
        vec!["eval", ms, "--data", d, "--write-predictions", d, "--force"],
        vec![
            "eval",
            ms,
            "--data",
            s(&data_link),
            "--write-predictions",
            d,
            "--force",
        ],
        vec![
            "eval",
            ms,
            "--data",
            d,
            "--save-json",
            s(&config),
            "--force",
        ],
        vec![
            "train", "finetune", ms, "--train", d, "--dev", d, "--out", ms, "--force",
        ],
        vec![
            "train", "finetune", ms, "--train", d, "--dev", d, "--out", l, "--force",
        ],
        vec![
            "train", "finetune", ms, "--train", d, "--dev", d, "--out", d, "--force",
        ],
        vec![
            "init-student",
            ms,
            "--like",
            ms,
            "--layers",
            "1",
            "--hidden",
            "16",
            "--heads",
            "4",
            "--intermediate",
            "8",
            "--force",
        ],
        vec!["report", ms, "--out", ms],
    ];
    for args in cases {
        let r = surgery(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{args:?}: {}", r.stderr);
        assert!(read_all() == before, "{args:?} changed an input");
    }
    assert!(!inside.exists());
}

#[test]
fn weights_of_an_unsupported_dtype_are_refused_naming_the_tensor() {
    let dir = tempdir();
    let name = "encoder.layer.0.attention.self.query.weight";
    for (dtype, width) in [
        ("F8_E4M3", 1),
        ("F8_E5M2", 1),
        ("I64", 8),
        ("I32", 4),
        ("U8", 1),
        ("BOOL", 1),
        ("F64", 8),
        ("Q4", 4),
    ] {
        let m = save(
            &tiny_checkpoint(tiny_config(), Layout::Bare, 3),
            dir.path(),
            &format!("m-{dtype}"),
        );
        let file = m.join("model.safetensors");
        let (header, data) = split_safetensors(&file);
        // The tensor declared with `dtype` and bytes of that width; later tensors move along.
        let mut items: Vec<(&String, &serde_json::Value)> = header
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .collect();
        items.sort_by_key(|(_, v)| v["data_offsets"][0].as_u64().unwrap());
        let (mut new, mut body) = (serde_json::Map::new(), vec![]);
        for (key, info) in items {
            let [a, b] = [0, 1].map(|i| info["data_offsets"][i].as_u64().unwrap() as usize);
            let mut info = info.clone();
            let bytes = if key == name {
                info["dtype"] = dtype.into();
                vec![0u8; (b - a) / 4 * width]
            } else {
                data[a..b].to_vec()
            };
            info["data_offsets"] = serde_json::json!([body.len(), body.len() + bytes.len()]);
            body.extend(bytes);
            new.insert(key.clone(), info);
        }
        join_safetensors(&file, &new, &body);
        let r = surgery(&["eval", s(&m), "--data", s(&conll(dir.path()))]);
        refused_cleanly(&r, &format!("`{name}` has unsupported dtype {dtype}"));
    }
}

#[test]
fn assert_budget_refuses_malformed_counts_and_reads_suffixes_exactly() {
    let dir = tempdir();
    let m = model(dir.path());
    for bad in [
        "20MM", "1.5.3M", "M", "20 M", "0x10", "-0", "+5", "١٢٣", "nan", "inf", "1e", "k20",
        "2^10", "1e-3",
    ] {
        let given = format!("--max={bad}");
        let r = surgery(&["assert-budget", s(&m), &given]);
        refused_cleanly(&r, "--max");
    }
    // Over (exit 3) or within (exit 0) budget: the count is read as written.
    for (value, code) in [
        ("0", 3),
        ("1e3", 3),
        ("1_000", 3),
        ("20m", 0),
        ("20G", 0),
        ("1,000,000", 0),
    ] {
        let r = surgery(&["assert-budget", s(&m), "--max", value]);
        assert_eq!(r.code, code, "{value}: {}", r.stderr);
    }
}

#[test]
fn tokenizer_json_of_the_wrong_shape_is_refused_naming_it() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let path = m.join("tokenizer.json");
    for text in [
        "[]",
        "{}",
        "\"x\"",
        "42",
        "null",
        "{\"model\": 5}",
        "{\"model\": {\"type\": \"WordPiece\"}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}}",
    ] {
        std::fs::write(&path, text).unwrap();
        let r = surgery(&["eval", s(&m), "--data", s(&data)]);
        refused_cleanly(&r, "tokenizer.json");
    }
}

#[test]
fn predict_answers_nothing_to_empty_input_and_every_blank_line() {
    let dir = tempdir();
    let m = model(dir.path());
    for (input, lines) in [("", 0), ("\n\n\n", 3), ("John\r\nAnna\r\n", 2)] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_surgery"))
            .args(["predict", s(&m)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.lines().count(), lines, "{input:?}: {text}");
    }
}

#[test]
fn recipe_step_names_must_be_non_empty_strings_and_runs_must_be_a_folder() {
    let dir = tempdir();
    let m = model(dir.path());
    let runs = dir.path().join("runs");
    for (name, needle) in [("\"\"", "name ``"), ("5", "`name` must be a string")] {
        let path = dir.path().join("r.toml");
        std::fs::write(
            &path,
            format!(
                "[[step]]\nname = {name}\nkind = \"drop-layers\"\ninput = \"{}\"\nkeep = \"0\"\n",
                m.display()
            ),
        )
        .unwrap();
        for extra in [&["--dry-run"][..], &[][..]] {
            let mut args = vec!["run", s(&path), "--runs", s(&runs)];
            args.extend(extra);
            refused_cleanly(&surgery(&args), needle);
        }
    }
    assert!(!runs.exists());
    // `--runs` naming a regular file: a user error (exit 2), not an internal one.
    let path = recipe(dir.path(), &m, "", "MODEL");
    let file = conll(dir.path());
    let before = std::fs::read(&file).unwrap();
    refused_cleanly(&surgery(&["run", s(&path), "--runs", s(&file)]), s(&file));
    assert_eq!(std::fs::read(&file).unwrap(), before);
}

#[test]
fn resume_refuses_a_damaged_run_record() {
    let s_ = setup(32);
    let run_dir = s_.dir.path().join("run");
    let args = |extra: &[&str]| {
        let options = [&["--max-steps", "3"][..], extra].concat();
        finetune_args(&s_, &s_.data.train, &run_dir, &options)
    };
    assert_eq!(run_strings(&args(&["--stop-after", "1"])).code, 0);
    let record = run_dir.join("run.json");
    let good = std::fs::read(&record).unwrap();
    for damaged in ["[]", "{", "", "null"] {
        std::fs::write(&record, damaged).unwrap();
        let r = run_strings(&args(&["--resume"]));
        refused_cleanly(&r, "run.json");
    }
    std::fs::write(&record, good).unwrap();
    // A step beyond the run's own steps.
    let progress = run_dir.join("last/state/progress.json");
    let text = std::fs::read_to_string(&progress).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["step"] = 99_999.into();
    std::fs::write(&progress, value.to_string()).unwrap();
    refused_cleanly(&run_strings(&args(&["--resume"])), "progress.json");
    std::fs::write(&progress, text).unwrap();
    assert_eq!(run_strings(&args(&["--resume"])).code, 0);
}

#[test]
fn small_models_odd_options_and_empty_indexes_get_answers_not_panics() {
    let dir = tempdir();
    let m = model(dir.path()); // a vocabulary of 177 pieces: no embedding rank of 256 fits
    let r = surgery(&["plan", s(&m), "--budget", "2M"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("shapes fit"), "{}", r.stdout);
    for budget in ["0", "1"] {
        let r = surgery(&["plan", s(&m), "--budget", budget]);
        refused_cleanly(&r, &format!("no student shape fits {budget} parameters"));
    }
    refused_cleanly(&surgery(&["inspect", s(&m), "--seq-len", "0"]), "--seq-len");
    // A shard index whose weight map names no tensor.
    std::fs::remove_file(m.join("model.safetensors")).unwrap();
    std::fs::write(
        m.join("model.safetensors.index.json"),
        "{\"weight_map\": {}}",
    )
    .unwrap();
    refused_cleanly(&surgery(&["inspect", s(&m)]), "names no tensor");
}

// ------------------------------------------------------------------------------------------
// Resumed recipes check the files their steps read and wrote, not only their options.

/// Writes `dir/resume.toml` with `steps` (MODEL and DATA replaced) and returns its path.
fn resume_recipe(dir: &Path, m: &Path, data: &Path, steps: &str) -> PathBuf {
    let path = dir.join("resume.toml");
    let text = steps.replace("MODEL", s(m)).replace("DATA", s(data));
    std::fs::write(&path, format!("[recipe]\nname = \"resume\"\n{text}")).unwrap();
    path
}

fn run_recipe(recipe: &Path, runs: &Path) -> Output {
    let r = surgery(&["run", s(recipe), "--runs", s(runs)]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    r
}

/// The same length, other bytes: a tag corrected in place.
fn correct_in_place(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let fixed = text.replacen("Paris B-LOC", "Paris B-PER", 1);
    assert_ne!(text, fixed);
    assert_eq!(text.len(), fixed.len());
    std::fs::write(path, fixed).unwrap();
}

#[test]
fn a_recipe_step_whose_calibration_file_was_corrected_in_place_runs_again() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let recipe = resume_recipe(
        dir.path(),
        &m,
        &data,
        "[[step]]\nname = \"cut\"\nkind = \"prune-neurons\"\ninput = \"MODEL\"\n\
         by = \"fisher\"\ncalib = \"DATA\"\nkeep-ratio = 0.5\n",
    );
    let runs = dir.path().join("runs");
    run_recipe(&recipe, &runs);
    assert!(run_recipe(&recipe, &runs).stdout.contains("done, skipped"));
    correct_in_place(&data);
    let plan = surgery(&["run", s(&recipe), "--runs", s(&runs), "--dry-run"]);
    assert!(
        plan.stdout.contains("will run again: its input") && plan.stdout.contains("data.txt"),
        "{}",
        plan.stdout
    );
    let r = run_recipe(&recipe, &runs);
    assert!(
        r.stdout.contains("running it again") && r.stdout.contains("data.txt"),
        "{}",
        r.stdout
    );
    // Recorded again: the next run skips it.
    assert!(run_recipe(&recipe, &runs).stdout.contains("done, skipped"));
}

#[test]
fn a_recipe_training_step_whose_training_file_was_corrected_in_place_runs_again() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let recipe = resume_recipe(
        dir.path(),
        &m,
        &data,
        "[[step]]\nname = \"tune\"\nkind = \"train finetune\"\ninput = \"MODEL\"\n\
         train = \"DATA\"\ndev = \"DATA\"\nmax-steps = 1\nbatch-size = 2\n\
         reinit-classifier = true\n",
    );
    let runs = dir.path().join("runs");
    run_recipe(&recipe, &runs);
    correct_in_place(&data);
    let r = run_recipe(&recipe, &runs);
    assert!(
        r.stdout.contains("its input") && r.stdout.contains("running it again"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_recipe_step_whose_weights_were_truncated_or_edited_runs_again() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let recipe = resume_recipe(
        dir.path(),
        &m,
        &data,
        "[[step]]\nname = \"cut\"\nkind = \"drop-layers\"\ninput = \"MODEL\"\nkeep = \"0,1\"\n\
         [[step]]\nname = \"score\"\nkind = \"eval\"\ndata = \"DATA\"\n",
    );
    let runs = dir.path().join("runs");
    run_recipe(&recipe, &runs);
    let weights = runs.join("resume/01-cut/model.safetensors");
    let whole = std::fs::read(&weights).unwrap();

    // Truncated: the cut runs again (its output is no longer what it wrote).
    std::fs::write(&weights, &whole[..whole.len() / 2]).unwrap();
    let r = run_recipe(&recipe, &runs);
    assert!(
        r.stdout.contains("changed size") && r.stdout.contains("model.safetensors"),
        "{}",
        r.stdout
    );
    assert_eq!(
        std::fs::metadata(&weights).unwrap().len(),
        whole.len() as u64
    );

    // Weights edited by hand, same size: found by the checksum.
    let mut edited = whole.clone();
    let n = edited.len();
    for b in &mut edited[n - 64..] {
        *b ^= 0x55;
    }
    std::fs::write(&weights, &edited).unwrap();
    let r = run_recipe(&recipe, &runs);
    assert!(r.stdout.contains("changed content"), "{}", r.stdout);

    // Labels of the evaluated model edited by hand: the evaluation runs again, so eval.json
    // scores the model as it is.
    let config = runs.join("resume/01-cut/config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replacen("\"O\"", "\"O\" ", 1)).unwrap();
    let r = run_recipe(&recipe, &runs);
    assert!(
        r.stdout.matches("running it again").count() >= 1 && r.stdout.contains("config.json"),
        "{}",
        r.stdout
    );
    assert!(
        run_recipe(&recipe, &runs)
            .stdout
            .matches("done, skipped")
            .count()
            == 2
    );
}

#[test]
fn a_recipe_eval_of_a_model_edited_by_hand_runs_again() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let recipe = resume_recipe(
        dir.path(),
        &m,
        &data,
        "[[step]]\nname = \"score\"\nkind = \"eval\"\ninput = \"MODEL\"\ndata = \"DATA\"\n",
    );
    let runs = dir.path().join("runs");
    run_recipe(&recipe, &runs);
    // Another model's weights (the same structure) under the same name.
    let other = save(
        &tiny_checkpoint(tiny_config(), Layout::Bare, 99),
        dir.path(),
        "other",
    );
    std::fs::copy(other.join("model.safetensors"), m.join("model.safetensors")).unwrap();
    let r = run_recipe(&recipe, &runs);
    assert!(
        r.stdout.contains("running it again") && r.stdout.contains("model.safetensors"),
        "{}",
        r.stdout
    );
    let recorded: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(runs.join("resume/01-score/eval.json")).unwrap(),
    )
    .unwrap();
    let direct = surgery(&["eval", s(&m), "--data", s(&data), "--json"]);
    let direct: serde_json::Value = serde_json::from_str(&direct.stdout).unwrap();
    assert!(direct["f1"].is_f64());
    assert_eq!(recorded["f1"], direct["f1"]);
}

// ------------------------------------------------------------------------------------------
// Output pipes closed early.

/// Runs the binary with its standard output on a pipe whose reader is already closed.
fn surgery_into_closed_pipe(args: &[&str]) -> std::process::Output {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe writes two new descriptors into `fds`.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned here alone.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_surgery"))
        .args(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn every_printing_command_ends_quietly_when_its_reader_is_gone() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let scores = dir.path().join("scores.txt");
    std::fs::write(&scores, "John B-PER B-PER\nParis B-LOC O\n").unwrap();
    let sentences = dir.path().join("s.txt");
    std::fs::write(&sentences, "John lives in Paris\n").unwrap();
    let recipe = recipe(dir.path(), &m, "", "MODEL");
    let runs = dir.path().join("runs");
    let (ms, ds) = (s(&m), s(&data));
    let out = |name: &str| dir.path().join(name).display().to_string();
    let (cut, onnx) = (out("cut"), out("onnx"));
    let commands: Vec<Vec<&str>> = vec![
        vec!["inspect", ms],
        vec!["inspect", ms, "--json"],
        vec!["eval", ms, "--data", ds],
        vec!["score", s(&scores)],
        vec!["predict", ms, "--input", s(&sentences)],
        vec!["check-device", "--steps", "1"],
        vec!["run", s(&recipe), "--runs", s(&runs), "--dry-run"],
        vec!["drop-layers", ms, &cut, "--keep", "0", "--json"],
        vec!["export", ms, &onnx, "--json"],
    ];
    for args in commands {
        let r = surgery_into_closed_pipe(&args);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(
            !stderr.contains("panicked") && r.status.code() != Some(101),
            "{args:?}: {:?} {stderr}",
            r.status
        );
        assert!(
            r.status.signal() == Some(libc::SIGPIPE) || r.status.success(),
            "{args:?}: {:?} {stderr}",
            r.status
        );
    }
}

// ------------------------------------------------------------------------------------------
// Numbers read exactly as written, or refused naming the option.

#[test]
fn export_int8_of_a_model_with_a_layer_without_ffn_neurons_works() {
    let dir = tempdir();
    let m = model(dir.path());
    let cut = dir.path().join("cut");
    let r = surgery(&[
        "prune-neurons",
        s(&m),
        s(&cut),
        "--keep",
        "0",
        "--by",
        "magnitude",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let onnx = dir.path().join("onnx");
    let r = surgery(&["export", s(&cut), s(&onnx), "--quantize", "int8"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn an_absurd_thread_count_is_refused_at_once_naming_the_variable() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    for value in ["100000", "many"] {
        let r = crate::util::surgery_with_env(
            &["eval", s(&m), "--data", s(&data)],
            &[("RAYON_NUM_THREADS", value)],
        );
        refused_cleanly(&r, "RAYON_NUM_THREADS");
        // At once: before the model is evaluated (no score is printed).
        assert!(
            !r.stdout.contains("F1") && !r.stderr.contains("tok/s"),
            "{}\n{}",
            r.stdout,
            r.stderr
        );
    }
}

#[test]
fn a_decimal_comma_in_a_count_is_refused_not_dropped() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let out = dir.path().join("out");
    let cases: Vec<Vec<&str>> = vec![
        vec!["assert-budget", s(&m), "--max", "0,1M"],
        vec!["inspect", s(&m), "--budget", "122,5k"],
        vec![
            "prune-structured",
            s(&m),
            s(&out),
            "--params",
            "0,1M",
            "--calib",
            s(&data),
        ],
    ];
    for args in cases {
        refused_cleanly(&surgery(&args), "groups of three digits");
    }
    assert!(!out.exists());
    // Groups of three are thousands.
    let r = surgery(&["assert-budget", s(&m), "--max", "1,000,000"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn numeric_options_of_the_cuts_refuse_values_outside_their_domain() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let out = dir.path().join("out");
    let (ms, os, ds) = (s(&m), s(&out), s(&data));
    let structured = ["prune-structured", ms, os, "--flops", "0.5", "--calib", ds];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        ([&structured[..], &["--damp", "NaN"]].concat(), "--damp"),
        ([&structured[..], &["--damp", "-1"]].concat(), "--damp"),
        ([&structured[..], &["--damp", "inf"]].concat(), "--damp"),
        (
            [&structured[..], &["--calib-sentences", "0"]].concat(),
            "--calib-sentences",
        ),
        (
            [&structured[..], &["--heldout-sentences", "0"]].concat(),
            "--heldout-sentences",
        ),
        (
            [&structured[..], &["--seq-len", "4611686018427387904"]].concat(),
            "--seq-len",
        ),
        (
            vec!["prune-structured", ms, os, "--flops", "NaN", "--calib", ds],
            "--flops",
        ),
        (
            vec![
                "prune-neurons",
                ms,
                os,
                "--keep-ratio",
                "-0.5",
                "--by",
                "magnitude",
            ],
            "--keep-ratio",
        ),
        (
            vec![
                "prune-neurons",
                ms,
                os,
                "--keep",
                "3",
                "--by",
                "fisher",
                "--calib",
                ds,
                "--calib-sentences",
                "0",
            ],
            "--calib-sentences",
        ),
        (
            vec!["inspect", ms, "--seq-len", "4611686018427387904"],
            "--seq-len",
        ),
        (vec!["check-device", "--steps", "0"], "--steps"),
        (
            vec![
                "train", "focal", ms, "--train", ds, "--dev", ds, "--out", os, "--gamma", "1e308",
            ],
            "--gamma",
        ),
        (
            vec![
                "train", "finetune", ms, "--train", ds, "--dev", ds, "--out", os, "--lr", "-1e-5",
            ],
            "--lr",
        ),
    ];
    for (args, needle) in cases {
        let r = surgery(&args);
        refused_cleanly(&r, needle);
        assert!(
            !r.stderr.contains("unexpected argument"),
            "{args:?}: {}",
            r.stderr
        );
    }
    assert!(!out.exists());
}

#[test]
fn prune_neurons_uniform_keeps_exactly_the_count_asked() {
    let dir = tempdir();
    let m = model(dir.path()); // 3 layers of 24 neurons
    for keep in ["3", "4", "70"] {
        let out = dir.path().join(format!("keep{keep}"));
        let r = surgery(&[
            "prune-neurons",
            s(&m),
            s(&out),
            "--keep",
            keep,
            "--uniform",
            "--by",
            "magnitude",
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let r = surgery(&["inspect", s(&out), "--json"]);
        let json: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let kept: u64 = json["budget"]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["intermediate"].as_u64().unwrap())
            .sum();
        assert_eq!(kept.to_string(), keep);
    }
}

// ------------------------------------------------------------------------------------------
// Recipe values: negative numbers, flags and missing options.

/// A one-step recipe of `kind` on the tiny model with `options`, dry-run.
fn recipe_step(dir: &Path, m: &Path, kind: &str, options: &str) -> Output {
    let path = dir.join("values.toml");
    std::fs::write(
        &path,
        format!(
            "[[step]]\nname = \"s\"\nkind = \"{kind}\"\ninput = \"{}\"\n{options}\n",
            s(m)
        ),
    )
    .unwrap();
    let runs = dir.join("runs");
    surgery(&["run", s(&path), "--runs", s(&runs), "--dry-run"])
}

#[test]
fn negative_numbers_in_recipes_reach_the_options_own_check() {
    let dir = tempdir();
    let m = model(dir.path());
    let data = conll(dir.path());
    let ds = s(&data);
    let train = format!("train = \"{ds}\"\ndev = \"{ds}\"\n");
    let cases = [
        ("train finetune", format!("{train}lr = -1e-5"), "--lr"),
        ("train focal", format!("{train}gamma = -1"), "--gamma"),
        (
            "prune-neurons",
            "by = \"magnitude\"\nkeep = -1".into(),
            "--keep",
        ),
        (
            "prune-structured",
            format!("flops = 0.5\ncalib = \"{ds}\"\ndamp = -1"),
            "--damp",
        ),
        (
            "prune-structured",
            format!("flops = 0.5\ncalib = \"{ds}\"\nseq-len = -1"),
            "--seq-len",
        ),
    ];
    for (kind, options, needle) in cases {
        let r = recipe_step(dir.path(), &m, kind, &options);
        refused_cleanly(&r, needle);
        assert!(
            !r.stderr.contains("unknown option `-"),
            "{kind}: {}",
            r.stderr
        );
    }
}

#[test]
fn recipe_steps_missing_an_option_or_giving_a_flag_a_value_name_the_option() {
    let dir = tempdir();
    let m = model(dir.path());
    let r = recipe_step(dir.path(), &m, "prune-neurons", "keep = 3");
    refused_cleanly(&r, "`by`");
    let r = recipe_step(
        dir.path(),
        &m,
        "prune-neurons",
        "by = \"magnitude\"\nkeep = true",
    );
    refused_cleanly(&r, "option `keep` takes a value");
    let r = recipe_step(
        dir.path(),
        &m,
        "prune-neurons",
        "by = \"magnitude\"\nkeep = 3\nuniform = \"yes\"",
    );
    refused_cleanly(&r, "option `uniform` is a switch");
}

#[test]
fn a_recipe_step_name_in_non_ascii_letters_is_accepted() {
    let dir = tempdir();
    let m = model(dir.path());
    let path = dir.path().join("names.toml");
    std::fs::write(
        &path,
        format!(
            "[[step]]\nname = \"größe_カット\"\nkind = \"drop-layers\"\ninput = \"{}\"\nkeep = \"0\"\n",
            s(&m)
        ),
    )
    .unwrap();
    let runs = dir.path().join("runs");
    let r = surgery(&["run", s(&path), "--runs", s(&runs)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(runs
        .join("names/01-größe_カット/model.safetensors")
        .is_file());
    // Punctuation is still refused.
    std::fs::write(
        &path,
        format!(
            "[[step]]\nname = \"a/b\"\nkind = \"drop-layers\"\ninput = \"{}\"\nkeep = \"0\"\n",
            s(&m)
        ),
    )
    .unwrap();
    refused_cleanly(
        &surgery(&["run", s(&path), "--runs", s(&runs)]),
        "may use only",
    );
}

// ------------------------------------------------------------------------------------------
// Labels: calibration tags, and the same labels in another order.

#[test]
fn calibration_tags_the_model_does_not_know_are_refused_like_eval_refuses_them() {
    let dir = tempdir();
    let m = model(dir.path());
    let calib = dir.path().join("calib.txt");
    std::fs::write(&calib, "John B-PER\nlives O\n\nParis B-FOO\n").unwrap();
    let out = dir.path().join("out");
    let (ms, os, cs) = (s(&m), s(&out), s(&calib));
    for args in [
        vec![
            "prune-neurons",
            ms,
            os,
            "--keep-ratio",
            "0.5",
            "--by",
            "fisher",
            "--calib",
            cs,
        ],
        vec!["prune-structured", ms, os, "--flops", "0.5", "--calib", cs],
    ] {
        let r = surgery(&args);
        refused_cleanly(&r, "B-FOO");
        assert!(r.stderr.contains("calib.txt:4"), "{}", r.stderr);
        assert!(!out.exists());
    }
    refused_cleanly(&surgery(&["eval", ms, "--data", cs]), "B-FOO");
}

#[test]
fn a_classifier_with_the_data_labels_in_another_order_is_kept_for_training() {
    let dir = tempdir();
    // The data's own order would be O, B-LOC, B-PER.
    let mut config = tiny_config();
    config.set_labels(&["O", "B-PER", "B-LOC"].map(String::from));
    let m = save(
        &tiny_checkpoint(config, Layout::Bare, 3),
        dir.path(),
        "model",
    );
    let data = conll(dir.path());
    let run_dir = dir.path().join("run");
    let r = surgery(&[
        "train",
        "finetune",
        s(&m),
        "--train",
        s(&data),
        "--dev",
        s(&data),
        "--out",
        s(&run_dir),
        "--max-steps",
        "1",
        "--batch-size",
        "2",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("best/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["id2label"]["1"], "B-PER");
    assert_eq!(config["id2label"]["2"], "B-LOC");
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

#[test]
fn predict_reads_cr_only_line_ends_as_lines() {
    let dir = tempdir();
    let m = model(dir.path());
    let input = dir.path().join("mac.txt");
    std::fs::write(&input, "John lives in Paris\rAnna visited Berlin\rPeter\r").unwrap();
    let r = surgery(&["predict", s(&m), "--input", s(&input)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.lines().count(), 3, "{}", r.stdout);
}

#[test]
fn a_student_with_the_teachers_labels_in_another_order_is_reordered_not_refused() {
    let dir = tempdir();
    let teacher = model(dir.path());
    let data = conll(dir.path());
    // The same model with its classifier rows and labels in another order: the same function.
    let mut ckpt = surgery::io::Checkpoint::open(&teacher).unwrap();
    let order = ["I-LOC", "O", "B-LOC", "I-PER", "B-PER"].map(String::from);
    surgery::model::generate::reorder_classifier(&mut ckpt, &order).unwrap();
    let student = save(&ckpt, dir.path(), "student");
    let f1 = |m: &Path| {
        let r = surgery(&["eval", s(m), "--data", s(&data), "--json"]);
        serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["f1"].clone()
    };
    assert!(f1(&teacher).is_f64());
    assert_eq!(f1(&teacher), f1(&student));
    let run_dir = dir.path().join("run");
    let r = surgery(&[
        "train",
        "distill",
        s(&student),
        "--teacher",
        s(&teacher),
        "--train",
        s(&data),
        "--dev",
        s(&data),
        "--out",
        s(&run_dir),
        "--max-steps",
        "1",
        "--batch-size",
        "2",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("best/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["id2label"]["0"], "O");
    assert_eq!(config["id2label"]["4"], "I-LOC");
}
