//! `config.json`: a Hugging Face `BertConfig` (serde, unknown keys preserved) plus the optional,
//! versioned `"surgery"` object that describes everything a surgery changed. The other families'
//! configs (`RobertaConfig`, `ElectraConfig`, ...) are read into the same fields; DistilBERT's
//! own key names (`dim`, `n_layers`, ...) are translated on reading and restored on writing.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::names::Family;
use crate::error::{Error, Result};

/// The version of the `"surgery"` object this build writes and understands.
pub const SURGERY_FORMAT_VERSION: u32 = 1;

/// The fields of HF `BertConfig` the model needs; every other key is kept in `extra` and written back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BertConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    #[serde(default = "default_max_position")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_dropout: Option<f64>,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surgery: Option<SurgeryInfo>,
    /// Keys this tool does not interpret (model_type, architectures, ...), written back unchanged.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// DistilBERT's config keys and the `BertConfig` fields they hold.
const DISTILBERT_KEYS: [(&str, &str); 7] = [
    ("dim", "hidden_size"),
    ("n_layers", "num_hidden_layers"),
    ("n_heads", "num_attention_heads"),
    ("hidden_dim", "intermediate_size"),
    ("activation", "hidden_act"),
    ("dropout", "hidden_dropout_prob"),
    ("attention_dropout", "attention_probs_dropout_prob"),
];

/// The size keys of a config, which must hold whole numbers ≥ 0.
const SIZE_KEYS: [&str; 8] = [
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "type_vocab_size",
    "pad_token_id",
];

/// The keys that must hold numbers.
const NUMBER_KEYS: [&str; 3] = [
    "layer_norm_eps",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
];

/// Checks the type of every value the model reads before deserializing, so that a negative
/// size, a fraction or a quoted number is reported with its key (serde's own message names only
/// the expected Rust type).
fn check_value_types(
    object: &serde_json::Map<String, serde_json::Value>,
) -> std::result::Result<(), String> {
    let shown = |v: &serde_json::Value| crate::util::excerpt::excerpt(&v.to_string());
    for key in SIZE_KEYS {
        if let Some(v) = object.get(key).filter(|v| !v.is_u64()) {
            return Err(format!(
                "`{key}` is {}; expected a whole number ≥ 0",
                shown(v)
            ));
        }
    }
    for key in NUMBER_KEYS {
        if let Some(v) = object.get(key).filter(|v| !v.is_number()) {
            return Err(format!("`{key}` is {}; expected a number", shown(v)));
        }
    }
    if let Some(v) = object
        .get("classifier_dropout")
        .filter(|v| !(v.is_number() || v.is_null()))
    {
        return Err(format!(
            "`classifier_dropout` is {}; expected a number or null",
            shown(v)
        ));
    }
    Ok(())
}

/// The `model_type` of a config object; absent means BERT (configs written before HF stored it).
fn model_type_of(object: &serde_json::Map<String, serde_json::Value>) -> Option<&str> {
    object.get("model_type").and_then(|v| v.as_str())
}

fn default_max_position() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}

/// What surgeries changed relative to a vanilla BERT. Absent in config.json means vanilla.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SurgeryInfo {
    pub format_version: u32,
    #[serde(default)]
    pub embeddings: EmbeddingKind,
    /// Logical layer i runs stored layer `layer_map[i]` (ALBERT-style sharing). Absent: identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_map: Option<Vec<usize>>,
    /// One entry per *stored* layer. Absent: every stored layer is vanilla.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<LayerInfo>>,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

/// How the word embeddings are stored.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EmbeddingKind {
    #[default]
    Dense,
    /// V×E table followed by an E→H projection (no bias).
    Factorized { rank: usize },
}

/// The structure of one stored encoder layer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerInfo {
    pub num_heads: usize,
    /// Absent: the config's `intermediate_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate_size: Option<usize>,
    /// Only the linears that are not dense are listed.
    #[serde(default)]
    pub linears: BTreeMap<String, LinearKind>,
}

/// How one linear layer is stored.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LinearKind {
    #[default]
    Dense,
    /// W (out×in) ≈ up (out×rank) · down (rank×in).
    LowRank { rank: usize },
    /// Stored dense with exact zeros; the pattern says how they were chosen.
    Sparse { pattern: SparsePattern },
}

/// The sparsity pattern of a sparse linear.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SparsePattern {
    Unstructured { sparsity: f32 },
    NofM { n: usize, m: usize },
}

/// One surgery or training step applied to the checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryEntry {
    pub op: String,
    #[serde(default)]
    pub args: serde_json::Value,
    pub params_before: u64,
    pub params_after: u64,
}

impl BertConfig {
    /// Reads and validates `config.json`; errors name the file.
    pub fn load(path: &Path) -> Result<Self> {
        // Read with a bound: a config is a few kB, and a link to an endless device must not
        // fill the memory.
        const LIMIT: u64 = 16 << 20;
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(
                std::fs::File::open(path).map_err(|e| Error::io(path, e))?,
                LIMIT + 1,
            ),
            &mut text,
        )
        .map_err(|e| Error::io(path, e))?;
        if text.len() as u64 > LIMIT {
            return Err(Error::Config {
                path: path.to_path_buf(),
                msg: format!("larger than {} MiB; not a config", LIMIT >> 20),
            });
        }
        Self::from_json(&text).map_err(|msg| Error::Config {
            path: path.to_path_buf(),
            msg,
        })
    }

    /// Parses a config from JSON text; the error is a message without the file name.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let mut value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let object = value
            .as_object_mut()
            .ok_or("config.json must hold a JSON object")?;
        // Text keys must hold text: `model_type: 5` is not "absent, so BERT".
        for key in [
            "model_type",
            "hidden_act",
            "activation",
            "position_embedding_type",
        ] {
            if let Some(v) = object.get(key).filter(|v| !v.is_string()) {
                return Err(format!(
                    "`{key}` is {}; expected a string",
                    crate::util::excerpt::excerpt(&v.to_string())
                ));
            }
        }
        let model_type = model_type_of(object).map(String::from);
        match model_type.as_deref() {
            Some(name) if Family::from_model_type(name).is_none() => {
                return Err(format!(
                    "model_type `{name}` is not supported (supported: {})",
                    Family::supported()
                ))
            }
            Some("distilbert") => {
                for (theirs, ours) in DISTILBERT_KEYS {
                    if let Some(v) = object.remove(theirs) {
                        object.insert(ours.into(), v);
                    }
                }
                // DistilBERT has no token types and a fixed LayerNorm epsilon.
                object.insert("type_vocab_size".into(), 0.into());
                object.insert("layer_norm_eps".into(), default_eps().into());
            }
            _ => {}
        }
        check_value_types(object)?;
        let config: BertConfig = serde_json::from_value(value).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// The family `model_type` names (BERT when absent); `from_json` refused any other.
    pub fn family(&self) -> Family {
        model_type_of(&self.extra)
            .and_then(Family::from_model_type)
            .unwrap_or(Family::Bert)
    }

    /// The JSON text of `config.json`, in the family's own key names.
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(self).expect("config serialises");
        if self.family() == Family::DistilBert {
            let object = value.as_object_mut().expect("a struct is an object");
            object.remove("type_vocab_size");
            object.remove("layer_norm_eps");
            for (theirs, ours) in DISTILBERT_KEYS {
                if let Some(v) = object.remove(ours) {
                    object.insert(theirs.into(), v);
                }
            }
        }
        serde_json::to_string_pretty(&value).expect("config serialises")
    }

    /// Checks sizes and invariants; `init-student` and surgeries call it on the configs they make.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("`{name}` must be positive"));
            }
        }
        // Bounds far above any BERT in use, so that a typo or a hostile file fails here instead
        // of hanging in a loop over a million layers or aborting in the allocator.
        let bounded = [
            ("hidden_size", self.hidden_size, 1 << 16),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 10),
            ("num_attention_heads", self.num_attention_heads, 1 << 12),
            ("intermediate_size", self.intermediate_size, 1 << 18),
            ("vocab_size", self.vocab_size, 1 << 22),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 20,
            ),
            ("type_vocab_size", self.type_vocab_size, 1 << 16),
        ];
        for (name, value, max) in bounded {
            if value > max {
                return Err(format!("`{name}` is {value}; at most {max} is supported"));
            }
        }
        if self.id2label.as_ref().is_some_and(|m| m.len() > 1 << 16) {
            return Err("`id2label` has more than 65536 labels".into());
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps >= 0.0) {
            return Err(format!("`layer_norm_eps` is {}", self.layer_norm_eps));
        }
        let dropouts = [
            ("hidden_dropout_prob", Some(self.hidden_dropout_prob)),
            (
                "attention_probs_dropout_prob",
                Some(self.attention_probs_dropout_prob),
            ),
            ("classifier_dropout", self.classifier_dropout),
        ];
        for (name, value) in dropouts {
            if let Some(p) = value.filter(|p| !(0.0..1.0).contains(p)) {
                return Err(format!(
                    "`{name}` is {p}; a dropout probability is in [0, 1)"
                ));
            }
        }
        // transformers refuses it too: the padding row must be a row of the embedding table.
        if self.pad_token_id >= self.vocab_size {
            return Err(format!(
                "`pad_token_id` is {}, outside the vocabulary (`vocab_size` {})",
                self.pad_token_id, self.vocab_size
            ));
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if let Some(kind) = self.extra.get("position_embedding_type") {
            if kind.as_str() != Some("absolute") {
                return Err(format!(
                    "position_embedding_type {kind} is not supported (only \"absolute\")"
                ));
            }
        }
        if let Some(info) = &self.surgery {
            if info.format_version != SURGERY_FORMAT_VERSION {
                return Err(format!(
                    "`surgery.format_version` is {}, this build reads version {}",
                    info.format_version, SURGERY_FORMAT_VERSION
                ));
            }
        }
        Ok(())
    }

    /// Checks the declared labels of a token-classification head: ids 0..n, each label a tag
    /// (`O` or PREFIX-TYPE, so that `MISC` cannot become entities of type `ISC`), each once, `O`
    /// among them (without it every word would be part of an entity), and `label2id`, when
    /// present, the inverse of `id2label`. A config without `id2label` has nothing to check.
    pub fn check_labels(&self) -> std::result::Result<(), String> {
        let Some(map) = &self.id2label else {
            return Ok(());
        };
        for key in map.keys() {
            if key.parse::<usize>().map_or(true, |id| id >= map.len()) {
                return Err(format!(
                    "`id2label` key `{}` is not an id in 0..{}",
                    crate::util::excerpt::excerpt(key),
                    map.len()
                ));
            }
        }
        let labels = self.labels().unwrap_or_default();
        for (id, label) in labels.iter().enumerate() {
            super::tags::check_tag(label).map_err(|e| format!("`id2label` {id}: {e}"))?;
            if labels[..id].contains(label) {
                return Err(format!("`id2label`: label `{label}` appears twice"));
            }
        }
        if !labels.iter().any(|l| l == "O") {
            return Err(format!(
                "`id2label` has no `O` label ({}); an NER head needs one for words outside entities",
                crate::util::excerpt::excerpt(&labels.join(", "))
            ));
        }
        if let Some(inverse) = &self.label2id {
            let agrees = inverse.len() == labels.len()
                && labels
                    .iter()
                    .enumerate()
                    .all(|(id, l)| inverse.get(l) == Some(&(id as i64)));
            if !agrees {
                return Err(
                    "`label2id` contradicts `id2label` (each label's id must match)".into(),
                );
            }
        }
        Ok(())
    }

    /// Labels in id order, when the config declares them.
    pub fn labels(&self) -> Option<Vec<String>> {
        let map = self.id2label.as_ref()?;
        let mut pairs: Vec<(usize, &String)> = map
            .iter()
            .filter_map(|(k, v)| k.parse().ok().map(|i| (i, v)))
            .collect();
        pairs.sort();
        Some(pairs.into_iter().map(|(_, v)| v.clone()).collect())
    }

    /// Sets `id2label` / `label2id` from labels in id order.
    pub fn set_labels(&mut self, labels: &[String]) {
        self.id2label = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l.clone()))
                .collect(),
        );
        self.label2id = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), i as i64))
                .collect(),
        );
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}
