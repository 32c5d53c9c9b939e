//! Every tensor name is built (and parsed) here and only here: a typed [`Key`] ⇄ the string used
//! in safetensors files, for every supported model family (`config.json`'s `model_type`), with
//! each family's base-model prefix (`bert.`, `roberta.`, `distilbert.`, `electra.`) and legacy HF
//! aliases handled in this module.

use std::fmt;

/// The encoder families this tool reads: they share one computation and differ in tensor names,
/// position ids, token types and the embedding block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Bert,
    /// RoBERTa, XLM-RoBERTa and CamemBERT: BERT's names under `roberta.`, position ids counted
    /// from `pad_token_id + 1`.
    Roberta,
    /// DistilBERT: `transformer.layer.N` with `q_lin`, `ffn.lin1`, `sa_layer_norm`, no token types.
    DistilBert,
    /// ELECTRA: BERT's names under `electra.`; the embedding block may be narrower than the
    /// encoder, followed by `embeddings_project`.
    Electra,
}

impl Family {
    /// Every `model_type` this tool reads, with its family.
    pub const MODEL_TYPES: [(&'static str, Family); 6] = [
        ("bert", Family::Bert),
        ("roberta", Family::Roberta),
        ("xlm-roberta", Family::Roberta),
        ("camembert", Family::Roberta),
        ("distilbert", Family::DistilBert),
        ("electra", Family::Electra),
    ];

    pub fn from_model_type(model_type: &str) -> Option<Family> {
        Self::MODEL_TYPES
            .into_iter()
            .find(|(name, _)| *name == model_type)
            .map(|(_, family)| family)
    }

    /// The supported `model_type`s, for messages.
    pub fn supported() -> String {
        Self::MODEL_TYPES.map(|(name, _)| name).join(", ")
    }

    /// The base-model prefix of `*ForTokenClassification` checkpoints.
    fn prefix(self) -> &'static str {
        match self {
            Family::Bert => "bert.",
            Family::Roberta => "roberta.",
            Family::DistilBert => "distilbert.",
            Family::Electra => "electra.",
        }
    }

    /// The path of encoder layer N's modules.
    fn layers_path(self) -> &'static str {
        match self {
            Family::DistilBert => "transformer.layer",
            _ => "encoder.layer",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
            Family::DistilBert => "distilbert",
            Family::Electra => "electra",
        }
    }
}

/// How a checkpoint's tensors are named: its family, and whether the encoder's names carry the
/// family's prefix (`BertForTokenClassification`, `RobertaForTokenClassification`, ...) or not
/// (`BertModel`, ...). The classifier is never prefixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layout {
    pub family: Family,
    pub prefixed: bool,
}

#[allow(non_upper_case_globals)]
impl Layout {
    /// BERT without prefix (`BertModel`, e.g. MiniLM).
    pub const Bare: Layout = Layout {
        family: Family::Bert,
        prefixed: false,
    };
    /// BERT with the `bert.` prefix (`BertForTokenClassification`).
    pub const BertPrefixed: Layout = Layout {
        family: Family::Bert,
        prefixed: true,
    };

    /// The name `inspect` reports: `bare`, `bert_prefixed`, `roberta_prefixed`, `roberta_bare`, ...
    pub fn label(self) -> String {
        match (self.family, self.prefixed) {
            (Family::Bert, false) => "bare".into(),
            (family, true) => format!("{}_prefixed", family.name()),
            (family, false) => format!("{}_bare", family.name()),
        }
    }
}

impl serde::Serialize for Layout {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.label())
    }
}

/// The six linear layers of an encoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinearSlot {
    Query,
    Key,
    Value,
    AttentionOutput,
    Intermediate,
    Output,
}

impl LinearSlot {
    pub const ALL: [LinearSlot; 6] = [
        LinearSlot::Query,
        LinearSlot::Key,
        LinearSlot::Value,
        LinearSlot::AttentionOutput,
        LinearSlot::Intermediate,
        LinearSlot::Output,
    ];

    /// The name used in the `"surgery"` config object and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            LinearSlot::Query => "query",
            LinearSlot::Key => "key",
            LinearSlot::Value => "value",
            LinearSlot::AttentionOutput => "attention-output",
            LinearSlot::Intermediate => "intermediate",
            LinearSlot::Output => "output",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|slot| slot.as_str() == s)
    }

    /// The HF module path inside layer N (`encoder.layer.N.`, `transformer.layer.N.`).
    fn module_path(self, family: Family) -> &'static str {
        match (family, self) {
            (Family::DistilBert, LinearSlot::Query) => "attention.q_lin",
            (Family::DistilBert, LinearSlot::Key) => "attention.k_lin",
            (Family::DistilBert, LinearSlot::Value) => "attention.v_lin",
            (Family::DistilBert, LinearSlot::AttentionOutput) => "attention.out_lin",
            (Family::DistilBert, LinearSlot::Intermediate) => "ffn.lin1",
            (Family::DistilBert, LinearSlot::Output) => "ffn.lin2",
            (_, LinearSlot::Query) => "attention.self.query",
            (_, LinearSlot::Key) => "attention.self.key",
            (_, LinearSlot::Value) => "attention.self.value",
            (_, LinearSlot::AttentionOutput) => "attention.output.dense",
            (_, LinearSlot::Intermediate) => "intermediate.dense",
            (_, LinearSlot::Output) => "output.dense",
        }
    }
}

/// Which tensor of a linear layer. Dense and sparse linears have `Weight`; low-rank ones have
/// `Down` (rank×in, applied first) and `Up` (out×rank). All have `Bias`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinearPart {
    Weight,
    Bias,
    Down,
    Up,
}

/// The two LayerNorms of an encoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LayerNormSlot {
    Attention,
    Output,
}

impl LayerNormSlot {
    const ALL: [LayerNormSlot; 2] = [LayerNormSlot::Attention, LayerNormSlot::Output];

    /// The HF module path inside layer N.
    fn module_path(self, family: Family) -> &'static str {
        match (family, self) {
            (Family::DistilBert, LayerNormSlot::Attention) => "sa_layer_norm",
            (Family::DistilBert, LayerNormSlot::Output) => "output_layer_norm",
            (_, LayerNormSlot::Attention) => "attention.output.LayerNorm",
            (_, LayerNormSlot::Output) => "output.LayerNorm",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NormPart {
    Weight,
    Bias,
}

/// A typed tensor name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    WordEmbeddings,
    /// E→H projection of factorized word embeddings (stored H×E like any linear weight).
    WordProjection,
    PositionEmbeddings,
    TokenTypeEmbeddings,
    EmbeddingNorm(NormPart),
    /// ELECTRA's projection from the embedding width to the hidden size (with bias).
    EmbeddingProjection(NormPart),
    Linear {
        layer: usize,
        slot: LinearSlot,
        part: LinearPart,
    },
    LayerNorm {
        layer: usize,
        slot: LayerNormSlot,
        part: NormPart,
    },
    Pooler(NormPart),
    Classifier(NormPart),
    /// A buffer, not a parameter: ignored on load, never written.
    PositionIds,
}

impl NormPart {
    fn suffix(self) -> &'static str {
        match self {
            NormPart::Weight => "weight",
            NormPart::Bias => "bias",
        }
    }
    /// Pre-2019 HF names for LayerNorm parameters.
    fn legacy_norm_suffix(self) -> &'static str {
        match self {
            NormPart::Weight => "gamma",
            NormPart::Bias => "beta",
        }
    }
}

impl Key {
    /// The name without the layout prefix.
    fn local_name(self, family: Family) -> String {
        match self {
            Key::WordEmbeddings => "embeddings.word_embeddings.weight".into(),
            Key::WordProjection => "embeddings.word_projection.weight".into(),
            Key::PositionEmbeddings => "embeddings.position_embeddings.weight".into(),
            Key::TokenTypeEmbeddings => "embeddings.token_type_embeddings.weight".into(),
            Key::EmbeddingNorm(p) => format!("embeddings.LayerNorm.{}", p.suffix()),
            Key::EmbeddingProjection(p) => format!("embeddings_project.{}", p.suffix()),
            Key::Linear { layer, slot, part } => {
                let part = match part {
                    LinearPart::Weight => "weight",
                    LinearPart::Bias => "bias",
                    LinearPart::Down => "down.weight",
                    LinearPart::Up => "up.weight",
                };
                format!(
                    "{}.{layer}.{}.{part}",
                    family.layers_path(),
                    slot.module_path(family)
                )
            }
            Key::LayerNorm { layer, slot, part } => format!(
                "{}.{layer}.{}.{}",
                family.layers_path(),
                slot.module_path(family),
                part.suffix()
            ),
            Key::Pooler(p) => format!("pooler.dense.{}", p.suffix()),
            Key::Classifier(p) => format!("classifier.{}", p.suffix()),
            Key::PositionIds => "embeddings.position_ids".into(),
        }
    }

    /// The canonical name in a file of the given layout.
    pub fn name(self, layout: Layout) -> String {
        let prefix = match self {
            Key::Classifier(_) => "",
            _ if layout.prefixed => layout.family.prefix(),
            _ => "",
        };
        format!("{prefix}{}", self.local_name(layout.family))
    }

    /// Names this key may be stored under when reading, canonical first (legacy `gamma`/`beta`).
    pub fn read_names(self, layout: Layout) -> Vec<String> {
        let mut names = vec![self.name(layout)];
        if let Key::EmbeddingNorm(part) | Key::LayerNorm { part, .. } = self {
            let canonical = self.name(layout);
            let stem = canonical
                .strip_suffix(part.suffix())
                .expect("a LayerNorm name ends with its part");
            names.push(format!("{stem}{}", part.legacy_norm_suffix()));
        }
        names
    }

    /// Parses a stored name back into a key (canonical or legacy names), or `None` if the name is
    /// not part of any structure this tool knows in that layout.
    pub fn parse(name: &str, layout: Layout) -> Option<Key> {
        if name.starts_with("classifier.") {
            return ["weight", "bias"]
                .into_iter()
                .zip([NormPart::Weight, NormPart::Bias])
                .find(|(suffix, _)| name == format!("classifier.{suffix}"))
                .map(|(_, part)| Key::Classifier(part));
        }
        let local = if layout.prefixed {
            name.strip_prefix(layout.family.prefix())?
        } else {
            name
        };
        let family = layout.family;
        let parts: Vec<&str> = local.split('.').collect();
        let norm_part = |s: &str| match s {
            "weight" | "gamma" => Some(NormPart::Weight),
            "bias" | "beta" => Some(NormPart::Bias),
            _ => None,
        };
        let plain_part = |s: &str| match s {
            "weight" => Some(NormPart::Weight),
            "bias" => Some(NormPart::Bias),
            _ => None,
        };
        let layers_path: Vec<&str> = family.layers_path().split('.').collect();
        Some(match parts.as_slice() {
            ["embeddings", "word_embeddings", "weight"] => Key::WordEmbeddings,
            ["embeddings", "word_projection", "weight"] => Key::WordProjection,
            ["embeddings", "position_embeddings", "weight"] => Key::PositionEmbeddings,
            ["embeddings", "token_type_embeddings", "weight"] if family != Family::DistilBert => {
                Key::TokenTypeEmbeddings
            }
            ["embeddings", "position_ids"] => Key::PositionIds,
            ["embeddings", "LayerNorm", p] => Key::EmbeddingNorm(norm_part(p)?),
            ["embeddings_project", p] if family == Family::Electra => {
                Key::EmbeddingProjection(plain_part(p)?)
            }
            ["pooler", "dense", p] if family != Family::DistilBert => Key::Pooler(plain_part(p)?),
            [a, b, n, rest @ ..] if [*a, *b] == layers_path[..] => {
                let layer: usize = n.parse().ok()?;
                if n.starts_with('+') || (n.len() > 1 && n.starts_with('0')) {
                    return None;
                }
                parse_layer_tensor(family, layer, &rest.join("."))?
            }
            _ => return None,
        })
    }
}

/// Parses the part of a name after `…layer.N.` by comparing it with every name a layer has.
fn parse_layer_tensor(family: Family, layer: usize, rest: &str) -> Option<Key> {
    for slot in LayerNormSlot::ALL {
        for part in [NormPart::Weight, NormPart::Bias] {
            let module = slot.module_path(family);
            if rest == format!("{module}.{}", part.suffix())
                || rest == format!("{module}.{}", part.legacy_norm_suffix())
            {
                return Some(Key::LayerNorm { layer, slot, part });
            }
        }
    }
    let parts = [
        (LinearPart::Weight, "weight"),
        (LinearPart::Bias, "bias"),
        (LinearPart::Down, "down.weight"),
        (LinearPart::Up, "up.weight"),
    ];
    for slot in LinearSlot::ALL {
        for (part, suffix) in parts {
            if rest == format!("{}.{suffix}", slot.module_path(family)) {
                return Some(Key::Linear { layer, slot, part });
            }
        }
    }
    None
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.local_name(Family::Bert))
    }
}

/// Decides the layout of a family's file from its names: exactly one of the two word-embedding
/// names (bare or prefixed) must be present. This is the only place that looks at prefixes.
pub fn detect_layout<'a>(
    family: Family,
    names: impl IntoIterator<Item = &'a str> + Clone,
) -> Option<Layout> {
    let has = |wanted: String| names.clone().into_iter().any(|n| n == wanted);
    let bare = Layout {
        family,
        prefixed: false,
    };
    let prefixed = Layout {
        family,
        prefixed: true,
    };
    match (
        has(Key::WordEmbeddings.name(bare)),
        has(Key::WordEmbeddings.name(prefixed)),
    ) {
        (true, false) => Some(bare),
        (false, true) => Some(prefixed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_for_every_key_and_layout() {
        let mut keys = vec![
            Key::WordEmbeddings,
            Key::WordProjection,
            Key::PositionEmbeddings,
            Key::EmbeddingNorm(NormPart::Weight),
            Key::EmbeddingNorm(NormPart::Bias),
            Key::Classifier(NormPart::Bias),
            Key::PositionIds,
        ];
        for layer in [0, 7, 11] {
            for slot in LinearSlot::ALL {
                for part in [
                    LinearPart::Weight,
                    LinearPart::Bias,
                    LinearPart::Down,
                    LinearPart::Up,
                ] {
                    keys.push(Key::Linear { layer, slot, part });
                }
            }
            for slot in [LayerNormSlot::Attention, LayerNormSlot::Output] {
                for part in [NormPart::Weight, NormPart::Bias] {
                    keys.push(Key::LayerNorm { layer, slot, part });
                }
            }
        }
        for (_, family) in Family::MODEL_TYPES {
            let mut keys = keys.clone();
            if family != Family::DistilBert {
                keys.extend([Key::TokenTypeEmbeddings, Key::Pooler(NormPart::Weight)]);
            }
            if family == Family::Electra {
                keys.push(Key::EmbeddingProjection(NormPart::Bias));
            }
            for prefixed in [false, true] {
                let layout = Layout { family, prefixed };
                for key in &keys {
                    let name = key.name(layout);
                    assert_eq!(Key::parse(&name, layout), Some(*key), "{name}");
                    for alias in key.read_names(layout) {
                        assert_eq!(Key::parse(&alias, layout), Some(*key), "{alias}");
                    }
                }
            }
        }
    }

    #[test]
    fn hf_names_are_the_ones_transformers_writes() {
        let key = Key::Linear {
            layer: 3,
            slot: LinearSlot::AttentionOutput,
            part: LinearPart::Weight,
        };
        assert_eq!(
            key.name(Layout::BertPrefixed),
            "bert.encoder.layer.3.attention.output.dense.weight"
        );
        assert_eq!(
            Key::Classifier(NormPart::Weight).name(Layout::BertPrefixed),
            "classifier.weight"
        );
        assert_eq!(
            Key::parse(
                "encoder.layer.1.attention.output.LayerNorm.gamma",
                Layout::Bare
            ),
            Some(Key::LayerNorm {
                layer: 1,
                slot: LayerNormSlot::Attention,
                part: NormPart::Weight
            })
        );
    }

    #[test]
    fn family_names_are_the_ones_transformers_writes() {
        let roberta = Layout {
            family: Family::Roberta,
            prefixed: true,
        };
        let distil = Layout {
            family: Family::DistilBert,
            prefixed: true,
        };
        let electra = Layout {
            family: Family::Electra,
            prefixed: true,
        };
        let linear = |slot| Key::Linear {
            layer: 1,
            slot,
            part: LinearPart::Weight,
        };
        let norm = |slot| Key::LayerNorm {
            layer: 0,
            slot,
            part: NormPart::Bias,
        };
        let cases = [
            (
                linear(LinearSlot::Query),
                roberta,
                "roberta.encoder.layer.1.attention.self.query.weight",
            ),
            (
                linear(LinearSlot::AttentionOutput),
                distil,
                "distilbert.transformer.layer.1.attention.out_lin.weight",
            ),
            (
                linear(LinearSlot::Intermediate),
                distil,
                "distilbert.transformer.layer.1.ffn.lin1.weight",
            ),
            (
                norm(LayerNormSlot::Attention),
                distil,
                "distilbert.transformer.layer.0.sa_layer_norm.bias",
            ),
            (
                norm(LayerNormSlot::Output),
                distil,
                "distilbert.transformer.layer.0.output_layer_norm.bias",
            ),
            (
                Key::EmbeddingProjection(NormPart::Weight),
                electra,
                "electra.embeddings_project.weight",
            ),
        ];
        for (key, layout, name) in cases {
            assert_eq!(key.name(layout), name);
        }
        assert_eq!(
            Key::Classifier(NormPart::Weight).name(electra),
            "classifier.weight"
        );
        // A BERT name is not a DistilBERT one.
        assert_eq!(
            Key::parse("distilbert.encoder.layer.0.output.dense.bias", distil),
            None
        );
        assert_eq!(
            Family::from_model_type("xlm-roberta"),
            Some(Family::Roberta)
        );
        assert_eq!(Family::from_model_type("deberta-v2"), None);
    }

    #[test]
    fn layer_numbers_are_parsed_exactly() {
        // `layer.1` must not match `layer.10` (a classic substring-filter bug).
        let name = "encoder.layer.10.output.dense.bias";
        match Key::parse(name, Layout::Bare) {
            Some(Key::Linear { layer, .. }) => assert_eq!(layer, 10),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Key::parse("encoder.layer.01.output.dense.bias", Layout::Bare),
            None
        );
        assert_eq!(
            Key::parse("bert.embeddings.word_embeddings.weight", Layout::Bare),
            None
        );
        assert_eq!(
            Key::parse("embeddings.word_embeddings.weight", Layout::BertPrefixed),
            None
        );
    }

    #[test]
    fn layout_is_detected_from_word_embeddings_only() {
        assert_eq!(
            detect_layout(
                Family::Bert,
                [
                    "bert.embeddings.word_embeddings.weight",
                    "classifier.weight"
                ]
            ),
            Some(Layout::BertPrefixed)
        );
        assert_eq!(
            detect_layout(Family::Bert, ["embeddings.word_embeddings.weight"]),
            Some(Layout::Bare)
        );
        assert_eq!(
            detect_layout(Family::Bert, ["roberta.embeddings.word_embeddings.weight"]),
            None
        );
        assert_eq!(detect_layout(Family::Bert, ["classifier.weight"]), None);
    }
}
