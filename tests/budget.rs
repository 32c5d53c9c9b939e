//! Parameter counts equal Hugging Face's `num_parameters()`; `inspect --budget` exit codes.

use surgery::arch::{Arch, Layout};
use surgery::budget::Budget;
use surgery::model::generate::{bert_base_cased_ner_config, write_zero_checkpoint};

use crate::util::{minilm, surgery, tempdir, tiny_checkpoint, tiny_config};

#[test]
fn bert_base_cased_token_classifier_has_hf_parameter_count() {
    let dir = tempdir();
    let ckpt = dir.path().join("bert-base-cased-ner");
    let config = bert_base_cased_ner_config();
    write_zero_checkpoint(&ckpt, &config, Layout::BertPrefixed, true).unwrap();
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
}
