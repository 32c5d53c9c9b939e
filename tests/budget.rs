//! Parameter counts equal Hugging Face's `num_parameters()`; `inspect --budget` exit codes.

use std::io::Write;
use std::path::Path;

use surgery::arch::{Arch, BertConfig, Layout};
use surgery::budget::Budget;

use crate::util::{minilm, save, surgery, tempdir, tiny_checkpoint, tiny_config};

fn bert_base_cased_config() -> BertConfig {
    let mut config = BertConfig::from_json(
        r#"{"architectures": ["BertForTokenClassification"], "hidden_size": 768,
            "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
            "vocab_size": 28996, "max_position_embeddings": 512, "type_vocab_size": 2,
            "model_type": "bert"}"#,
    )
    .unwrap();
    let labels = [
        "O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC",
    ];
    config.set_labels(&labels.map(String::from));
    config
}

/// Writes a bert-base-cased-shaped `BertForTokenClassification` checkpoint whose data section is
/// a hole in a sparse file (all zeros, no disk use): only the header is real.
pub fn write_zero_checkpoint(dir: &Path, config: &BertConfig, layout: Layout) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(config).unwrap(),
    )
    .unwrap();
    let arch = Arch::resolve(config, layout, false, true).unwrap();
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (key, shape) in arch.expected_tensors() {
        let bytes = shape.iter().product::<usize>() * 4;
        header.insert(
            key.name(layout),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut f = std::fs::File::create(dir.join("model.safetensors")).unwrap();
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&header).unwrap();
    f.set_len((8 + header.len() + offset) as u64).unwrap();
}

#[test]
fn bert_base_cased_token_classifier_has_hf_parameter_count() {
    let dir = tempdir();
    let ckpt = dir.path().join("bert-base-cased-ner");
    write_zero_checkpoint(&ckpt, &bert_base_cased_config(), Layout::BertPrefixed);
    let r = surgery(&["inspect", ckpt.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["budget"]["unique"], 107_726_601u64);
    assert_eq!(report["budget"]["stored_with_pooler"], 107_726_601u64);
    assert_eq!(report["layout"], "bert_prefixed");
    // The budget check: over 20M by 87,726,601, exit code 3.
    let r = surgery(&["inspect", ckpt.to_str().unwrap(), "--budget", "20M"]);
    assert_eq!(r.code, 3);
    assert!(r.stderr.contains("by 87,726,601"), "{}", r.stderr);
    let r = surgery(&["inspect", ckpt.to_str().unwrap(), "--budget", "108M"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("within budget"));
}

#[test]
fn minilm_as_stored_has_hf_parameter_count() {
    let Some(dir) = minilm() else { return };
    let r = surgery(&["inspect", dir.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["budget"]["stored_with_pooler"], 22_713_216u64);
    // The NER model leaves the pooler out.
    assert_eq!(report["budget"]["unique"], 22_713_216u64 - 384 * 384 - 384);
    assert_eq!(report["ignored_tensors"][0], "embeddings.position_ids");
}

#[test]
fn shared_layers_count_once_in_unique_and_per_use_as_executed() {
    let mut config = tiny_config();
    let vanilla = Budget::of_arch(&Arch::resolve(&config, Layout::Bare, false, true).unwrap());
    config.surgery = Some(surgery::arch::SurgeryInfo {
        format_version: 1,
        layer_map: Some(vec![0, 0, 0]),
        ..Default::default()
    });
    let shared = Budget::of_arch(&Arch::resolve(&config, Layout::Bare, false, true).unwrap());
    let per_layer = vanilla.layers[0].params;
    assert_eq!(shared.unique, vanilla.unique - 2 * per_layer);
    assert_eq!(shared.total, vanilla.unique);
    assert!(shared.layers[1].shared && !shared.layers[0].shared);
}

#[test]
fn inspect_prints_components_layers_and_history() {
    let dir = tempdir();
    let mut ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 1);
    let history = vec![surgery::arch::HistoryEntry {
        op: "test-op".into(),
        args: serde_json::json!({"rank": 4}),
        params_before: 10,
        params_after: 5,
    }];
    ckpt.config.surgery = None;
    ckpt.save(&dir.path().join("m"), false, history).unwrap();
    let r = surgery(&["inspect", dir.path().join("m").to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for needle in [
        "word embeddings",
        "attention query",
        "FFN in",
        "classifier",
        "test-op",
        "unique parameters",
    ] {
        assert!(r.stdout.contains(needle), "missing {needle}:\n{}", r.stdout);
    }
    let _ = save;
}
