//! Sparse patterns (`--sparsity s` or `--pattern N:M`) and the architecture they give: shared by
//! the sparse cuts (SparseGPT, magnitude pruning).

use super::obs::Pattern;
use crate::arch::{Arch, LinearKind, LinearSlot, SparsePattern};
use crate::error::{Error, Result};

/// `--sparsity s` or `--pattern N:M`, checked.
pub(crate) fn parse_pattern(sparsity: Option<f64>, pattern: Option<&str>) -> Result<Pattern> {
    match (sparsity, pattern) {
        (Some(s), None) => {
            if !(s > 0.0 && s < 1.0) {
                return Err(Error::Spec(format!("--sparsity {s}: must be in (0, 1)")));
            }
            Ok(Pattern::Unstructured(s))
        }
        (None, Some(p)) => {
            let parsed = p.split_once(':').and_then(|(n, m)| {
                Some((
                    n.trim().parse::<usize>().ok()?,
                    m.trim().parse::<usize>().ok()?,
                ))
            });
            match parsed {
                Some((n, m)) if n > 0 && n < m => Ok(Pattern::NofM { n, m }),
                Some((n, m)) => Err(Error::Spec(format!("--pattern {n}:{m}: N must be in 1..M"))),
                None => Err(Error::Spec(format!(
                    "--pattern `{p}`: expected N:M such as 2:4"
                ))),
            }
        }
        _ => Err(Error::Spec("give --sparsity or --pattern".into())),
    }
}

/// The largest group an N:M pattern may use: the formats hardware runs have M ≤ 16; wider
/// groups are accepted up to this size, beyond which "N of M" no longer means a local pattern.
const MAX_GROUP: usize = 64;

/// Every linear's input size must be a whole number of groups of `m`: a final partial group
/// would have no N:M meaning (it used to be zeroed whole).
fn check_groups(arch: &Arch, m: usize) -> Result<()> {
    if m > MAX_GROUP {
        return Err(Error::Spec(format!(
            "--pattern N:{m}: groups of at most {MAX_GROUP} inputs are supported (e.g. 2:4, 4:8)"
        )));
    }
    for layer in 0..arch.layers.len() {
        for slot in LinearSlot::ALL {
            let (_, inputs) = arch.linear_shape(layer, slot);
            if inputs % m != 0 {
                return Err(Error::Spec(format!(
                    "--pattern N:{m}: layer {layer} {} has {inputs} inputs, not a multiple of {m}, so its last group would be partial",
                    slot.as_str()
                )));
            }
        }
    }
    Ok(())
}

/// The architecture with every encoder linear marked sparse with `pattern` (they must be dense).
pub(crate) fn sparse_arch(arch: &Arch, pattern: Pattern) -> Result<Arch> {
    crate::cuts::require_layers(arch, "sparse pruning")?;
    for layer in &arch.layers {
        if let Some((slot, kind)) = layer.linears.iter().find(|(_, k)| **k != LinearKind::Dense) {
            return Err(Error::Spec(format!(
                "{} is already {}; pruning needs dense linears",
                slot.as_str(),
                crate::budget::describe_linear(*kind)
            )));
        }
    }
    if let Pattern::NofM { m, .. } = pattern {
        check_groups(arch, m)?;
    }
    let sparse = match pattern {
        Pattern::Unstructured(s) => SparsePattern::Unstructured { sparsity: s as f32 },
        Pattern::NofM { n, m } => SparsePattern::NofM { n, m },
    };
    let mut arch = arch.clone();
    for layer in &mut arch.layers {
        for slot in LinearSlot::ALL {
            layer
                .linears
                .insert(slot, LinearKind::Sparse { pattern: sparse });
        }
    }
    Ok(arch)
}
