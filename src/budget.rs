//! The parameter budget of a structure: per component and per layer, counted as Hugging Face's
//! `model.num_parameters()` counts `BertForTokenClassification` (no pooler, no buffers).
//! Shared layers count once in the unique total; sparse tensors also report their non-zeros.

use serde::Serialize;

use crate::arch::{Arch, Key, LinearKind, LinearSlot};
use crate::error::Result;
use crate::io::Checkpoint;

/// The components the budget is broken into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    WordEmbeddings,
    PositionEmbeddings,
    TokenTypeEmbeddings,
    EmbeddingLayerNorm,
    AttentionQuery,
    AttentionKey,
    AttentionValue,
    AttentionOutput,
    FfnIn,
    FfnOut,
    LayerNorms,
    Classifier,
    Pooler,
}

impl Component {
    pub fn label(self) -> &'static str {
        match self {
            Component::WordEmbeddings => "word embeddings",
            Component::PositionEmbeddings => "position embeddings",
            Component::TokenTypeEmbeddings => "token-type embeddings",
            Component::EmbeddingLayerNorm => "embedding LayerNorm",
            Component::AttentionQuery => "attention query",
            Component::AttentionKey => "attention key",
            Component::AttentionValue => "attention value",
            Component::AttentionOutput => "attention output",
            Component::FfnIn => "FFN in (intermediate)",
            Component::FfnOut => "FFN out (output)",
            Component::LayerNorms => "layer LayerNorms",
            Component::Classifier => "classifier",
            Component::Pooler => "pooler (not in the NER model)",
        }
    }

    fn of(key: Key) -> Component {
        match key {
            Key::WordEmbeddings | Key::WordProjection | Key::EmbeddingProjection(_) => {
                Component::WordEmbeddings
            }
            Key::PositionEmbeddings => Component::PositionEmbeddings,
            Key::TokenTypeEmbeddings => Component::TokenTypeEmbeddings,
            Key::EmbeddingNorm(_) => Component::EmbeddingLayerNorm,
            Key::Linear { slot, .. } => match slot {
                LinearSlot::Query => Component::AttentionQuery,
                LinearSlot::Key => Component::AttentionKey,
                LinearSlot::Value => Component::AttentionValue,
                LinearSlot::AttentionOutput => Component::AttentionOutput,
                LinearSlot::Intermediate => Component::FfnIn,
                LinearSlot::Output => Component::FfnOut,
            },
            Key::LayerNorm { .. } => Component::LayerNorms,
            Key::Classifier(_) => Component::Classifier,
            Key::Pooler(_) | Key::PositionIds => Component::Pooler,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentCount {
    pub component: Component,
    pub label: &'static str,
    /// Stored parameters (shared layers once).
    pub unique: u64,
    /// Parameters as executed (a shared layer counts once per use).
    pub total: u64,
    /// Non-zero parameters among `unique` (differs only for sparse linears).
    pub nonzero: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerCount {
    pub layer: usize,
    /// The stored layer it runs (differs from `layer` under sharing).
    pub stored: usize,
    /// True when an earlier logical layer already runs the same stored layer.
    pub shared: bool,
    pub num_heads: usize,
    pub intermediate: usize,
    pub params: u64,
    pub nonzero: u64,
    /// Non-dense linears, e.g. `query: low_rank(64)`.
    pub variants: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Budget {
    pub components: Vec<ComponentCount>,
    pub layers: Vec<LayerCount>,
    /// Unique parameters of the token-classification model (what a budget is checked against).
    pub unique: u64,
    /// Parameters as executed (shared layers per use), pooler excluded.
    pub total: u64,
    /// Non-zero unique parameters, pooler excluded.
    pub nonzero: u64,
    /// Everything stored, pooler included: HF `num_parameters()` of the class as saved.
    pub stored_with_pooler: u64,
}

impl Budget {
    /// Counts from the structure alone (sparse tensors are assumed dense).
    pub fn of_arch(arch: &Arch) -> Budget {
        Self::count(arch, |_, numel| Ok(numel)).expect("no I/O without a checkpoint")
    }

    /// Counts a checkpoint, reading the non-zeros of sparse linears from their tensors.
    pub fn of_checkpoint(ckpt: &Checkpoint) -> Result<Budget> {
        let arch = &ckpt.arch;
        Self::count(arch, |key, numel| match key {
            Key::Linear { layer, slot, .. }
                if matches!(arch.layers[layer].linear(slot), LinearKind::Sparse { .. }) =>
            {
                ckpt.count_nonzero(key)
            }
            _ => Ok(numel),
        })
    }

    fn count(arch: &Arch, mut nonzero_of: impl FnMut(Key, u64) -> Result<u64>) -> Result<Budget> {
        let mut components: Vec<ComponentCount> = vec![];
        let mut add = |key: Key, unique: u64, total: u64, nonzero: u64| {
            let component = Component::of(key);
            match components.iter_mut().find(|c| c.component == component) {
                Some(c) => {
                    c.unique += unique;
                    c.total += total;
                    c.nonzero += nonzero;
                }
                None => components.push(ComponentCount {
                    component,
                    label: component.label(),
                    unique,
                    total,
                    nonzero,
                }),
            }
        };
        let uses = |stored: usize| arch.layer_map.iter().filter(|&&s| s == stored).count() as u64;
        let mut layer_params = vec![(0u64, 0u64); arch.layers.len()];
        for (key, shape) in arch.expected_tensors() {
            let numel: u64 = shape.iter().product::<usize>() as u64;
            let nonzero = nonzero_of(key, numel)?;
            let per_use = match key {
                Key::Linear { layer, .. } | Key::LayerNorm { layer, .. } => {
                    layer_params[layer].0 += numel;
                    layer_params[layer].1 += nonzero;
                    uses(layer)
                }
                _ => 1,
            };
            add(key, numel, numel * per_use, nonzero);
        }
        components.sort_by_key(|c| c.component);
        let mut seen = vec![false; arch.layers.len()];
        let layers = arch
            .layer_map
            .iter()
            .enumerate()
            .map(|(layer, &stored)| {
                let shared = std::mem::replace(&mut seen[stored], true);
                let l = &arch.layers[stored];
                LayerCount {
                    layer,
                    stored,
                    shared,
                    num_heads: l.num_heads,
                    intermediate: l.intermediate,
                    params: layer_params[stored].0,
                    nonzero: layer_params[stored].1,
                    variants: l
                        .linears
                        .iter()
                        .filter(|(_, k)| **k != LinearKind::Dense)
                        .map(|(s, k)| format!("{}: {}", s.as_str(), describe_linear(*k)))
                        .collect(),
                }
            })
            .collect();
        let model = components
            .iter()
            .filter(|c| c.component != Component::Pooler);
        let unique = model.clone().map(|c| c.unique).sum();
        let total = model.clone().map(|c| c.total).sum();
        let nonzero = model.map(|c| c.nonzero).sum();
        let stored_with_pooler = components.iter().map(|c| c.unique).sum();
        Ok(Budget {
            components,
            layers,
            unique,
            total,
            nonzero,
            stored_with_pooler,
        })
    }
}

/// A short description of a linear's storage, e.g. `low_rank(64)`.
pub fn describe_linear(kind: LinearKind) -> String {
    match kind {
        LinearKind::Dense => "dense".into(),
        LinearKind::LowRank { rank } => format!("low_rank({rank})"),
        LinearKind::Sparse { pattern } => match pattern {
            crate::arch::SparsePattern::Unstructured { sparsity } => {
                format!("sparse({:.0}%)", sparsity * 100.0)
            }
            crate::arch::SparsePattern::NofM { n, m } => format!("sparse({n}:{m})"),
        },
    }
}

/// 22713216 → "22,713,216".
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Parses a parameter budget such as `20M`, `1.5M`, `750k` or `20000000`.
pub fn parse_count(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim().replace('_', "").replace(',', "");
    let (number, scale) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1e3),
        Some('m' | 'M') => (&t[..t.len() - 1], 1e6),
        Some('g' | 'G' | 'b' | 'B') => (&t[..t.len() - 1], 1e9),
        _ => (&t[..], 1.0),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a parameter count (e.g. 20M, 750k, 20000000)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("`{text}` is not a parameter count"));
    }
    Ok((value * scale).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parse_with_suffixes() {
        assert_eq!(parse_count("20M"), Ok(20_000_000));
        assert_eq!(parse_count("1.5m"), Ok(1_500_000));
        assert_eq!(parse_count("750k"), Ok(750_000));
        assert_eq!(parse_count("107_726_601"), Ok(107_726_601));
        assert!(parse_count("twenty").is_err());
        assert!(parse_count("-3M").is_err());
    }
}
