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
//! - Head importance (Michel et al. 2019): |∂L/∂g| of a multiplier on each head's output.
//! - Magnitude (no data): ‖unit's rows into the block‖₂ · ‖unit's columns out of it‖₂.

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use super::calibrate::Calibrator;
use crate::arch::{Arch, Key, LinearKind, LinearPart, LinearSlot};
use crate::cuts::cpu;
use crate::data::bucket_batches;
use crate::error::{Error, Result};
use crate::eval::collate;
use crate::io::Checkpoint;
use crate::model::loss::batch_cross_entropy;
use crate::model::{Batch, ForwardOutput, Mode, Outputs};

/// Sentences per backward pass for the task-loss scores (the batch size Kwon et al. use).
const SCORE_BATCH: usize = 32;

/// A score per head and per neuron of every stored layer (higher: more important).
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnitScores {
    pub heads: Vec<Vec<f64>>,
    pub neurons: Vec<Vec<f64>>,
}

/// Scores and what they were computed on.
pub struct ScoreRun<S> {
    pub scores: S,
    pub sentences: usize,
    pub tokens: usize,
    pub seconds: f64,
    /// Set when the file had fewer sentences than asked.
    pub note: Option<String>,
}

/// Fisher scores and what they were computed on.
pub type FisherRun = ScoreRun<UnitScores>;

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

/// Runs `step` on the task-loss gradients of every batch of the calibrator's labelled calibration
/// sentences (`SCORE_BATCH` sentences, bucketed by length, on the calibrator's device); `forward`
/// is the model's pass, `label` names the progress bar and `what` the option that asked for the
/// scores. Returns what the scores were computed on.
fn task_loss_gradients(
    calibrator: &Calibrator,
    label: &str,
    what: &str,
    forward: impl Fn(&Batch) -> candle_core::Result<ForwardOutput>,
    mut step: impl FnMut(&GradStore) -> Result<()>,
) -> Result<ScoreRun<()>> {
    let start = Instant::now();
    let sentences = calibrator.calib(what)?;
    let prepared = &sentences.prepared;
    let plan = bucket_batches(&prepared.lengths(), SCORE_BATCH, None);
    let progress =
        crate::util::progress::Progress::new(label, prepared.examples.len() as u64, "sentences");
    for batch in &plan.batches {
        progress.inc(batch.len() as u64);
        let examples: Vec<_> = batch.iter().map(|&i| &prepared.examples[i]).collect();
        let b = collate(&examples, sentences.pad_id, calibrator.device())?;
        let out = forward(&b.batch)?;
        step(&batch_cross_entropy(&out, &b.labels)?.backward()?)?;
    }
    Ok(ScoreRun {
        scores: (),
        sentences: prepared.examples.len(),
        tokens: prepared.num_tokens(),
        seconds: start.elapsed().as_secs_f64(),
        note: sentences.note.clone(),
    })
}

impl ScoreRun<()> {
    fn with<S>(self, scores: S) -> ScoreRun<S> {
        ScoreRun {
            scores,
            sentences: self.sentences,
            tokens: self.tokens,
            seconds: self.seconds,
            note: self.note,
        }
    }
}

/// Diagonal Fisher scores of every head and neuron of the calibrator's original model on its
/// labelled calibration sentences (`what` names the option that asked for them).
pub fn fisher(calibrator: &Calibrator, what: &str) -> Result<FisherRun> {
    let ckpt = calibrator.original();
    let arch = &ckpt.arch;
    let (params, model) = calibrator.variables(ckpt)?;
    let mut scores = UnitScores {
        heads: arch.layers.iter().map(|l| vec![0.0; l.num_heads]).collect(),
        neurons: arch
            .layers
            .iter()
            .map(|l| vec![0.0; l.intermediate])
            .collect(),
    };
    let run = task_loss_gradients(
        calibrator,
        "fisher scores",
        what,
        |batch| model.forward(batch, &mut Mode::Eval, Outputs::default()),
        |grads| {
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
            Ok(())
        },
    )?;
    Ok(run.with(scores))
}

/// Head importance (Michel et al. 2019): |∂L/∂g| of a multiplier g = 1 on every head's output,
/// summed over the calibrator's labelled calibration sentences and normalised per layer (`what`
/// names the option that asked for it).
pub(crate) fn head_importance(calibrator: &Calibrator, what: &str) -> Result<Vec<Vec<f64>>> {
    let ckpt = calibrator.original();
    // The weights are constants: only the head multipliers get gradients.
    let model = calibrator.frozen(ckpt)?;
    let heads = ckpt.arch.heads_per_layer();
    let gates: Vec<Var> = heads
        .iter()
        .map(|&h| Var::ones(h, DType::F32, calibrator.device()))
        .collect::<candle_core::Result<_>>()?;
    let gate_tensors: Vec<Tensor> = gates.iter().map(|g| g.as_tensor().clone()).collect();
    let mut scores: Vec<Vec<f64>> = heads.iter().map(|&h| vec![0.0; h]).collect();
    task_loss_gradients(
        calibrator,
        "head importance",
        what,
        |batch| {
            model.forward_gated(
                batch,
                &mut Mode::Eval,
                Outputs::default(),
                Some(&gate_tensors),
            )
        },
        |grads| {
            for (l, g) in gates.iter().enumerate() {
                if let Some(grad) = grads.get(g.as_tensor()) {
                    for (s, v) in scores[l].iter_mut().zip(grad.to_vec1::<f32>()?) {
                        *s += v.abs() as f64;
                    }
                }
            }
            Ok(())
        },
    )?;
    for layer in &mut scores {
        let norm = layer.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 0.0 {
            layer.iter_mut().for_each(|v| *v /= norm);
        }
    }
    Ok(scores)
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
