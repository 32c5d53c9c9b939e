//! magnitude: one-shot pruning of every encoder linear by weight magnitude (unstructured or N:M),
//! with no calibration data and no weight updates — the baseline SparseGPT is measured against.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::shared::obs::magnitude;
use super::shared::sparse_pattern::{parse_pattern, sparse_arch};
use super::Surgery;
use super::{cpu, Outcome, Planned};
use crate::arch::{Arch, Key, LinearPart, LinearSlot};
use crate::error::Result;
use crate::io::Checkpoint;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Fraction of each linear's weights to remove, in (0, 1).
    #[arg(long, conflicts_with = "pattern", required_unless_present = "pattern", value_parser = crate::util::options::open_fraction)]
    pub sparsity: Option<f64>,
    /// N:M semi-structured sparsity, e.g. 2:4 (N zeros in every M inputs).
    #[arg(long)]
    pub pattern: Option<String>,
}

impl Surgery for Spec {
    const NAME: &'static str = "magnitude";
    const ABOUT: &'static str = "Prune encoder linears by weight magnitude (baseline, no data)";
    const EXAMPLE: &'static [&'static str] = &["--pattern", "2:4"];

    fn plan(&self, arch: &Arch) -> Result<Planned> {
        let pattern = parse_pattern(self.sparsity, self.pattern.as_deref())?;
        sparse_arch(arch, pattern).map(Planned::Exact)
    }

    fn apply(&self, ckpt: &Checkpoint) -> Result<Outcome> {
        let started = Instant::now();
        let pattern = parse_pattern(self.sparsity, self.pattern.as_deref())?;
        let new_arch = sparse_arch(&ckpt.arch, pattern)?;
        let mut out = ckpt.clone();
        for layer in 0..ckpt.arch.layers.len() {
            for slot in LinearSlot::ALL {
                let (rows, cols) = ckpt.arch.linear_shape(layer, slot);
                let key = Key::Linear {
                    layer,
                    slot,
                    part: LinearPart::Weight,
                };
                let weight = cpu(ckpt, key)?;
                let mut w = weight.flatten_all()?.to_vec1::<f32>()?;
                let mut wide: Vec<f64> = w.iter().map(|&v| v as f64).collect();
                magnitude(&mut wide, rows, cols, pattern);
                for (v, p) in w.iter_mut().zip(&wide) {
                    *v = *p as f32;
                }
                out.set_tensor(
                    key,
                    candle_core::Tensor::from_vec(w, weight.shape(), weight.device())?,
                );
            }
        }
        out.set_arch(new_arch)?;
        let report = serde_json::json!({
            "pattern": pattern,
            "seconds": started.elapsed().as_secs_f64(),
        });
        Ok(Outcome::new(ckpt, out, Self::NAME, self, report))
    }
}
