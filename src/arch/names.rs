//! Every tensor name is built (and parsed) here and only here: a typed [`Key`] ⇄ the string used
//! in safetensors files, with the `bert.` prefix and legacy HF aliases handled in this module.

use std::fmt;

/// Whether encoder tensors carry the `bert.` prefix (`BertForTokenClassification`) or not
/// (`BertModel`). The classifier is never prefixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    Bare,
    BertPrefixed,
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

    /// The HF module path inside `encoder.layer.N.`.
    fn module_path(self) -> &'static str {
        match self {
            LinearSlot::Query => "attention.self.query",
            LinearSlot::Key => "attention.self.key",
            LinearSlot::Value => "attention.self.value",
            LinearSlot::AttentionOutput => "attention.output.dense",
            LinearSlot::Intermediate => "intermediate.dense",
            LinearSlot::Output => "output.dense",
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
    fn prefix(self, layout: Layout) -> &'static str {
        match (self, layout) {
            (Key::Classifier(_), _) | (_, Layout::Bare) => "",
            (_, Layout::BertPrefixed) => "bert.",
        }
    }

    /// The name without the layout prefix.
    fn local_name(self) -> String {
        match self {
            Key::WordEmbeddings => "embeddings.word_embeddings.weight".into(),
            Key::WordProjection => "embeddings.word_projection.weight".into(),
            Key::PositionEmbeddings => "embeddings.position_embeddings.weight".into(),
            Key::TokenTypeEmbeddings => "embeddings.token_type_embeddings.weight".into(),
            Key::EmbeddingNorm(p) => format!("embeddings.LayerNorm.{}", p.suffix()),
            Key::Linear { layer, slot, part } => {
                let part = match part {
                    LinearPart::Weight => "weight",
                    LinearPart::Bias => "bias",
                    LinearPart::Down => "down.weight",
                    LinearPart::Up => "up.weight",
                };
                format!("encoder.layer.{layer}.{}.{part}", slot.module_path())
            }
            Key::LayerNorm { layer, slot, part } => {
                let module = match slot {
                    LayerNormSlot::Attention => "attention.output",
                    LayerNormSlot::Output => "output",
                };
                format!("encoder.layer.{layer}.{module}.LayerNorm.{}", part.suffix())
            }
            Key::Pooler(p) => format!("pooler.dense.{}", p.suffix()),
            Key::Classifier(p) => format!("classifier.{}", p.suffix()),
            Key::PositionIds => "embeddings.position_ids".into(),
        }
    }

    /// The canonical name in a file of the given layout.
    pub fn name(self, layout: Layout) -> String {
        format!("{}{}", self.prefix(layout), self.local_name())
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
    /// not part of any BERT variant this tool knows.
    pub fn parse(name: &str, layout: Layout) -> Option<Key> {
        let local = match layout {
            Layout::Bare => name,
            Layout::BertPrefixed => match name.strip_prefix("bert.") {
                Some(rest) => rest,
                None if name.starts_with("classifier.") => name,
                None => return None,
            },
        };
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
        let key = match parts.as_slice() {
            ["embeddings", "word_embeddings", "weight"] => Key::WordEmbeddings,
            ["embeddings", "word_projection", "weight"] => Key::WordProjection,
            ["embeddings", "position_embeddings", "weight"] => Key::PositionEmbeddings,
            ["embeddings", "token_type_embeddings", "weight"] => Key::TokenTypeEmbeddings,
            ["embeddings", "position_ids"] => Key::PositionIds,
            ["embeddings", "LayerNorm", p] => Key::EmbeddingNorm(norm_part(p)?),
            ["pooler", "dense", p] => Key::Pooler(plain_part(p)?),
            ["classifier", p] if layout == Layout::Bare || name.starts_with("classifier.") => {
                Key::Classifier(plain_part(p)?)
            }
            ["encoder", "layer", n, rest @ ..] => {
                let layer: usize = n.parse().ok()?;
                if n.starts_with('+') || (n.len() > 1 && n.starts_with('0')) {
                    return None;
                }
                parse_layer_tensor(layer, rest, norm_part)?
            }
            _ => return None,
        };
        // A prefixed classifier (`bert.classifier.*`) is not a name HF writes.
        if layout == Layout::BertPrefixed
            && matches!(key, Key::Classifier(_))
            && !name.starts_with("classifier.")
        {
            return None;
        }
        Some(key)
    }
}

fn parse_layer_tensor(
    layer: usize,
    rest: &[&str],
    norm_part: impl Fn(&str) -> Option<NormPart>,
) -> Option<Key> {
    let (module, tail) = match rest {
        ["attention", "self", m, tail @ ..] => (format!("attention.self.{m}"), tail),
        ["attention", "output", "LayerNorm", p] => {
            return Some(Key::LayerNorm {
                layer,
                slot: LayerNormSlot::Attention,
                part: norm_part(p)?,
            })
        }
        ["output", "LayerNorm", p] => {
            return Some(Key::LayerNorm {
                layer,
                slot: LayerNormSlot::Output,
                part: norm_part(p)?,
            })
        }
        [a, "dense", tail @ ..] => (format!("{a}.dense"), tail),
        [a, b, "dense", tail @ ..] => (format!("{a}.{b}.dense"), tail),
        _ => return None,
    };
    let slot = LinearSlot::ALL
        .into_iter()
        .find(|s| s.module_path() == module)?;
    let part = match tail {
        ["weight"] => LinearPart::Weight,
        ["bias"] => LinearPart::Bias,
        ["down", "weight"] => LinearPart::Down,
        ["up", "weight"] => LinearPart::Up,
        _ => return None,
    };
    Some(Key::Linear { layer, slot, part })
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.local_name())
    }
}

/// Decides the layout from the names in a file: exactly one of the two word-embedding names must
/// be present. This is the only place that looks at prefixes.
pub fn detect_layout<'a>(names: impl IntoIterator<Item = &'a str> + Clone) -> Option<Layout> {
    let has = |wanted: String| names.clone().into_iter().any(|n| n == wanted);
    let bare = has(Key::WordEmbeddings.name(Layout::Bare));
    let prefixed = has(Key::WordEmbeddings.name(Layout::BertPrefixed));
    match (bare, prefixed) {
        (true, false) => Some(Layout::Bare),
        (false, true) => Some(Layout::BertPrefixed),
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
            Key::TokenTypeEmbeddings,
            Key::EmbeddingNorm(NormPart::Weight),
            Key::EmbeddingNorm(NormPart::Bias),
            Key::Pooler(NormPart::Weight),
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
        for layout in [Layout::Bare, Layout::BertPrefixed] {
            for key in &keys {
                let name = key.name(layout);
                assert_eq!(Key::parse(&name, layout), Some(*key), "{name}");
                for alias in key.read_names(layout) {
                    assert_eq!(Key::parse(&alias, layout), Some(*key), "{alias}");
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
            detect_layout([
                "bert.embeddings.word_embeddings.weight",
                "classifier.weight"
            ]),
            Some(Layout::BertPrefixed)
        );
        assert_eq!(
            detect_layout(["embeddings.word_embeddings.weight"]),
            Some(Layout::Bare)
        );
        assert_eq!(detect_layout(["classifier.weight"]), None);
    }
}
