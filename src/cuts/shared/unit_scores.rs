//! How much each attention head and FFN neuron matters, per stored layer.
//!
//! - Fisher (Kwon et al. 2022): put a mask m = 1 on every unit; the loss increase of removing a
//!   set of units is estimated by ½·Σ F_ii over them, with F_ii = Σ_batches (∂L/∂m_i)², L the
//!   token-classification cross-entropy on labelled calibration sentences. No mask variable is
//!   needed: a mask on a unit scales the input columns of the linear that reads it (attention
//!   output for a head, output for a neuron), so ∂L/∂m_i = Σ_r W[r,i]·∂L/∂W[r,i] over the
//!   unit's columns, read from the weight gradients of one backward pass per batch (for a
//!   low-rank linear, its `down` factor's columns). A stored layer shared by several logical
//!   layers has one weight and so one mask: its gradient already sums over every use.
//! - Magnitude (no data): ‖unit's rows into the block‖₂ · ‖unit's columns out of it‖₂.

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};

use super::calibrate::labelled_examples;
use crate::arch::{Arch, Key, LinearKind, LinearPart, LinearSlot};
use crate::cuts::cpu;
use crate::data::{bucket_batches, LabelSet};
use crate::error::{Error, Result};
use crate::eval::collate;
use crate::io::Checkpoint;
use crate::model::loss::batch_cross_entropy;
use crate::model::{dropouts_of, Bert, Mode, Outputs, Params};

/// Sentences per backward pass for the Fisher scores (the batch size Kwon et al. use).
const FISHER_BATCH: usize = 32;

/// A score per head and per neuron of every stored layer (higher: more important).
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnitScores {
    pub heads: Vec<Vec<f64>>,
    pub neurons: Vec<Vec<f64>>,
}

/// Fisher scores and what they were computed on.
pub struct FisherRun {
    pub scores: UnitScores,
    pub sentences: usize,
    pub tokens: usize,
    pub seconds: f64,
    /// Set when the file had fewer sentences than asked.
    pub note: Option<String>,
}

/// The key of the tensor whose input columns a unit scales: the attention output (heads) or the
/// output linear (neurons); `down` for a low-rank linear.
fn reader_key(arch: &Arch, layer: usize, slot: LinearSlot) -> Key {
    let part = match arch.layers[layer].linear(slot) {
        LinearKind::LowRank { .. } => LinearPart::Down,
        _ => LinearPart::Weight,
    };
    Key::Linear { layer, slot, part }
}

/// Refuses a checkpoint without a token-classification head (the task loss needs one).
pub fn require_classifier(ckpt: &Checkpoint, command: &str) -> Result<()> {
    if ckpt.arch.num_labels.is_none() {
        return Err(Error::Spec(format!(
            "{command} scores units on the token-classification loss, but {} has no classifier (fine-tune it first)",
            ckpt.source().display()
        )));
    }
    Ok(())
}

/// Diagonal Fisher scores of every head and neuron on the first `n` labelled sentences of `path`.
pub fn fisher(ckpt: &Checkpoint, path: &Path, n: usize) -> Result<FisherRun> {
    let start = Instant::now();
    let labels = LabelSet::new(ckpt.require_labels()?)?;
    let (prepared, tokenizer, note) = labelled_examples(ckpt, path, n, &labels)?;
    let device = Device::Cpu;
    let arch = &ckpt.arch;
    let params = Params::from_checkpoint(ckpt, &device)?;
    let model = Bert::new(arch, &params, dropouts_of(&ckpt.config));
    let mut scores = UnitScores {
        heads: arch.layers.iter().map(|l| vec![0.0; l.num_heads]).collect(),
        neurons: arch
            .layers
            .iter()
            .map(|l| vec![0.0; l.intermediate])
            .collect(),
    };
    let plan = bucket_batches(&prepared.lengths(), FISHER_BATCH, None);
    let progress = crate::util::progress::Progress::new(
        "fisher scores",
        prepared.examples.len() as u64,
        "sentences",
    );
    for batch in &plan.batches {
        progress.inc(batch.len() as u64);
        let examples: Vec<_> = batch.iter().map(|&i| &prepared.examples[i]).collect();
        let b = collate(&examples, tokenizer.pad_id(), &device)?;
        let out = model.forward(&b.batch, &mut Mode::Eval, Outputs::default())?;
        let grads = batch_cross_entropy(&out, &b.labels)?.backward()?;
        for s in 0..arch.layers.len() {
            for (slot, group, acc) in [
                (
                    LinearSlot::AttentionOutput,
                    arch.head_dim,
                    &mut scores.heads[s],
                ),
                (LinearSlot::Output, 1, &mut scores.neurons[s]),
            ] {
                if acc.is_empty() {
                    continue;
                }
                let w = params.get(reader_key(arch, s, slot));
                let Some(g) = grads.get(&w) else { continue };
                let per_column = (w * g)?.sum(0)?.to_vec1::<f32>()?;
                for (unit, a) in acc.iter_mut().enumerate() {
                    let m: f64 = per_column[unit * group..(unit + 1) * group]
                        .iter()
                        .map(|&v| v as f64)
                        .sum();
                    *a += m * m;
                }
            }
        }
    }
    Ok(FisherRun {
        scores,
        sentences: prepared.examples.len(),
        tokens: prepared.num_tokens(),
        seconds: start.elapsed().as_secs_f64(),
        note,
    })
}

/// The effective dense weight of a linear (up·down for a low-rank one).
pub(super) fn effective_weight(
    ckpt: &Checkpoint,
    layer: usize,
    slot: LinearSlot,
) -> Result<Tensor> {
    let key = |part| Key::Linear { layer, slot, part };
    Ok(match ckpt.arch.layers[layer].linear(slot) {
        LinearKind::LowRank { .. } => {
            cpu(ckpt, key(LinearPart::Up))?.matmul(&cpu(ckpt, key(LinearPart::Down))?)?
        }
        _ => cpu(ckpt, key(LinearPart::Weight))?,
    })
}

/// Squared L2 norms of groups of `group` consecutive rows (dim 0) or columns (dim 1).
fn group_norms2(w: &Tensor, dim: usize, group: usize) -> Result<Vec<f64>> {
    let per = w.sqr()?.sum(1 - dim)?.to_vec1::<f32>()?;
    Ok(per
        .chunks(group)
        .map(|c| c.iter().map(|&v| v as f64).sum())
        .collect())
}

/// Magnitude scores: ‖rows in‖₂ · ‖columns out‖₂ per unit (no data).
pub fn magnitude(ckpt: &Checkpoint) -> Result<UnitScores> {
    let arch = &ckpt.arch;
    let mut scores = UnitScores {
        heads: vec![],
        neurons: vec![],
    };
    for (s, layer) in arch.layers.iter().enumerate() {
        let d = arch.head_dim;
        let mut heads_in = vec![0.0; layer.num_heads];
        if layer.num_heads > 0 {
            for slot in [LinearSlot::Query, LinearSlot::Key, LinearSlot::Value] {
                for (a, v) in
                    heads_in
                        .iter_mut()
                        .zip(group_norms2(&effective_weight(ckpt, s, slot)?, 0, d)?)
                {
                    *a += v;
                }
            }
        }
        let heads_out = if layer.num_heads > 0 {
            group_norms2(
                &effective_weight(ckpt, s, LinearSlot::AttentionOutput)?,
                1,
                d,
            )?
        } else {
            vec![]
        };
        scores.heads.push(
            heads_in
                .iter()
                .zip(&heads_out)
                .map(|(a, b)| (a * b).sqrt())
                .collect(),
        );
        let neurons = if layer.intermediate > 0 {
            let inp = group_norms2(&effective_weight(ckpt, s, LinearSlot::Intermediate)?, 0, 1)?;
            let out = group_norms2(&effective_weight(ckpt, s, LinearSlot::Output)?, 1, 1)?;
            inp.iter().zip(&out).map(|(a, b)| (a * b).sqrt()).collect()
        } else {
            vec![]
        };
        scores.neurons.push(neurons);
    }
    Ok(scores)
}
