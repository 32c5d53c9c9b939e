//! The parameter budget of a structure: per component and per layer, counted as Hugging Face's
//! `model.num_parameters()` counts `BertForTokenClassification` (no pooler, no buffers).
//! Shared layers count once in the unique total; sparse tensors also report their non-zeros.

pub mod flops;

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

/// The text with its thousands separators (`,` or `_`) removed, or `None` when a separator is
/// anything but a break between groups of three digits of the integer part: `0,1M` is not
/// 1,000,000 parameters (it reads as a decimal comma), nor is `122,5k` 1,225,000.
fn ungroup(text: &str) -> Option<String> {
    let is_sep = |c: char| c == ',' || c == '_';
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || is_sep(c)))
        .unwrap_or(text.len());
    let (integer, rest) = text.split_at(end);
    if rest.contains(is_sep) {
        return None;
    }
    if !integer.contains(is_sep) {
        return Some(text.to_string());
    }
    let groups: Vec<&str> = integer.split(is_sep).collect();
    let first_ok = (1..=3).contains(&groups[0].len());
    if !first_ok || groups[1..].iter().any(|g| g.len() != 3) {
        return None;
    }
    Some(format!("{}{rest}", groups.concat()))
}

/// Parses a parameter budget such as `20M`, `1.5M`, `750k`, `2e7` or `20000000`, exactly: the
/// value must be a whole number of parameters (`122.1205k` is 122,120.5 and is refused rather
/// than rounded) that fits in 64 bits (`1e30` is refused rather than clamped).
pub fn parse_count(text: &str) -> std::result::Result<u64, String> {
    let not_a_count = || format!("`{text}` is not a parameter count (e.g. 20M, 750k, 20000000)");
    let t = ungroup(text.trim()).ok_or_else(|| {
        format!(
            "`{text}`: `,` and `_` only separate groups of three digits (1,000,000 or 20_000k); \
             a decimal is written with a point (0.1M)"
        )
    })?;
    let (number, scale) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 3),
        Some('m' | 'M') => (&t[..t.len() - 1], 6),
        Some('g' | 'G' | 'b' | 'B') => (&t[..t.len() - 1], 9),
        _ => (&t[..], 0),
    };
    let (mantissa, exponent) = match number.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().map_err(|_| not_a_count())?),
        None => (number, 0),
    };
    let (whole, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{whole}{frac}");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_a_count());
    }
    // value = digits × 10^power
    let power = i64::from(exponent) + scale - frac.len() as i64;
    let digits = digits.trim_start_matches('0');
    let too_large = || {
        format!(
            "`{text}` is more parameters than this tool can count (at most {})",
            u64::MAX
        )
    };
    if digits.is_empty() {
        return Ok(0);
    }
    let (kept, dropped) = if power >= 0 {
        (digits, "")
    } else {
        let cut = digits.len().saturating_sub(power.unsigned_abs() as usize);
        digits.split_at(cut)
    };
    if dropped.bytes().any(|b| b != b'0') {
        return Err(format!("`{text}` is not a whole number of parameters"));
    }
    let mut value: u64 = if kept.is_empty() {
        0
    } else {
        kept.parse().map_err(|_| too_large())?
    };
    for _ in 0..power.max(0) {
        value = value.checked_mul(10).ok_or_else(too_large)?;
    }
    Ok(value)
}

/// A clap value parser for a count kept as text (a spec records what was written): checked
/// here, so a malformed one is refused naming its option.
pub fn count_text(text: &str) -> std::result::Result<String, String> {
    parse_count(text).map(|_| text.to_string())
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
        assert_eq!(parse_count("107,726,601"), Ok(107_726_601));
        assert!(parse_count("twenty").is_err());
        assert!(parse_count("-3M").is_err());
        assert_eq!(parse_count("2e7"), Ok(20_000_000));
        assert_eq!(parse_count("122.121k"), Ok(122_121));
        assert_eq!(parse_count("0.5k"), Ok(500));
    }

    #[test]
    fn thousands_separators_are_groups_of_three_digits_never_a_decimal_comma() {
        assert_eq!(parse_count("1,000,000"), Ok(1_000_000));
        assert_eq!(parse_count("20_000k"), Ok(20_000_000));
        assert_eq!(parse_count("1,234.5k"), Ok(1_234_500));
        for bad in [
            "0,1M", "122,5k", "1,00", "1,0000", ",100", "100,", "1.5,5k", "1e1,000",
        ] {
            let err = parse_count(bad).unwrap_err();
            assert!(
                err.contains(bad) && err.contains("three digits"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn assert_budget_max_is_exact_not_rounded_or_clamped() {
        // 122.1205k is 122,120.5 parameters: refused, not rounded up to 122,121.
        assert!(parse_count("122.1205k").is_err());
        assert!(parse_count("1e30").is_err());
        assert!(parse_count("18446744073709551616").is_err());
        assert_eq!(parse_count("18446744073709551615"), Ok(u64::MAX));
        assert!(parse_count("NaN").is_err());
        assert!(parse_count("inf").is_err());
        assert!(parse_count("1.5e-3k").is_err());
        assert_eq!(parse_count("1.5e-1k"), Ok(150));
        assert_eq!(parse_count("1.5e-1M"), Ok(150_000));
    }
}
