//! drop-layers: keep a subset of the encoder layers (DistilBERT-style student initialisation).

use serde::{Deserialize, Serialize};

use super::Surgery;
use super::{cpu, move_to_layer, Outcome, Planned};
use crate::arch::Arch;
use crate::error::{Error, Result};
use crate::io::Checkpoint;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Logical layers to keep, in order, e.g. `0,2,4`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub keep: Vec<usize>,
}

/// The architecture with only the kept layers (checks the list).
pub fn plan(arch: &Arch, spec: &Spec) -> Result<Arch> {
    Ok(renumber(arch, spec)?.0)
}

/// The new architecture and, for each of its stored layers, the stored layer it comes from.
fn renumber(arch: &Arch, spec: &Spec) -> Result<(Arch, Vec<usize>)> {
    let n = arch.num_layers();
    if spec.keep.is_empty() {
        return Err(Error::Spec("--keep names no layer".into()));
    }
    for w in spec.keep.windows(2) {
        if w[0] >= w[1] {
            return Err(Error::Spec(format!(
                "--keep must list layers in increasing order without repeats, got {:?}",
                spec.keep
            )));
        }
    }
    if let Some(&bad) = spec.keep.iter().find(|&&l| l >= n) {
        return Err(Error::Spec(format!(
            "--keep: layer {bad} does not exist ({})",
            super::layer_range(n)
        )));
    }
    // Renumber the stored layers the kept logical layers use, in order of first use.
    let mut stored_order: Vec<usize> = vec![];
    let mut new_arch = arch.clone();
    new_arch.layer_map = spec
        .keep
        .iter()
        .map(|&l| {
            let s = arch.layer_map[l];
            match stored_order.iter().position(|&x| x == s) {
                Some(i) => i,
                None => {
                    stored_order.push(s);
                    stored_order.len() - 1
                }
            }
        })
        .collect();
    new_arch.layers = stored_order
        .iter()
        .map(|&s| arch.layers[s].clone())
        .collect();
    Ok((new_arch, stored_order))
}

pub fn apply(ckpt: &Checkpoint, spec: &Spec) -> Result<Outcome> {
    let arch = &ckpt.arch;
    let n = arch.num_layers();
    let (new_arch, stored_order) = renumber(arch, spec)?;
    let mut out = ckpt.clone();
    for (new, &old) in stored_order.iter().enumerate() {
        for (key, _) in arch.layer_tensors(old) {
            out.set_tensor(move_to_layer(key, new), cpu(ckpt, key)?);
        }
    }
    out.set_arch(new_arch)?;
    let report =
        serde_json::json!({"kept": spec.keep, "layers_before": n, "layers_after": spec.keep.len()});
    Ok(Outcome::new(ckpt, out, Spec::NAME, spec, report))
}

impl Surgery for Spec {
    const NAME: &'static str = "drop-layers";
    const ABOUT: &'static str = "Keep a subset of the encoder layers";
    const EXAMPLE: &'static [&'static str] = &["--keep", "0,2"];

    fn plan(&self, arch: &Arch) -> Result<Planned> {
        plan(arch, self).map(Planned::Exact)
    }

    fn apply(&self, ckpt: &Checkpoint) -> Result<Outcome> {
        apply(ckpt, self)
    }
}
