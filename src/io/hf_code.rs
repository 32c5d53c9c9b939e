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
