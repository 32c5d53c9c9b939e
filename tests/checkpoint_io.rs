//! Reading and writing checkpoints: round trips, atomic and non-destructive output, sharded files;
//! damaged or inconsistent checkpoints (truncated or overlapping safetensors, non-finite or
//! unsupported weights, configs, tokenizers or labels that do not fit) refused naming the file and
//! the problem, never a panic.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use surgery::arch::{Key, Layout, NormPart};
use surgery::io::Checkpoint;

use crate::util::{
    assert_refused, assert_rejected, conll, edit_config, good, join_safetensors, max_abs_diff,
    model, refused_cleanly, run_strings, s, save, short_training, split_safetensors, surgery,
    tempdir, tiny_checkpoint, tiny_config, Output,
};

fn assert_same_tensors(a: &Checkpoint, b: &Checkpoint) {
    assert_eq!(a.arch.expected_tensors(), b.arch.expected_tensors());
    for (key, _) in a.arch.expected_tensors() {
        let (x, y) = (
            a.tensor(key, &Device::Cpu).unwrap(),
            b.tensor(key, &Device::Cpu).unwrap(),
        );
        assert_eq!(max_abs_diff(&x, &y), 0.0, "{key}");
    }
}

#[test]
fn save_then_open_round_trips_both_layouts() {
    let dir = tempdir();
    for (i, layout) in [Layout::Bare, Layout::BertPrefixed].into_iter().enumerate() {
        let ckpt = tiny_checkpoint(tiny_config(), layout, 3);
        let path = save(&ckpt, dir.path(), &format!("m{i}"));
        let back = Checkpoint::open(&path).unwrap();
        assert_eq!(back.arch, ckpt.arch);
        assert_same_tensors(&ckpt, &back);
        // Metadata records the tool.
        let store = surgery::io::TensorStore::open_dir(&path).unwrap();
        assert!(store.metadata["surgery_tool"].starts_with("surgery "));
        // No temp folder left beside the output.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }
}

#[test]
fn an_existing_output_is_refused_unless_forced() {
    let dir = tempdir();
    let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 4);
    let path = save(&ckpt, dir.path(), "m");
    let err = ckpt.save(&path, false, vec![]).unwrap_err();
    assert!(matches!(err, surgery::Error::OutputExists { .. }), "{err}");
    let other = tiny_checkpoint(tiny_config(), Layout::Bare, 5);
    other.save(&path, true, vec![]).unwrap();
    assert_same_tensors(&other, &Checkpoint::open(&path).unwrap());
}

#[test]
fn saving_over_the_input_folder_is_refused_even_with_force() {
    let dir = tempdir();
    let path = save(
        &tiny_checkpoint(tiny_config(), Layout::Bare, 6),
        dir.path(),
        "m",
    );
    let before = std::fs::read(path.join("model.safetensors")).unwrap();
    let opened = Checkpoint::open(&path).unwrap();
    assert!(opened.save(&path, true, vec![]).is_err());
    assert_eq!(
        std::fs::read(path.join("model.safetensors")).unwrap(),
        before
    );
}

#[test]
fn sharded_checkpoints_are_read_through_the_index() {
    let dir = tempdir();
    let ckpt = tiny_checkpoint(tiny_config(), Layout::BertPrefixed, 7);
    let single = save(&ckpt, dir.path(), "single");
    // Split the tensors over two shard files and write the index.
    let store = surgery::io::TensorStore::open_dir(&single).unwrap();
    let sharded = dir.path().join("sharded");
    std::fs::create_dir(&sharded).unwrap();
    std::fs::copy(single.join("config.json"), sharded.join("config.json")).unwrap();
    let names: Vec<String> = store.names().map(String::from).collect();
    let mut weight_map = serde_json::Map::new();
    for (shard, chunk) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", shard + 1);
        let tensors: Vec<(String, surgery::io::tensor_file::RawTensor)> = chunk
            .iter()
            .map(|n| {
                let t = store.load_f32(n, &Device::Cpu).unwrap();
                weight_map.insert(n.clone(), file.clone().into());
                (
                    n.clone(),
                    surgery::io::tensor_file::RawTensor::from_tensor(&t).unwrap(),
                )
            })
            .collect();
        surgery::io::tensor_file::write_safetensors(
            &sharded.join(&file),
            tensors,
            Default::default(),
        )
        .unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let back = Checkpoint::open(&sharded).unwrap();
    assert_same_tensors(&ckpt, &back);
}

#[test]
fn half_precision_tensors_are_widened_to_f32() {
    let dir = tempdir();
    let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 8);
    let path = save(&ckpt, dir.path(), "m");
    // Rewrite the file with every tensor in f16.
    let store = surgery::io::TensorStore::open_dir(&path).unwrap();
    let mut header = serde_json::Map::new();
    let mut data = vec![];
    for name in store.names() {
        let t = store.load_f32(name, &Device::Cpu).unwrap();
        let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let start = data.len();
        for v in values {
            data.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F16", "shape": t.dims(), "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&data);
    drop(store);
    std::fs::write(path.join("model.safetensors"), bytes).unwrap();
    let back = Checkpoint::open(&path).unwrap();
    let key = Key::WordEmbeddings;
    let diff = max_abs_diff(
        &back.tensor(key, &Device::Cpu).unwrap(),
        &ckpt.tensor(key, &Device::Cpu).unwrap(),
    );
    assert!(diff > 0.0 && diff < 2e-3, "{diff}");
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

#[test]
fn truncated_safetensors() {
    let dir = tempdir();
    let ckpt = good(dir.path());
    let file = ckpt.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    assert_rejected(&ckpt, dir.path(), &["model.safetensors", "truncated"]);
    std::fs::write(&file, &bytes[..5]).unwrap();
    assert_rejected(&ckpt, dir.path(), &["model.safetensors", "too short"]);
}

#[test]
fn header_that_is_not_json() {
    let dir = tempdir();
    let ckpt = good(dir.path());
    let mut bytes = 20u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"this is not json....");
    std::fs::write(ckpt.join("model.safetensors"), bytes).unwrap();
    assert_rejected(&ckpt, dir.path(), &["model.safetensors", "not valid JSON"]);
}

#[test]
fn tensor_with_the_wrong_shape_for_the_config() {
    let dir = tempdir();
    let ckpt = good(dir.path());
    // Claim a larger intermediate size than the tensors have.
    let path = ckpt.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"intermediate_size\": 24", "\"intermediate_size\": 28"),
    )
    .unwrap();
    assert_rejected(
        &ckpt,
        dir.path(),
        &[
            "model.safetensors",
            "encoder.layer.0.intermediate.dense.weight",
            "[24, 16]",
            "[28, 16]",
        ],
    );
}

#[test]
fn config_without_hidden_size() {
    let dir = tempdir();
    let ckpt = good(dir.path());
    let path = ckpt.join("config.json");
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    value.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(&path, value.to_string()).unwrap();
    assert_rejected(&ckpt, dir.path(), &["config.json", "hidden_size"]);
}

#[test]
fn missing_tensor() {
    let dir = tempdir();
    let ckpt = good(dir.path());
    let path = ckpt.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    // One more layer than the file holds.
    std::fs::write(
        &path,
        text.replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 4"),
    )
    .unwrap();
    assert_rejected(
        &ckpt,
        dir.path(),
        &["model.safetensors", "missing tensor", "encoder.layer.3."],
    );
}

#[test]
fn unknown_dtype() {
    let dir = tempdir();
    let ckpt = good(dir.path());
    let file = ckpt.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    // Same byte size per element, unknown to the tool.
    let header = header.replacen("\"F32\"", "\"U32\"", 1);
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&file, out).unwrap();
    assert_rejected(
        &ckpt,
        dir.path(),
        &["model.safetensors", "unsupported dtype U32"],
    );
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
