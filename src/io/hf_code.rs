//! The transformers code a checkpoint carries when its structure is one transformers' own classes
//! cannot express (factorized embeddings, low-rank linears, shared layers, per-layer head counts
//! or FFN sizes): a configuration and a modeling file, embedded in the binary, and the `auto_map`
//! of config.json that points `AutoConfig`, `AutoModel` and `AutoModelForTokenClassification` at
//! them, so `from_pretrained(dir, trust_remote_code=True)` loads it. One modeling file serves every
//! structure and family; a checkpoint of vanilla shapes (sparse linears are stored dense) stays
//! plain and loads with the family's own classes.

use crate::arch::{Arch, BertConfig, EmbeddingKind, Family, LinearKind};

/// The configuration file's name and text.
pub const CONFIGURATION: (&str, &str) = (
    "configuration_surgery.py",
    include_str!("hf/configuration_surgery.py"),
);

/// The modeling file's name and text.
pub const MODELING: (&str, &str) = (
    "modeling_surgery.py",
    include_str!("hf/modeling_surgery.py"),
);

/// The files written beside the weights of a structure that needs them.
pub const FILES: [(&str, &str); 2] = [CONFIGURATION, MODELING];

/// Whether transformers' own class of the family cannot hold this structure: the weights would
/// not fit its shapes, or its forward pass would not run the layers the map names.
pub fn needs_remote_code(arch: &Arch, config: &BertConfig) -> bool {
    let identity = arch.layers.len() == arch.layer_map.len()
        && arch.layer_map.iter().enumerate().all(|(i, &m)| i == m);
    let stock_layers = arch.layers.iter().all(|l| {
        l.num_heads == config.num_attention_heads
            && l.intermediate == config.intermediate_size
            && l.linears
                .values()
                .all(|k| !matches!(k, LinearKind::LowRank { .. }))
    });
    !(identity && stock_layers && arch.embeddings == EmbeddingKind::Dense)
}

/// The family's part of the class names (`SurgeryBertModel`, `SurgeryRobertaForTokenClassification`).
fn class_stem(family: Family) -> &'static str {
    match family {
        Family::Bert => "Bert",
        Family::Roberta => "Roberta",
        Family::DistilBert => "DistilBert",
        Family::Electra => "Electra",
    }
}

/// The `auto_map` of a checkpoint of `family`.
pub fn auto_map(family: Family) -> serde_json::Value {
    let stem = class_stem(family);
    serde_json::json!({
        "AutoConfig": "configuration_surgery.SurgeryConfig",
        "AutoModel": format!("modeling_surgery.Surgery{stem}Model"),
        "AutoModelForTokenClassification":
            format!("modeling_surgery.Surgery{stem}ForTokenClassification"),
    })
}

/// Whether a config value names one of the classes of these files (an `auto_map` this tool or
/// transformers' `save_pretrained` of a loaded model wrote, or such a model's `architectures`).
fn names_ours(value: &serde_json::Value) -> bool {
    let ours = |s: &str| {
        s.starts_with("configuration_surgery.")
            || s.starts_with("modeling_surgery.")
            || s.starts_with("Surgery")
    };
    match value {
        serde_json::Value::String(s) => ours(s),
        serde_json::Value::Array(items) => items.iter().any(names_ours),
        serde_json::Value::Object(map) => map.values().any(names_ours),
        _ => false,
    }
}

/// Sets up `config` for writing `arch`: with the `auto_map` (and `model_type`, which the code
/// reads for the family) when the structure needs the code, without any `auto_map` or
/// `architectures` naming this code when it does not. Returns whether the files must be written.
pub fn prepare_config(config: &mut BertConfig, arch: &Arch) -> bool {
    let needed = needs_remote_code(arch, config);
    let family = arch.family();
    if needed {
        config.extra.insert("auto_map".into(), auto_map(family));
        let stem = class_stem(family);
        let class = match arch.num_labels {
            Some(_) => format!("Surgery{stem}ForTokenClassification"),
            None => format!("Surgery{stem}Model"),
        };
        config
            .extra
            .insert("architectures".into(), serde_json::json!([class]));
        if !config.extra.contains_key("model_type") {
            let name = Family::MODEL_TYPES
                .iter()
                .find(|(_, f)| *f == family)
                .map(|(name, _)| *name)
                .expect("every family has a model_type");
            config.extra.insert("model_type".into(), name.into());
        }
    } else {
        for key in ["auto_map", "architectures"] {
            if config.extra.get(key).is_some_and(names_ours) {
                config.extra.remove(key);
            }
        }
    }
    needed
}

/// The special tokens transformers' tokenizer classes name, with the pieces that play them in
/// BERT-style (`[CLS]`) and RoBERTa-style (`<s>`) vocabularies.
const SPECIAL_TOKENS: [(&str, [&str; 2]); 5] = [
    ("unk_token", ["[UNK]", "<unk>"]),
    ("pad_token", ["[PAD]", "<pad>"]),
    ("cls_token", ["[CLS]", "<s>"]),
    ("sep_token", ["[SEP]", "</s>"]),
    ("mask_token", ["[MASK]", "<mask>"]),
];

/// A `tokenizer_config.json` for a checkpoint whose `tokenizer.json` has none beside it: without
/// one, `AutoTokenizer` picks the family's slow-tokenizer defaults (a BERT config gets
/// `do_lower_case=True`, which lowercases a cased vocabulary). It names the generic fast tokenizer,
/// which runs `tokenizer.json` as it is, the special tokens the vocabulary has and the longest
/// sequence the model takes. None when `tokenizer.json` is not JSON.
pub fn tokenizer_config(tokenizer_json: &[u8], max_length: usize) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(tokenizer_json).ok()?;
    let has = |piece: &str| {
        let in_vocab = match json.pointer("/model/vocab") {
            Some(serde_json::Value::Object(map)) => map.contains_key(piece),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .any(|item| item.get(0).and_then(|p| p.as_str()) == Some(piece)),
            _ => false,
        };
        let added = json
            .get("added_tokens")
            .and_then(|a| a.as_array())
            .is_some_and(|a| a.iter().any(|t| t["content"].as_str() == Some(piece)));
        in_vocab || added
    };
    let mut config = serde_json::Map::new();
    config.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
    config.insert("model_max_length".into(), max_length.into());
    for (role, pieces) in SPECIAL_TOKENS {
        if let Some(piece) = pieces.iter().find(|p| has(p)) {
            config.insert(role.into(), (*piece).into());
        }
    }
    Some(serde_json::to_string_pretty(&config).expect("a map serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Layout;

    fn prepared(config_json: &str, family: Family) -> (bool, BertConfig) {
        let mut config = BertConfig::from_json(config_json).unwrap();
        let layout = Layout {
            family,
            prefixed: true,
        };
        let arch = Arch::resolve(&config, layout, false, false).unwrap();
        let needed = prepare_config(&mut config, &arch);
        (needed, config)
    }

    const SIZES: &str = r#""hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 16, "vocab_size": 10, "max_position_embeddings": 16"#;

    #[test]
    fn only_shapes_transformers_cannot_hold_get_the_code() {
        let sparse = format!(
            r#"{{{SIZES}, "model_type": "bert", "surgery": {{"format_version": 1, "layers": [
                {{"num_heads": 2, "linears": {{"query": {{"kind": "sparse",
                  "pattern": {{"type": "nof_m", "n": 2, "m": 4}}}}}}}}, {{"num_heads": 2}}]}}}}"#
        );
        let (needed, config) = prepared(&sparse, Family::Bert);
        assert!(!needed);
        assert!(!config.extra.contains_key("auto_map"));
        let shared = format!(
            r#"{{{SIZES}, "model_type": "distilbert", "surgery": {{"format_version": 1,
                "layer_map": [0, 0]}}}}"#
        )
        .replace("hidden_size", "dim")
        .replace("num_hidden_layers", "n_layers")
        .replace("num_attention_heads", "n_heads")
        .replace("intermediate_size", "hidden_dim");
        let (needed, config) = prepared(&shared, Family::DistilBert);
        assert!(needed);
        assert_eq!(
            config.extra["auto_map"]["AutoModelForTokenClassification"],
            "modeling_surgery.SurgeryDistilBertForTokenClassification"
        );
        assert_eq!(config.extra["architectures"][0], "SurgeryDistilBertModel");
    }

    #[test]
    fn a_vanilla_structure_drops_only_an_auto_map_naming_this_code() {
        let ours = format!(
            r#"{{{SIZES}, "model_type": "roberta", "pad_token_id": 1,
                "auto_map": {{"AutoConfig": "configuration_surgery.SurgeryConfig"}},
                "architectures": ["SurgeryRobertaForTokenClassification"]}}"#
        );
        let (needed, config) = prepared(&ours, Family::Roberta);
        assert!(!needed);
        assert!(!config.extra.contains_key("auto_map"));
        assert!(!config.extra.contains_key("architectures"));
        let theirs = format!(
            r#"{{{SIZES}, "model_type": "bert", "auto_map": {{"AutoConfig": "other.Config"}},
                "architectures": ["BertForTokenClassification"]}}"#
        );
        let (_, config) = prepared(&theirs, Family::Bert);
        assert_eq!(config.extra["auto_map"]["AutoConfig"], "other.Config");
        assert_eq!(
            config.extra["architectures"][0],
            "BertForTokenClassification"
        );
    }

    #[test]
    fn the_tokenizer_config_names_the_special_tokens_the_vocabulary_has() {
        let wordpiece = br#"{"model": {"type": "WordPiece",
            "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4}}, "added_tokens": []}"#;
        let config: serde_json::Value =
            serde_json::from_str(&tokenizer_config(wordpiece, 126).unwrap()).unwrap();
        assert_eq!(config["tokenizer_class"], "PreTrainedTokenizerFast");
        assert_eq!(config["cls_token"], "[CLS]");
        assert_eq!(config["pad_token"], "[PAD]");
        assert_eq!(config["model_max_length"], 126);
        assert!(config.get("mask_token").is_none());
        let unigram = br#"{"model": {"type": "Unigram", "vocab": [["<s>", 0.0], ["<pad>", 0.0],
            ["</s>", 0.0], ["<unk>", 0.0]]}, "added_tokens": [{"id": 4, "content": "<mask>"}]}"#;
        let config: serde_json::Value =
            serde_json::from_str(&tokenizer_config(unigram, 512).unwrap()).unwrap();
        assert_eq!(config["sep_token"], "</s>");
        assert_eq!(config["mask_token"], "<mask>");
        assert!(tokenizer_config(b"not json", 8).is_none());
    }
}
