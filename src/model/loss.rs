//! Losses over the scored positions of a batch (tokens whose label is not ignored).

use candle_core::{DType, Tensor, D};

use crate::data::align::IGNORE;
use crate::error::{Error, Result};
use crate::model::{log_softmax, ForwardOutput};

/// Positions (flattened over batch × length) whose label is not ignored, and those labels.
pub fn scored_positions(labels: &[Vec<i64>]) -> (Vec<u32>, Vec<u32>) {
    let len = labels.first().map_or(0, |r| r.len());
    let mut positions = vec![];
    let mut targets = vec![];
    for (b, row) in labels.iter().enumerate() {
        for (t, &l) in row.iter().enumerate() {
            if l != IGNORE {
                positions.push((b * len + t) as u32);
                targets.push(l as u32);
            }
        }
    }
    (positions, targets)
}

/// Log-probabilities of `logits` [B, L, C] at `positions`: [N, C].
fn scored_log_probs(logits: &Tensor, positions: &Tensor) -> candle_core::Result<Tensor> {
    let c = logits.dim(D::Minus1)?;
    log_softmax(&logits.reshape(((), c))?.index_select(positions, 0)?)
}

/// Mean negative log-probability of `targets` in `logp` [N, C].
fn mean_nll(logp: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let nll = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    nll.mean_all()
}

/// Mean cross-entropy of `logits` [B, L, C] at `positions` against `targets`.
pub fn cross_entropy(
    logits: &Tensor,
    positions: &Tensor,
    targets: &Tensor,
) -> candle_core::Result<Tensor> {
    mean_nll(&scored_log_probs(logits, positions)?, targets)?.to_dtype(DType::F32)
}

/// The classifier logits of a forward pass and a batch's scored positions and targets.
fn scored(out: &ForwardOutput, labels: &[Vec<i64>]) -> Result<(Tensor, Tensor, Tensor)> {
    let logits = out
        .logits
        .as_ref()
        .ok_or_else(|| Error::Internal("the model has no classifier".into()))?;
    let (pos, tgt) = scored_positions(labels);
    let device = logits.device();
    let pos = Tensor::from_vec(pos.clone(), pos.len(), device)?;
    let tgt = Tensor::from_vec(tgt.clone(), tgt.len(), device)?;
    Ok((logits.clone(), pos, tgt))
}

/// The cross-entropy of a forward pass against a batch's aligned labels (ignored positions
/// skipped): the one loss fine-tuning, gates, distillation and head importance share.
pub fn batch_cross_entropy(out: &ForwardOutput, labels: &[Vec<i64>]) -> Result<Tensor> {
    let (logits, pos, tgt) = scored(out, labels)?;
    Ok(cross_entropy(&logits, &pos, &tgt)?)
}

/// [`batch_cross_entropy`] against smoothed targets (1−ε)·one-hot + ε/C: (1−ε)·NLL(gold) +
/// ε·mean over classes of −log p, from one log-softmax.
pub fn batch_smoothed_cross_entropy(
    out: &ForwardOutput,
    labels: &[Vec<i64>],
    epsilon: f64,
) -> Result<Tensor> {
    let (logits, pos, tgt) = scored(out, labels)?;
    let logp = scored_log_probs(&logits, &pos)?;
    let gold = mean_nll(&logp, &tgt)?;
    let uniform = logp.mean(D::Minus1)?.neg()?.mean_all()?;
    Ok(((gold * (1.0 - epsilon))? + (uniform * epsilon)?)?.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_matches_a_hand_computation() {
        let logits = Tensor::new(&[[[1.0f32, 2.0, 0.5], [0.0, 0.0, 0.0]]], &Device::Cpu).unwrap();
        let (pos, tgt) = scored_positions(&[vec![1, IGNORE]]);
        let pos = Tensor::new(pos.as_slice(), &Device::Cpu).unwrap();
        let tgt = Tensor::new(tgt.as_slice(), &Device::Cpu).unwrap();
        let loss = cross_entropy(&logits, &pos, &tgt)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let lse = (1f32.exp() + 2f32.exp() + 0.5f32.exp()).ln();
        assert!((loss - (lse - 2.0)).abs() < 1e-6);
    }
}
